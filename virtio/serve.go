package virtio

import (
	"errors"
	"fmt"
	"sync"

	"github.com/capsule-vm/capsule/machine"
)

// interruptEvery is how many chains a busy queue completes between
// interrupts, so that a driver that keeps the queue full still hears of
// progress.
const interruptEvery = 64

// Handler serves one request: c is the popped chain, and chainErr, when
// not nil, says why the chain is invalid (its buffers are then those read
// before the fault, each inside RAM). It returns the number of bytes it
// wrote into the chain's device-writable buffers. The chain's buffer
// slices are reused for the next request: a handler must not keep them.
type Handler func(c Chain, chainErr error) (written uint32)

// Serve runs a request/response queue until stop is closed: on each kick
// it pops every available chain, passes it to handle and returns it to the
// driver, then interrupts. A corrupt ring makes the device fail (NEEDS_RESET)
// and Serve return.
func Serve(a Activation, qi int, stop <-chan struct{}, handle Handler) {
	q := a.Queues[qi]
	if !q.Ready {
		return
	}
	var c Chain // reused: no allocation per request
	for {
		if !a.Kicks[qi].Wait() {
			return
		}
		done := 0
		for {
			select {
			case <-stop:
				return
			default:
			}
			ok, err := q.PopInto(a.Mem, &c)
			if errors.Is(err, ErrBadQueue) {
				a.Fail(fmt.Errorf("queue %d: %w", qi, err))
				return
			}
			if !ok {
				if q.ArmNotify(a.Mem) {
					continue // buffers came while asking for a notification
				}
				break
			}
			n := handle(c, err)
			if err := q.Push(a.Mem, c.Head, n); err != nil {
				a.Fail(fmt.Errorf("queue %d: %w", qi, err))
				return
			}
			if done++; done%interruptEvery == 0 {
				a.Interrupt(q)
			}
		}
		if done%interruptEvery != 0 {
			a.Interrupt(q)
		}
	}
}

// Server runs Serve on one queue of a device between Activate and Reset.
// The zero value is ready to start.
type Server struct {
	stop chan struct{}
	wg   sync.WaitGroup
}

// Start serves queue qi of activation a with handle on a new goroutine.
func (s *Server) Start(a Activation, qi int, handle Handler) {
	s.stop = make(chan struct{})
	stop := s.stop
	s.wg.Go(func() { Serve(a, qi, stop, handle) })
}

// Stop ends the goroutine Start began and waits for it; it does nothing
// when none runs.
func (s *Server) Stop() {
	if s.stop != nil {
		close(s.stop)
		s.wg.Wait()
		s.stop = nil
	}
}

// NextChain waits for the driver's next chain in queue qi of a, the way
// a device waits for a receive buffer, and pops it into c (reusing c's
// slices). chainErr is Pop's error for that chain. ok is false when the
// device must stop using the queue: the transport is resetting it, or the
// ring is corrupt (a.Fail has then been called).
func NextChain(a Activation, qi int, c *Chain) (chainErr error, ok bool) {
	q := a.Queues[qi]
	for {
		popped, err := q.PopInto(a.Mem, c)
		if errors.Is(err, ErrBadQueue) {
			a.Fail(fmt.Errorf("queue %d: %w", qi, err))
			return nil, false
		}
		if popped {
			return err, true
		}
		if q.ArmNotify(a.Mem) {
			continue // buffers came while asking for a notification
		}
		if !a.Kicks[qi].Wait() {
			return nil, false
		}
	}
}

// Len is the total length of bufs.
func Len(bufs []Buffer) uint64 {
	var n uint64
	for _, b := range bufs {
		n += uint64(b.Len)
	}
	return n
}

// Gather copies the start of bufs into p and returns how many bytes it
// copied (less than len(p) when bufs are shorter).
func Gather(mem *machine.GuestMemory, bufs []Buffer, p []byte) (int, error) {
	n := 0
	for _, b := range bufs {
		if n == len(p) {
			break
		}
		k := min(uint64(len(p)-n), uint64(b.Len))
		if err := mem.ReadAt(p[n:n+int(k)], b.Addr); err != nil {
			return n, err
		}
		n += int(k)
	}
	return n, nil
}

// Scatter copies p into bufs from their start and returns how many bytes
// it copied (less than len(p) when bufs are shorter).
func Scatter(mem *machine.GuestMemory, bufs []Buffer, p []byte) (int, error) {
	n := 0
	for _, b := range bufs {
		if n == len(p) {
			break
		}
		k := min(uint64(len(p)-n), uint64(b.Len))
		if err := mem.WriteAt(p[n:n+int(k)], b.Addr); err != nil {
			return n, err
		}
		n += int(k)
	}
	return n, nil
}

// Split cuts bufs at byte offset off into the buffers before and after
// it. off beyond the end gives all of bufs and nothing.
func Split(bufs []Buffer, off uint64) (before, after []Buffer) {
	return SplitAppend(bufs, off, nil, nil)
}

// SplitAppend is Split that appends the two parts to before and after
// (pass a device's scratch slices, cut to length 0, to split without
// allocating) and returns them.
func SplitAppend(bufs []Buffer, off uint64, before, after []Buffer) ([]Buffer, []Buffer) {
	for i, b := range bufs {
		if off == 0 {
			return before, append(after, bufs[i:]...)
		}
		if off < uint64(b.Len) {
			before = append(before, Buffer{b.Addr, uint32(off)})
			after = append(after, Buffer{b.Addr + off, b.Len - uint32(off)})
			return before, append(after, bufs[i+1:]...)
		}
		before = append(before, b)
		off -= uint64(b.Len)
	}
	return before, after
}
