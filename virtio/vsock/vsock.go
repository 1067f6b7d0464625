// Package vsock is capsule's virtio-vsock device in the hybrid model that
// Firecracker users know: guest stream sockets are bridged to Unix domain
// sockets on the host.
//
//   - Host to guest: a host program connects to the device's socket PATH
//     and writes "CONNECT <port>\n"; capsule opens a connection to the
//     guest's port and answers "OK <host-port>\n" when the guest accepts,
//     or closes the socket when it refuses. From then on the socket carries
//     the stream.
//   - Guest to host: a guest connection to CID 2 (the host), port P, is
//     connected to the Unix socket PATH_P, which a host program listens on;
//     the guest sees a refusal when nothing does, and when the socket or
//     the program listening on it belongs to another user than capsule's
//     (root excepted).
//
// # Bounds
//
// Nothing a guest sends or fails to read makes capsule hold more than
// fixed amounts, whatever credit the guest advertises:
//
//   - Guest to host: capsule counts what it has received from the guest
//     and not yet written to the host socket (the write in progress
//     included), and resets a guest whose count passes the buffer space
//     offered to the connection (buf_alloc, the credit). Every connection
//     is offered MinBufAlloc, and more, up to BufAlloc, from 4 MiB shared
//     by the device's connections, first come, first served: when the
//     connection is made and whenever its data is written, it takes what
//     is left. The offer only grows (a guest that computes its credit in
//     unsigned 32-bit arithmetic would wrap if buf_alloc fell below what
//     it has in flight) and is given back when the connection closes.
//     fwd_cnt is always what was written, so a guest that obeys its
//     credit never makes a device hold more than MaxDeviceCredit (8 MiB:
//     MaxConns × MinBufAlloc and the shared 4 MiB), and one that does not
//     is reset first. At most MaxConns connections are live at once.
//   - Host to guest: capsule reads a host socket only while the guest's
//     credit allows, and holds at most MaxConnBuffered bytes of a
//     connection's data, and MaxDeviceBuffered bytes over all of a
//     device's connections, waiting for guest receive buffers; past that
//     it stops reading, so the host program's writes block.
//   - Control packets: a connection owes the guest at most one packet of
//     each kind (request or response, credit update, shutdown), and resets
//     for connections capsule no longer has wait in a queue of at most
//     MaxPendingResets, one per port pair; the excess is dropped and
//     counted (Stats).
//
// Connections take turns for the guest's receive buffers, so a connection
// the guest stops reading (no credit) stalls only itself, and a guest that
// reads nothing at all stalls only its own device.
//
// # Host files
//
// PATH is created with mode SocketMode (0600) whatever the umask, in a
// directory that belongs to capsule's user or root and that other users
// cannot write unless it is sticky (/tmp). Symbolic links in PATH's
// directory are resolved once, when the device opens, and the directory
// checked is the one they lead to; the device names PATH, and PATH_P,
// by that real path from then on (Path), so a link changed later
// redirects nothing. A stale socket at PATH is
// replaced only when it is capsule's user's own and nobody listens on it;
// nothing else is ever removed, and Close removes the socket capsule made.
//
// A CID is locked while a VM uses it by binding the abstract Unix socket
// name "@capsule-vsock-cid-<CID>": no file is involved, the name goes
// away with the process, and a second Open of the CID fails. Abstract
// names belong to a network namespace: VMs in different network
// namespaces do not see each other's locks.
package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/capsule-vm/capsule/internal/backoff"
	"github.com/capsule-vm/capsule/virtio"
)

const (
	// QueueSize is the size of each of the three queues.
	QueueSize = 256
	// BufAlloc is the most buffer space capsule offers a connection for
	// data from the guest: the most guest data it holds per connection.
	BufAlloc = 256 << 10
	// MinBufAlloc is the buffer space every connection is offered
	// whatever the others hold, so that none is starved of credit.
	MinBufAlloc = 4 << 10
	// MaxDeviceCredit is the most buffer space capsule offers all
	// connections of one device together for data from the guest, and so
	// the most guest data it holds for one device: MinBufAlloc for each
	// of MaxConns connections (4 MiB) and 4 MiB shared out beyond that.
	MaxDeviceCredit = MaxConns*MinBufAlloc + sharedCredit
	// sharedCredit is the buffer space shared out among a device's
	// connections beyond MinBufAlloc each, first come, first served.
	sharedCredit = 4 << 20
	// MaxConnBuffered is the most host data capsule holds for one
	// connection waiting for guest receive buffers (less when the guest's
	// credit is smaller).
	MaxConnBuffered = 256 << 10
	// MaxDeviceBuffered is the most host data capsule holds for all
	// connections of one device waiting for guest receive buffers.
	MaxDeviceBuffered = 4 << 20
	// MaxPendingResets is the most resets queued for a guest for
	// connections capsule no longer has; more are dropped and counted.
	MaxPendingResets = 256
	// MaxConns bounds the live connections of one device.
	MaxConns = 1024
	// readChunk is the most host data read from a socket at once.
	readChunk = 16 << 10
	// maxPacketData is the most data put in one packet to the guest.
	maxPacketData = 64 << 10
	// handshakeTimeout bounds the CONNECT line and the guest's answer.
	handshakeTimeout = 10 * time.Second

	rxQueue = 0
	txQueue = 1
)

// connKey names a connection by its host-side and guest-side ports.
type connKey struct {
	local uint32 // host side
	peer  uint32 // guest side
}

// Device is a virtio-vsock device bridged to Unix sockets.
type Device struct {
	cid     uint64
	path    string
	ln      *net.UnixListener
	sockID  fileID        // the socket file made, removed by Close
	done    chan struct{} // closed by Close
	cidLock int           // the socket holding the CID's lock

	mu       sync.Mutex
	cond     sync.Cond // on mu: held data released, connection closed
	active   bool
	activeCh chan struct{} // closed on activation
	stop     chan struct{}
	conns    map[connKey]*conn  // by ports
	live     map[*conn]struct{} // every connection not yet closed
	nextPort uint32
	wg       sync.WaitGroup // workers and connection goroutines

	// What the guest is owed, taken by the receive loop: connections
	// with packets for it, each once and in turn, and resets for
	// connections capsule no longer has.
	readyq   []*conn
	resets   []connKey
	resetSet map[connKey]struct{}
	held     int           // host data held for the guest, all connections
	wake     chan struct{} // something was queued

	// What the guest may send: the buffer space offered beyond
	// MinBufAlloc per connection, all connections (at most
	// sharedCredit), and the guest data received and not yet written to
	// a host socket, all connections (atomic: updated under a conn's mu).
	extraCredit int
	guestHeld   atomic.Int64

	droppedResets  uint64
	refusedSockets uint64
	warnOnce       sync.Once
}

// Stats is what a device holds and has refused.
type Stats struct {
	Conns          int    // live connections
	Buffered       int    // host data held for the guest (at most MaxDeviceBuffered)
	GuestBuffered  int    // guest data held for host sockets (at most GuestCredit)
	GuestCredit    int    // buffer space offered to the guest (at most MaxDeviceCredit)
	Ready          int    // connections with packets owed to the guest
	PendingResets  int    // resets queued for gone connections (at most MaxPendingResets)
	DroppedResets  uint64 // resets dropped because the queue was full
	RefusedSockets uint64 // guest connections refused: PATH_P is another user's
}

// Stats returns the device's current counts.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return Stats{
		Conns: len(d.live), Buffered: d.held, Ready: len(d.readyq), PendingResets: len(d.resets),
		GuestBuffered: int(d.guestHeld.Load()), GuestCredit: len(d.live)*MinBufAlloc + d.extraCredit,
		DroppedResets: d.droppedResets, RefusedSockets: d.refusedSockets,
	}
}

// ValidateCID checks a guest CID: 0-2 are reserved and 2^32-1 means any.
func ValidateCID(cid uint64) error {
	if cid < 3 || cid >= 0xffffffff {
		return fmt.Errorf("vsock CID %d: must be between 3 and 4294967294 (0-2 are reserved)", cid)
	}
	return nil
}

// Open creates the device for guest cid, listening on the Unix socket
// path (see the package documentation for what is refused). A stale
// socket of this user's at path is replaced; anything else there is an
// error, and so is a CID another capsule VM on this host uses.
func Open(cid uint64, path string) (*Device, error) {
	if err := ValidateCID(cid); err != nil {
		return nil, err
	}
	cidLock, err := lockCID(cid)
	if err != nil {
		return nil, err
	}
	ln, id, path, err := listen(path)
	if err != nil {
		syscall.Close(cidLock)
		return nil, err
	}
	d := &Device{
		cid: cid, path: path, ln: ln, sockID: id, done: make(chan struct{}), cidLock: cidLock,
		activeCh: make(chan struct{}), conns: map[connKey]*conn{}, live: map[*conn]struct{}{},
		nextPort: 1 << 30, wake: make(chan struct{}, 1), resetSet: map[connKey]struct{}{},
	}
	d.cond.L = &d.mu
	go d.acceptLoop(d.ln)
	return d, nil
}

func unwrapOp(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe.Err
	}
	return err
}

// CID is the guest's context ID.
func (d *Device) CID() uint64 { return d.cid }

// Path is the Unix socket the device listens on, in its directory's real
// path (symbolic links resolved when the device opened).
func (d *Device) Path() string { return d.path }

// Close resets the device, stops listening, removes the socket file it
// made and releases the CID.
func (d *Device) Close() error {
	d.Reset()
	close(d.done)
	d.sockID.remove(d.path)
	err := d.ln.Close()
	syscall.Close(d.cidLock)
	return err
}

// Type implements virtio.Device.
func (d *Device) Type() virtio.Type { return virtio.TypeVsock }

// Features implements virtio.Device: stream sockets only.
func (d *Device) Features() uint64 { return 0 }

// QueueMaxSizes implements virtio.Device: receive, transmit, event.
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize, QueueSize, QueueSize} }

// ReadConfig implements virtio.Device: the guest CID, 64 bits at 0.
func (d *Device) ReadConfig(off uint64, p []byte) {
	var cfg [8]byte
	binary.LittleEndian.PutUint64(cfg[:], d.cid)
	virtio.ReadConfigFrom(cfg[:], off, p)
}

// WriteConfig implements virtio.Device; the configuration is read-only.
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate implements virtio.Device.
func (d *Device) Activate(a virtio.Activation) error {
	if !a.Queues[rxQueue].Ready || !a.Queues[txQueue].Ready {
		return errors.New("receive or transmit queue not enabled")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.active = true
	d.stop = make(chan struct{})
	stop := d.stop
	d.wg.Go(func() { d.rxLoop(a, stop) })
	d.wg.Go(func() {
		virtio.Serve(a, txQueue, stop, func(c virtio.Chain, chainErr error) uint32 {
			d.handleTx(a, c, chainErr)
			return 0
		})
	})
	close(d.activeCh)
	return nil
}

// Reset implements virtio.Device: every connection is closed.
func (d *Device) Reset() {
	d.mu.Lock()
	if !d.active {
		d.mu.Unlock()
		return
	}
	d.active = false
	close(d.stop)
	var conns []*conn
	for c := range d.live {
		conns = append(conns, c)
	}
	d.conns = map[connKey]*conn{}
	for _, c := range d.readyq {
		c.queued = false
	}
	d.readyq, d.resets = nil, nil
	clear(d.resetSet)
	d.activeCh = make(chan struct{})
	d.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
	d.wg.Wait()
}

// signal wakes the receive loop.
func (d *Device) signal() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// ready queues c for the receive loop unless it is queued already or
// closed (close takes d.mu too, so a closed connection never stays).
func (d *Device) ready(c *conn) {
	d.mu.Lock()
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if !d.active || c.queued || closed {
		d.mu.Unlock()
		return
	}
	c.queued = true
	d.readyq = append(d.readyq, c)
	d.mu.Unlock()
	d.signal()
}

// queueReset owes the guest a RST for key, a connection capsule no longer
// has: once per key, and at most MaxPendingResets; more are dropped.
func (d *Device) queueReset(key connKey) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.active {
		return
	}
	if _, ok := d.resetSet[key]; ok {
		return
	}
	if len(d.resets) >= MaxPendingResets {
		d.droppedResets++
		return
	}
	d.resetSet[key] = struct{}{}
	d.resets = append(d.resets, key)
	d.signal()
}

// rst answers a guest packet with a reset.
func (d *Device) rst(h Header) {
	d.queueReset(connKey{local: h.DstPort, peer: h.SrcPort})
}

// reserve waits until the device may hold more host data and reserves up
// to n bytes of it for c, returning how many; 0 when c is closed.
func (d *Device) reserve(c *conn, n int) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		c.mu.Lock()
		gone := c.closed || c.hostStop
		c.mu.Unlock()
		if gone {
			return 0
		}
		if d.held < MaxDeviceBuffered {
			n = min(n, MaxDeviceBuffered-d.held)
			d.held += n
			return n
		}
		d.cond.Wait()
	}
}

// release gives back n bytes of held host data.
func (d *Device) release(n int) {
	if n == 0 {
		return
	}
	d.mu.Lock()
	d.held -= n
	d.cond.Broadcast()
	d.mu.Unlock()
}

// take makes the next packet owed to the guest into buf, with at most max
// bytes of data, and returns its length; 0 when nothing is owed. Resets
// come first, then connections in turn.
func (d *Device) take(buf []byte, max int) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.resets) > 0 {
		key := d.resets[0]
		d.resets = d.resets[1:]
		delete(d.resetSet, key)
		Header{SrcCID: HostCID, DstCID: d.cid, SrcPort: key.local, DstPort: key.peer,
			Type: TypeStream, Op: OpRst}.Put(buf)
		return HeaderSize
	}
	for len(d.readyq) > 0 {
		c := d.readyq[0]
		d.readyq[0] = nil
		d.readyq = d.readyq[1:]
		c.queued = false
		n, released, more := c.next(buf, max)
		if released > 0 {
			d.held -= released
			d.cond.Broadcast()
		}
		if more {
			c.queued = true
			d.readyq = append(d.readyq, c)
		}
		if n > 0 {
			return n
		}
	}
	return 0
}

// waitWork waits until something is owed to the guest; false on stop.
func (d *Device) waitWork(stop <-chan struct{}) bool {
	for {
		d.mu.Lock()
		has := len(d.resets) > 0 || len(d.readyq) > 0
		d.mu.Unlock()
		if has {
			return true
		}
		select {
		case <-stop:
			return false
		case <-d.wake:
		}
	}
}

// rxLoop moves what the guest is owed into its receive buffers.
func (d *Device) rxLoop(a virtio.Activation, stop <-chan struct{}) {
	var c virtio.Chain // reused
	buf := make([]byte, HeaderSize+maxPacketData)
	have := false // c holds a chain not yet used
	for {
		if !d.waitWork(stop) {
			return
		}
		if !have {
			chainErr, ok := virtio.NextChain(a, rxQueue, &c)
			if !ok {
				return
			}
			have = true
			if room := virtio.Len(c.Writable); chainErr != nil || room <= HeaderSize {
				// Unusable, or too small for a header and data: the
				// guest loses this buffer.
				if !d.push(a, c, 0) {
					return
				}
				have = false
				continue
			}
		}
		max := int(min(virtio.Len(c.Writable)-HeaderSize, maxPacketData))
		n := d.take(buf, max)
		if n == 0 {
			continue // what was owed went away; keep the buffer
		}
		if _, err := virtio.Scatter(a.Mem, c.Writable, buf[:n]); err != nil {
			n = 0
		}
		have = false
		if !d.push(a, c, uint32(n)) {
			return
		}
	}
}

// push returns chain c to the guest with n bytes written.
func (d *Device) push(a virtio.Activation, c virtio.Chain, n uint32) bool {
	q := a.Queues[rxQueue]
	if err := q.Push(a.Mem, c.Head, n); err != nil {
		a.Fail(fmt.Errorf("receive queue: %w", err))
		return false
	}
	a.Interrupt(q)
	return true
}

// handleTx handles one packet from the guest.
func (d *Device) handleTx(a virtio.Activation, c virtio.Chain, chainErr error) {
	if chainErr != nil {
		return
	}
	var hb [HeaderSize]byte
	if n, err := virtio.Gather(a.Mem, c.Readable, hb[:]); err != nil || n < HeaderSize {
		return
	}
	h, _ := ParseHeader(hb[:])
	if h.SrcCID != d.cid || h.DstCID != HostCID {
		return // not from this guest, or not for the host: dropped
	}
	if h.Type != TypeStream {
		if h.Op != OpRst {
			d.rst(h)
		}
		return
	}
	_, payload := virtio.Split(c.Readable, HeaderSize)
	key := connKey{local: h.DstPort, peer: h.SrcPort}
	d.mu.Lock()
	cn := d.conns[key]
	d.mu.Unlock()
	if h.Op == OpRW && (uint64(h.Len) > virtio.Len(payload) || h.Len > BufAlloc) {
		// A length beyond the chain or beyond any credit: malformed.
		if cn != nil {
			cn.reset()
		} else {
			d.rst(h)
		}
		return
	}
	if cn == nil {
		switch h.Op {
		case OpRequest:
			d.connectOut(key, h)
		case OpRst:
		default:
			d.rst(h)
		}
		return
	}
	cn.peerCredit(h.BufAlloc, h.FwdCnt)
	switch h.Op {
	case OpResponse:
		cn.accepted()
	case OpRW:
		data := make([]byte, h.Len)
		if n, err := virtio.Gather(a.Mem, payload, data); err != nil || n != len(data) {
			cn.reset()
			return
		}
		cn.fromGuest(data)
	case OpCreditUpdate:
	case OpCreditRequest:
		cn.tell(oweCredit)
	case OpShutdown:
		cn.shutdown(h.Flags)
	case OpRst:
		cn.close()
	default: // a second REQUEST, or an unknown operation
		cn.reset()
	}
}

// connectOut handles a guest connection request to host port key.local:
// it connects to PATH_<port> and answers RESPONSE, or RST on failure.
func (d *Device) connectOut(key connKey, h Header) {
	d.mu.Lock()
	if len(d.live) >= MaxConns || !d.active {
		d.mu.Unlock()
		d.rst(h)
		return
	}
	cn := newConn(d, key)
	cn.peerBufAlloc, cn.peerFwdCnt = h.BufAlloc, h.FwdCnt
	d.conns[key] = cn
	d.wg.Add(1)
	d.mu.Unlock()
	go func() {
		defer d.wg.Done()
		name := d.path + "_" + strconv.FormatUint(uint64(key.local), 10)
		if err := trustedSocket(name); err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				d.refuse(err)
			}
			cn.reset()
			return
		}
		s, err := net.DialTimeout("unix", name, handshakeTimeout)
		if err != nil {
			cn.reset()
			return
		}
		if err := trustedPeer(s.(*net.UnixConn)); err != nil {
			s.Close()
			d.refuse(fmt.Errorf("socket %s: %w", name, err))
			cn.reset()
			return
		}
		if !cn.attach(s.(*net.UnixConn)) {
			s.Close()
			return
		}
		cn.tell(oweResponse)
		cn.start()
	}()
}

// refuse counts a guest connection refused because its host socket is
// not to be trusted, and logs the first.
func (d *Device) refuse(err error) {
	d.mu.Lock()
	d.refusedSockets++
	d.mu.Unlock()
	d.warnOnce.Do(func() {
		slog.Warn("vsock: guest connection refused (logged once)", "cid", d.cid, "err", err)
	})
}

// acceptLoop serves host connections to l, the device's socket, until
// Close. No error but the listener's closing ends it: after any other
// (EMFILE, ECONNABORTED...) it backs off and goes on.
func (d *Device) acceptLoop(l net.Listener) {
	backoff.Accept(l, d.done, func(s net.Conn) { go d.serveHost(s.(*net.UnixConn)) })
}

// readLine reads one line of at most max bytes, byte by byte so that
// nothing after it is consumed.
func readLine(s *net.UnixConn, max int) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for len(b) < max {
		if _, err := s.Read(one); err != nil {
			return "", err
		}
		if one[0] == '\n' {
			return string(b), nil
		}
		b = append(b, one[0])
	}
	return "", errors.New("line too long")
}

// serveHost handles one host connection: "CONNECT <port>\n", then the
// stream.
func (d *Device) serveHost(s *net.UnixConn) {
	s.SetReadDeadline(time.Now().Add(handshakeTimeout))
	line, err := readLine(s, 64)
	port, perr := parseConnect(line)
	if err != nil || perr != nil {
		s.Close()
		return
	}
	s.SetReadDeadline(time.Time{})
	// The guest's driver may not be up yet.
	d.mu.Lock()
	ready := d.activeCh
	d.mu.Unlock()
	select {
	case <-ready:
	case <-d.done:
		s.Close()
		return
	case <-time.After(handshakeTimeout):
		s.Close()
		return
	}
	d.mu.Lock()
	if !d.active || len(d.live) >= MaxConns {
		d.mu.Unlock()
		s.Close()
		return
	}
	key := connKey{peer: port}
	for {
		key.local = d.nextPort
		d.nextPort++
		if d.nextPort == 0 {
			d.nextPort = 1 << 30
		}
		if d.conns[key] == nil {
			break
		}
	}
	cn := newConn(d, key)
	cn.resp = make(chan struct{})
	cn.sock = s
	d.conns[key] = cn
	d.mu.Unlock()
	cn.tell(oweRequest)
	select {
	case <-cn.resp:
	case <-time.After(handshakeTimeout):
		cn.reset()
		return
	}
	if cn.isClosed() {
		return // the guest refused (RST)
	}
	if _, err := fmt.Fprintf(s, "OK %d\n", key.local); err != nil {
		cn.reset()
		return
	}
	d.mu.Lock()
	if !d.active {
		d.mu.Unlock()
		cn.close()
		return
	}
	d.wg.Add(1) // start's goroutines are counted from here
	d.mu.Unlock()
	cn.start()
	d.wg.Done()
}

// parseConnect parses "CONNECT <port>".
func parseConnect(line string) (uint32, error) {
	arg, ok := strings.CutPrefix(strings.TrimSuffix(line, "\r"), "CONNECT ")
	if !ok {
		return 0, fmt.Errorf("want CONNECT <port>, got %q", line)
	}
	p, err := strconv.ParseUint(arg, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("bad port %q", arg)
	}
	return uint32(p), nil
}
