package virtio

import (
	"errors"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Kick carries the driver's notifications of one queue to the device's
// goroutine, which waits for them with Wait. When the queue has an
// ioeventfd, KVM signals it without a vCPU exit and the device's goroutine
// sleeps in a plain blocking read of it: the kernel wakes that thread
// directly, with no Go scheduler or netpoller in between (the path a
// virtio request takes twice). Without one, notifications come from
// trapped QueueNotify writes over a channel.
type Kick struct {
	fd     int // blocking eventfd, or -1
	ch     chan struct{}
	closed atomic.Bool
}

// newKick returns a queue's kick over eventfd fd, or over a channel when
// fd is negative.
func newKick(fd int) *Kick {
	return &Kick{fd: fd, ch: make(chan struct{}, 1)}
}

var eventOne = []byte{1, 0, 0, 0, 0, 0, 0, 0}

// SignalEventFD adds one to the counter of eventfd fd, waking whoever
// reads it (a device's Kick) or, for an irqfd, raising its interrupt. A
// saturated counter is not an error: a wake-up is pending already.
func SignalEventFD(fd int) error {
	_, err := unix.Write(fd, eventOne)
	if errors.Is(err, unix.EAGAIN) {
		return nil
	}
	return err
}

// Signal notifies the waiter; notifications that arrive before it waits
// again are coalesced. It never blocks.
func (k *Kick) Signal() {
	if k.fd >= 0 {
		SignalEventFD(k.fd)
		return
	}
	select {
	case k.ch <- struct{}{}:
	default:
	}
}

// Wait blocks until the queue is notified and reports true, or reports
// false once the kick is closed (the device is being reset).
func (k *Kick) Wait() bool {
	if k.closed.Load() {
		return false
	}
	if k.fd < 0 {
		<-k.ch
		return !k.closed.Load()
	}
	var b [8]byte
	for {
		_, err := unix.Read(k.fd, b[:])
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		return err == nil && !k.closed.Load()
	}
}

// close makes Wait return false, now and from then on.
func (k *Kick) close() {
	k.closed.Store(true)
	k.Signal()
}
