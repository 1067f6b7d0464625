package vsock

import (
	"net"
	"slices"
	"sync"
)

// What a connection owes the guest besides data: at most one of each, so
// that a guest that does not read cannot make them pile up.
const (
	oweRequest  = 1 << iota // host-initiated: ask the guest to accept
	oweResponse             // guest-initiated: the host side is connected
	oweCredit               // a CREDIT_UPDATE
	oweShutdown             // the host side closed: SHUTDOWN after the data
)

// conn is one stream between a guest port and a host Unix socket.
//
// Locking: c.d.mu may be held when c.mu is taken, never the reverse.
type conn struct {
	d    *Device
	key  connKey
	resp chan struct{} // host-initiated: closed on the guest's answer

	queued bool // in d.ready; guarded by d.mu

	mu       sync.Mutex
	cond     sync.Cond
	sock     *net.UnixConn
	closed   bool
	respOnce sync.Once
	owe      int // owe* bits

	// Guest to host: the buffer space offered to the guest (bufAlloc,
	// which only grows, reserved from the device's credit), data not yet
	// handed to the socket (wbuf), the bytes received and not yet
	// written, wbuf and the write in progress together (pending, at most
	// bufAlloc), the count of bytes written (fwdCnt) and the credit last
	// told to the guest.
	bufAlloc      uint32
	wbuf          []byte
	pending       int
	fwdCnt        uint32
	lastFwdSent   uint32
	lastAllocSent uint32
	guestDone     bool // the guest will send nothing more

	// Host to guest: data read from the socket and not yet in a guest
	// buffer (at most MaxConnBuffered, counted in d.held too), the
	// guest's buffer space and how much of what was read (rxCnt) it has
	// consumed.
	rdata        []byte
	peerBufAlloc uint32
	peerFwdCnt   uint32
	rxCnt        uint32
	hostStop     bool // the guest will receive nothing more
}

// newConn makes a connection, counts it as live and offers it
// MinBufAlloc of buffer space and as much more, up to BufAlloc, as the
// device's shared credit has left; c.d.mu held.
func newConn(d *Device, key connKey) *conn {
	extra := min(BufAlloc-MinBufAlloc, sharedCredit-d.extraCredit)
	c := &conn{d: d, key: key, bufAlloc: uint32(MinBufAlloc + extra)}
	c.cond.L = &c.mu
	d.live[c] = struct{}{}
	d.extraCredit += extra
	return c
}

// grow offers the connection more buffer space, up to BufAlloc, from what
// the device's shared credit has left; true if it grew. Buffer space is
// never taken back: a guest that computes its credit in unsigned 32-bit
// arithmetic would see a huge credit if buf_alloc fell below what it has
// in flight.
func (c *conn) grow() bool {
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.bufAlloc >= BufAlloc {
		return false
	}
	extra := min(BufAlloc-int(c.bufAlloc), sharedCredit-d.extraCredit)
	if extra <= 0 {
		return false
	}
	c.bufAlloc += uint32(extra)
	d.extraCredit += extra
	return true
}

func (c *conn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// attach gives a guest-initiated connection its socket; false if the
// connection was closed meanwhile.
func (c *conn) attach(s *net.UnixConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.sock = s
	return true
}

// tell notes that the connection owes the guest the packets in bits and
// queues it for the receive loop.
func (c *conn) tell(bits int) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.owe |= bits
	c.mu.Unlock()
	c.d.ready(c)
}

// hasWork reports whether the connection has a packet for the guest;
// c.mu held.
func (c *conn) hasWork() bool {
	return !c.closed && (c.owe != 0 || len(c.rdata) > 0)
}

// next makes the connection's next packet for the guest into buf, with
// at most max bytes of data, and returns its length (0: nothing to send),
// the bytes of held data it released and whether more is owed. c.d.mu
// held.
func (c *conn) next(buf []byte, max int) (n, released int, more bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, 0, false
	}
	h := Header{SrcCID: HostCID, DstCID: c.d.cid, SrcPort: c.key.local, DstPort: c.key.peer, Type: TypeStream}
	var data []byte
	switch {
	case c.owe&oweRequest != 0:
		h.Op, c.owe = OpRequest, c.owe&^oweRequest
	case c.owe&oweResponse != 0:
		h.Op, c.owe = OpResponse, c.owe&^oweResponse
	case len(c.rdata) > 0:
		k := min(len(c.rdata), max)
		h.Op, data = OpRW, c.rdata[:k]
		c.rdata = c.rdata[k:]
		if len(c.rdata) == 0 {
			c.rdata = c.rdata[:0:0] // let the array go
		}
		released = k
		c.cond.Broadcast() // toGuest may read again
	case c.owe&oweShutdown != 0:
		h.Op, h.Flags, c.owe = OpShutdown, ShutdownRecv|ShutdownSend, c.owe&^oweShutdown
	case c.owe&oweCredit != 0:
		h.Op = OpCreditUpdate
	default:
		return 0, 0, false
	}
	// Every packet carries the credit: no separate update is owed.
	c.owe &^= oweCredit
	c.lastFwdSent, c.lastAllocSent = c.fwdCnt, c.bufAlloc
	h.BufAlloc, h.FwdCnt = c.bufAlloc, c.fwdCnt
	h.Len = uint32(len(data))
	h.Put(buf)
	n = HeaderSize + copy(buf[HeaderSize:], data)
	return n, released, c.hasWork()
}

// peerCredit records the guest's credit fields.
func (c *conn) peerCredit(bufAlloc, fwdCnt uint32) {
	c.mu.Lock()
	c.peerBufAlloc, c.peerFwdCnt = bufAlloc, fwdCnt
	c.cond.Broadcast()
	c.mu.Unlock()
}

// readable is how many bytes toGuest may read from the socket now: what
// the guest's credit allows, less what is already held, up to
// MaxConnBuffered held; c.mu held.
func (c *conn) readable() int {
	inFlight := c.rxCnt - c.peerFwdCnt // read, held or sent, not consumed
	if inFlight >= c.peerBufAlloc {
		return 0
	}
	return min(int(min(c.peerBufAlloc-inFlight, MaxConnBuffered)), MaxConnBuffered-len(c.rdata))
}

// accepted handles the guest's RESPONSE to a host-initiated connection.
func (c *conn) accepted() {
	if c.resp != nil {
		c.respOnce.Do(func() { close(c.resp) })
	}
}

// fromGuest queues data for the socket; a guest that overruns its credit
// (more than bufAlloc bytes received and not yet written, counting the
// write in progress) gets a reset.
func (c *conn) fromGuest(data []byte) {
	c.mu.Lock()
	if c.closed || c.guestDone {
		c.mu.Unlock()
		return
	}
	if c.pending+len(data) > int(c.bufAlloc) {
		c.mu.Unlock()
		c.reset()
		return
	}
	c.pending += len(data)
	c.d.guestHeld.Add(int64(len(data)))
	c.wbuf = append(c.wbuf, data...)
	c.cond.Broadcast()
	c.mu.Unlock()
}

// shutdown handles the guest's SHUTDOWN: it sends or receives no more.
// Once both are done, capsule answers with RST and the socket closes
// when the data already queued has been written.
func (c *conn) shutdown(flags uint32) {
	c.mu.Lock()
	if flags&ShutdownSend != 0 {
		c.guestDone = true
	}
	released := 0
	if flags&ShutdownRecv != 0 {
		c.hostStop = true
		released = len(c.rdata)
		c.rdata = nil
	}
	both := c.guestDone && c.hostStop
	c.cond.Broadcast()
	c.mu.Unlock()
	c.d.release(released)
	if both {
		c.forget()
		c.d.queueReset(c.key)
	}
}

// forget removes the connection from the device's table, so that its
// ports can be used again; it stays live until closed.
func (c *conn) forget() {
	c.d.mu.Lock()
	if c.d.conns[c.key] == c {
		delete(c.d.conns, c.key)
	}
	c.d.mu.Unlock()
}

// close ends the connection at once: the socket is closed and queued
// data is dropped.
func (c *conn) close() {
	d := c.d
	d.mu.Lock()
	if d.conns[c.key] == c {
		delete(d.conns, c.key)
	}
	delete(d.live, c)
	if c.queued { // what it owed goes with it
		c.queued = false
		d.readyq = slices.DeleteFunc(d.readyq, func(q *conn) bool { return q == c })
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		d.mu.Unlock()
		return
	}
	c.closed = true
	d.held -= len(c.rdata)
	d.extraCredit -= int(c.bufAlloc) - MinBufAlloc
	d.guestHeld.Add(-int64(c.pending))
	c.rdata, c.wbuf, c.pending, c.owe = nil, nil, 0, 0
	s := c.sock
	c.cond.Broadcast()
	c.mu.Unlock()
	d.cond.Broadcast()
	d.mu.Unlock()
	if s != nil {
		s.Close()
	}
	c.accepted()
}

// reset closes the connection and tells the guest so.
func (c *conn) reset() {
	c.close()
	c.d.queueReset(c.key)
}

// start runs the connection's two pumps; the caller holds a count on
// c.d.wg.
func (c *conn) start() {
	c.d.wg.Go(c.toGuest)
	c.d.wg.Go(c.toHost)
}

// toGuest reads the socket, as far as the guest's credit and the bounds
// on held data allow, for the guest. End of file becomes a SHUTDOWN.
// While nothing may be read the socket is not read, so the host program
// writing to it blocks.
func (c *conn) toGuest() {
	buf := make([]byte, readChunk)
	for {
		c.mu.Lock()
		for !c.closed && !c.hostStop && c.readable() == 0 {
			c.cond.Wait()
		}
		if c.closed || c.hostStop {
			c.mu.Unlock()
			return
		}
		n := min(c.readable(), readChunk)
		s := c.sock
		c.mu.Unlock()
		n = c.d.reserve(c, n)
		if n == 0 {
			return // closed
		}
		k, err := s.Read(buf[:n])
		kept := 0
		c.mu.Lock()
		if k > 0 && !c.closed && !c.hostStop {
			c.rdata = append(c.rdata, buf[:k]...)
			c.rxCnt += uint32(k)
			kept = k
		}
		closed := c.closed
		c.mu.Unlock()
		c.d.release(n - kept)
		if kept > 0 {
			c.d.ready(c)
		}
		if err != nil {
			if !closed {
				// The host side closed: neither direction goes on.
				c.tell(oweShutdown)
			}
			return
		}
	}
}

// toHost writes the guest's data to the socket and returns credit to the
// guest as it goes.
func (c *conn) toHost() {
	for {
		c.mu.Lock()
		for !c.closed && len(c.wbuf) == 0 && !c.guestDone {
			c.cond.Wait()
		}
		if c.closed {
			c.mu.Unlock()
			return
		}
		if len(c.wbuf) == 0 { // guestDone, all written
			both := c.hostStop
			s := c.sock
			c.mu.Unlock()
			if both {
				c.close()
			} else {
				s.CloseWrite()
			}
			return
		}
		data := c.wbuf
		c.wbuf = nil
		s := c.sock
		c.mu.Unlock()
		if _, err := s.Write(data); err != nil {
			c.reset()
			return
		}
		c.mu.Lock()
		if !c.closed { // close let go of what was pending
			c.fwdCnt += uint32(len(data))
			c.pending -= len(data)
			c.d.guestHeld.Add(-int64(len(data)))
		}
		update := c.fwdCnt-c.lastFwdSent >= c.bufAlloc/2
		c.mu.Unlock()
		if c.grow() || update {
			c.tell(oweCredit)
		}
	}
}
