package vsock

import (
	"net"
	"sync"
)

// conn is one stream between a guest port and a host Unix socket.
type conn struct {
	d    *Device
	key  connKey
	resp chan struct{} // host-initiated: closed on the guest's answer

	mu       sync.Mutex
	cond     sync.Cond
	sock     *net.UnixConn
	closed   bool
	respOnce sync.Once

	// Guest to host: data not yet written to the socket, and the count
	// of bytes written (fwdCnt) and last told to the guest.
	wbuf        []byte
	fwdCnt      uint32
	lastFwdSent uint32
	guestDone   bool // the guest will send nothing more

	// Host to guest: the guest's buffer space and how much of what was
	// sent (rxCnt) it has consumed.
	peerBufAlloc uint32
	peerFwdCnt   uint32
	rxCnt        uint32
	hostStop     bool // the guest will receive nothing more
}

// newConn makes a connection and counts it as live; c.d.mu held.
func newConn(d *Device, key connKey) *conn {
	c := &conn{d: d, key: key}
	c.cond.L = &c.mu
	d.live[c] = struct{}{}
	return c
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

// credit returns the credit fields of a packet to the guest and notes the
// forward count as told.
func (c *conn) credit() (bufAlloc, fwdCnt uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastFwdSent = c.fwdCnt
	return BufAlloc, c.fwdCnt
}

// peerCredit records the guest's credit fields.
func (c *conn) peerCredit(bufAlloc, fwdCnt uint32) {
	c.mu.Lock()
	c.peerBufAlloc, c.peerFwdCnt = bufAlloc, fwdCnt
	c.cond.Broadcast()
	c.mu.Unlock()
}

// room is how many bytes the guest can take now; c.mu held.
func (c *conn) room() uint32 {
	inFlight := c.rxCnt - c.peerFwdCnt
	if inFlight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inFlight
}

// accepted handles the guest's RESPONSE to a host-initiated connection.
func (c *conn) accepted() {
	if c.resp != nil {
		c.respOnce.Do(func() { close(c.resp) })
	}
}

// fromGuest queues data for the socket; a guest that overruns its credit
// gets a reset.
func (c *conn) fromGuest(data []byte) {
	c.mu.Lock()
	if c.closed || c.guestDone {
		c.mu.Unlock()
		return
	}
	if len(c.wbuf)+len(data) > BufAlloc {
		c.mu.Unlock()
		c.reset()
		return
	}
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
	if flags&ShutdownRecv != 0 {
		c.hostStop = true
	}
	both := c.guestDone && c.hostStop
	c.cond.Broadcast()
	c.mu.Unlock()
	if both {
		c.forget()
		c.d.control(OpRst, c.key.local, c.key.peer, 0, nil)
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
	c.forget()
	c.d.mu.Lock()
	delete(c.d.live, c)
	c.d.mu.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	s := c.sock
	c.cond.Broadcast()
	c.mu.Unlock()
	if s != nil {
		s.Close()
	}
	c.accepted()
}

// reset closes the connection and tells the guest so.
func (c *conn) reset() {
	c.close()
	c.d.control(OpRst, c.key.local, c.key.peer, 0, nil)
}

// start runs the connection's two pumps; the caller holds a count on
// c.d.wg.
func (c *conn) start() {
	c.d.wg.Go(c.toGuest)
	c.d.wg.Go(c.toHost)
}

// toGuest reads the socket, as far as the guest's credit allows, into
// packets for the guest. End of file becomes a SHUTDOWN.
func (c *conn) toGuest() {
	buf := make([]byte, readChunk)
	for {
		c.mu.Lock()
		for !c.closed && !c.hostStop && c.room() == 0 {
			c.cond.Wait()
		}
		if c.closed || c.hostStop {
			c.mu.Unlock()
			return
		}
		n := min(c.room(), readChunk)
		s := c.sock
		c.mu.Unlock()
		k, err := s.Read(buf[:n])
		if k > 0 {
			c.mu.Lock()
			c.rxCnt += uint32(k)
			c.mu.Unlock()
			c.d.enqueue(&packet{
				hdr: Header{SrcCID: HostCID, DstCID: c.d.cid, SrcPort: c.key.local, DstPort: c.key.peer,
					Type: TypeStream, Op: OpRW},
				data: append([]byte(nil), buf[:k]...), c: c,
			})
		}
		if err != nil {
			if !c.isClosed() {
				// The host side closed: neither direction goes on.
				c.d.control(OpShutdown, c.key.local, c.key.peer, ShutdownRecv|ShutdownSend, c)
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
		c.fwdCnt += uint32(len(data))
		update := c.fwdCnt-c.lastFwdSent >= BufAlloc/2
		c.mu.Unlock()
		if update {
			c.d.control(OpCreditUpdate, c.key.local, c.key.peer, 0, c)
		}
	}
}
