// Package usernet is a rootless virtio-net backend: the guest's Ethernet
// frames go to a user-space TCP/IP stack (gVisor's netstack) inside
// capsule, which connects the guest's TCP and UDP flows to sockets of the
// capsule process, as QEMU's user networking (slirp) does. No TAP, no root.
//
// The network is 10.0.2.0/24, like QEMU's:
//
//	10.0.2.2   the gateway; with Options.HostLoopback, connections to it
//	           go to the host's loopback (127.0.0.1), at the same port
//	10.0.2.3   the DNS server: queries (TCP and UDP port 53) go to the
//	           host's resolver
//	10.0.2.15  the guest, handed out by DHCP (or configured statically)
//
// Connections to other addresses leave from the host as connections of
// the capsule process, where the policy allows them. Host port forwards
// (hostfwd) make a host port reach a guest port, whatever the policy.
//
// # Policy
//
// What a guest may reach on the host's side is closed to the host by
// default; Options widen or narrow it:
//
//   - 10.0.2.0/24 is the user network's own: no connection to one of its
//     addresses ever becomes a host connection to that address. 10.0.2.2
//     (the gateway) reaches the host's 127.0.0.1 at the same port only
//     with HostLoopback; TCP and UDP to 10.0.2.3 port 53 go to the host's
//     resolver (the first nameserver of /etc/resolv.conf, which may be a
//     loopback or private address: that one host service is offered by
//     design) unless Restrict is set; everything else there is refused.
//   - Other destinations are the host's networks and the internet. Public
//     unicast addresses are allowed, unless Restrict is set. Refused:
//     loopback (127/8, ::1), link-local (169.254/16 — cloud metadata
//     services — and fe80::/10), private ranges (10/8, 172.16/12,
//     192.168/16, 100.64/10 shared address space, fc00::/7), unspecified,
//     multicast, broadcast and reserved addresses, and every address of
//     the host's own interfaces (which would reach its services).
//   - An Allow prefix lets the guest reach the addresses in it, whatever
//     the above says (outside 10.0.2.0/24), with or without Restrict.
//
// A refused TCP connection is reset; a refused UDP datagram is dropped
// without an ICMP error. Host port forwards (hostfwd) work in every mode.
//
// What one guest may hold on the host is bounded: MaxTCPConns spliced
// TCP connections, each with a send and a receive buffer in the netstack
// of TCPBufSize that auto-tuning grows to MaxTCPBufSize at most (so at
// most MaxTCPConns × 2 × MaxTCPBufSize = 256 MiB, and 32 MiB of copy
// buffers), MaxUDPFlows UDP flows (each idle at most UDPIdle), and Close
// ends them all at once, whatever the host peers do.
package usernet

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/capsule-vm/capsule/internal/backoff"
	vnet "github.com/capsule-vm/capsule/virtio/net"
)

// The addresses of the user-mode network.
var (
	Gateway   = net.IPv4(10, 0, 2, 2).To4()
	DNS       = net.IPv4(10, 0, 2, 3).To4()
	GuestIP   = net.IPv4(10, 0, 2, 15).To4()
	Netmask   = net.IPv4Mask(255, 255, 255, 0)
	gatewayHW = net.HardwareAddr{0x52, 0x55, 0x0a, 0x00, 0x02, 0x02}
)

const (
	nicID = 1
	mtu   = 1500
)

// HostFwd forwards connections to a host address to a guest port.
type HostFwd struct {
	Proto     string // "tcp" or "udp"
	HostAddr  string // "" means 127.0.0.1
	HostPort  int
	GuestPort int
}

func (f HostFwd) String() string {
	return fmt.Sprintf("%s:%s:%d-:%d", f.Proto, f.HostAddr, f.HostPort, f.GuestPort)
}

// ParseHostFwd parses PROTO:[HOSTADDR:]HOSTPORT-[GUESTADDR]:GUESTPORT, the
// form QEMU's hostfwd takes (GUESTADDR, if given, must be 10.0.2.15).
func ParseHostFwd(s string) (HostFwd, error) {
	bad := func(why string) (HostFwd, error) {
		return HostFwd{}, fmt.Errorf("hostfwd=%s: %s (want tcp:HOSTPORT-:GUESTPORT or tcp:HOSTADDR:HOSTPORT-GUESTADDR:GUESTPORT)", s, why)
	}
	proto, rest, ok := strings.Cut(s, ":")
	if !ok || (proto != "tcp" && proto != "udp") {
		return bad("the protocol must be tcp or udp")
	}
	host, guest, ok := strings.Cut(rest, "-")
	if !ok {
		return bad("no '-' between the host and the guest side")
	}
	f := HostFwd{Proto: proto}
	hp := host
	if i := strings.LastIndex(host, ":"); i >= 0 {
		f.HostAddr, hp = host[:i], host[i+1:]
		if f.HostAddr != "" && net.ParseIP(f.HostAddr) == nil {
			return bad("host address " + f.HostAddr + " is not an IP address")
		}
	}
	gaddr, gp, ok := strings.Cut(guest, ":")
	if !ok {
		return bad("the guest side needs ':' before its port")
	}
	if gaddr != "" && !net.ParseIP(gaddr).Equal(GuestIP) {
		return bad("the guest's address is " + GuestIP.String())
	}
	var err error
	if f.HostPort, err = strconv.Atoi(hp); err != nil || f.HostPort < 1 || f.HostPort > 65535 {
		return bad("host port " + hp + " is not 1-65535")
	}
	if f.GuestPort, err = strconv.Atoi(gp); err != nil || f.GuestPort < 1 || f.GuestPort > 65535 {
		return bad("guest port " + gp + " is not 1-65535")
	}
	return f, nil
}

// Bounds on what one guest's user-mode network may hold on the host.
const (
	// MaxTCPConns bounds the TCP connections spliced to host sockets at
	// once, from the guest and through hostfwd together: a new one beyond
	// it is refused (a reset for the guest, a close for a host peer).
	MaxTCPConns = 512
	// MaxUDPFlows bounds the guest's UDP flows (each a connected host
	// socket): a new flow beyond it evicts the flow idle the longest.
	MaxUDPFlows = 256
	// UDPIdle ends a UDP flow without traffic either way for this long.
	UDPIdle = 60 * time.Second
	// TCPBufSize is the send and the receive buffer a TCP connection
	// starts with in capsule's netstack (gVisor's default is 1 MiB).
	TCPBufSize = 64 << 10
	// MaxTCPBufSize bounds each of those buffers however gVisor's
	// auto-tuning grows them, so that a spliced connection holds at most
	// 2 × MaxTCPBufSize in the netstack (and 2 × 32 KiB of copy buffers),
	// and MaxTCPConns of them at most 256 MiB (288 MiB).
	MaxTCPBufSize = 256 << 10
)

const (
	// dialTimeout bounds a connection from the guest to the host side.
	dialTimeout = 10 * time.Second
)

// Options configure a user-mode network; the zero value has no host port
// forwards and the default policy (see the package documentation).
type Options struct {
	HostFwds []HostFwd
	// HostLoopback lets connections to the gateway 10.0.2.2 reach the
	// host's 127.0.0.1 (hostloopback=on).
	HostLoopback bool
	// Restrict refuses every destination but those Allow names, DNS
	// included (restrict=on, as QEMU's); host port forwards still work.
	Restrict bool
	// Allow are prefixes the guest may reach even though the policy
	// refuses them by default (allow=CIDR).
	Allow []netip.Prefix

	// For tests: the dialer of host connections, and other bounds than
	// the constants (zero: the constant).
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	maxTCP  int
	maxUDP  int
	udpIdle time.Duration
}

// Net is the user-mode network of one guest. It implements vnet.Backend.
type Net struct {
	stack  *stack.Stack
	ep     *channel.Endpoint
	ctx    context.Context
	stop   context.CancelFunc
	out    chan []byte // frames for the guest
	policy policy

	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	maxTCP  int
	maxUDP  int
	udpIdle time.Duration

	mu         sync.Mutex
	closed     bool
	listeners  []io.Closer
	conns      map[io.Closer]struct{} // both sides of every splice
	tcpConns   int                    // splices open or being set up
	flows      map[*udpFlow]struct{}
	udpPending int            // flows being set up (counted against MaxUDPFlows)
	wg         sync.WaitGroup // every goroutine; Add only under mu while !closed
}

// New builds the network and opens the host side of every forward; a
// host port in use is an error.
func New(opts Options) (*Net, error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
		HandleLocal:        false,
	})
	if err := boundTCPBuffers(s); err != nil {
		return nil, err
	}
	ep := channel.New(512, mtu, tcpip.LinkAddress(gatewayHW))
	if err := s.CreateNIC(nicID, ethernet.New(ep)); err != nil {
		return nil, fmt.Errorf("user network: create NIC: %s", err)
	}
	for _, a := range []net.IP{Gateway, DNS} {
		pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{
			Address: tcpip.AddrFrom4Slice(a), PrefixLen: 24}}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return nil, fmt.Errorf("user network: address %s: %s", a, err)
		}
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}})
	// Take every flow, whatever its destination, as a router does; the
	// policy then decides.
	s.SetPromiscuousMode(nicID, true)
	s.SetSpoofing(nicID, true)
	ctx, stop := context.WithCancel(context.Background())
	n := &Net{
		stack: s, ep: ep, ctx: ctx, stop: stop, out: make(chan []byte, 64),
		policy: policy{hostLoopback: opts.HostLoopback, restrict: opts.Restrict, allow: opts.Allow,
			local: hostAddrs(), dns: hostResolver()},
		dial:    opts.dial,
		maxTCP:  cmp.Or(opts.maxTCP, MaxTCPConns),
		maxUDP:  cmp.Or(opts.maxUDP, MaxUDPFlows),
		udpIdle: cmp.Or(opts.udpIdle, UDPIdle),
		conns:   make(map[io.Closer]struct{}),
		flows:   make(map[*udpFlow]struct{}),
	}
	if n.dial == nil {
		d := &net.Dialer{Timeout: dialTimeout}
		n.dial = d.DialContext
	}
	// The forwarder gives the endpoints it accepts its own receive
	// buffer size (0: 1 MiB), whatever the protocol's default.
	tf := tcp.NewForwarder(s, TCPBufSize, 1024, n.forwardTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tf.HandlePacket)
	uf := udp.NewForwarder(s, n.forwardUDP)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, uf.HandlePacket)
	for _, f := range opts.HostFwds {
		if err := n.listen(f); err != nil {
			n.Close()
			return nil, err
		}
	}
	n.spawn(n.pumpOut)
	return n, nil
}

// hostResolver returns the first nameserver of /etc/resolv.conf.
func hostResolver() string {
	b, err := os.ReadFile("/etc/resolv.conf")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "nameserver" && net.ParseIP(f[1]) != nil {
				return net.JoinHostPort(f[1], "53")
			}
		}
	}
	return "127.0.0.1:53"
}

// spawn runs f on a goroutine Close waits for, and reports false (without
// running it) once the network is closed.
func (n *Net) spawn(f func()) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.wg.Go(f)
	return true
}

// track registers connections for Close to close; it reports false, and
// closes them, once the network is closed.
func (n *Net) track(cs ...io.Closer) bool {
	n.mu.Lock()
	if !n.closed {
		for _, c := range cs {
			n.conns[c] = struct{}{}
		}
		n.mu.Unlock()
		return true
	}
	n.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	return false
}

func (n *Net) untrack(cs ...io.Closer) {
	n.mu.Lock()
	for _, c := range cs {
		delete(n.conns, c)
	}
	n.mu.Unlock()
}

// acquireTCP takes one of the MaxTCPConns places, or reports false.
func (n *Net) acquireTCP() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed || n.tcpConns >= n.maxTCP {
		return false
	}
	n.tcpConns++
	return true
}

func (n *Net) releaseTCP() {
	n.mu.Lock()
	n.tcpConns--
	n.mu.Unlock()
}

// Offloads implements vnet.Backend: none; the guest checksums and
// segments its own frames.
func (n *Net) Offloads() uint64 { return 0 }

// SetOffloads implements vnet.Backend.
func (n *Net) SetOffloads(uint64) error { return nil }

// Write implements vnet.Backend: one frame from the guest.
func (n *Net) Write(p []byte) (int, error) {
	if len(p) < vnet.HeaderSize+header.EthernetMinimumSize {
		return len(p), nil
	}
	frame := p[vnet.HeaderSize:]
	if reply := dhcpReply(frame); reply != nil {
		n.send(reply)
		return len(p), nil
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(append([]byte(nil), frame...))})
	n.ep.InjectInbound(0, pkt)
	pkt.DecRef()
	return len(p), nil
}

// send queues a frame (without virtio-net header) for the guest; it is
// dropped when the guest is not keeping up, as on a wire.
func (n *Net) send(frame []byte) {
	select {
	case n.out <- frame:
	default:
	}
}

// pumpOut moves the stack's outgoing frames to the guest's queue.
func (n *Net) pumpOut() {
	for {
		pkt := n.ep.ReadContext(n.ctx)
		if pkt == nil {
			return
		}
		var frame []byte
		for _, s := range pkt.AsSlices() {
			frame = append(frame, s...)
		}
		pkt.DecRef()
		select {
		case n.out <- frame:
		case <-n.ctx.Done():
			return
		}
	}
}

// Read implements vnet.Backend: the next frame for the guest, with a
// zero virtio-net header.
func (n *Net) Read(p []byte) (int, error) {
	select {
	case f := <-n.out:
		if len(p) < vnet.HeaderSize+len(f) {
			return 0, nil
		}
		clear(p[:vnet.HeaderSize])
		return vnet.HeaderSize + copy(p[vnet.HeaderSize:], f), nil
	case <-n.ctx.Done():
		return 0, net.ErrClosed
	}
}

// Close implements vnet.Backend: it closes the forwards' listeners, every
// connection and flow (whatever their peers do), stops the stack and
// waits for every goroutine.
func (n *Net) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	closers := n.listeners
	for c := range n.conns {
		closers = append(closers, c)
	}
	for f := range n.flows {
		closers = append(closers, f)
	}
	n.listeners, n.conns, n.flows = nil, nil, nil
	n.mu.Unlock()
	n.stop() // ends dials in progress and back-offs
	for _, c := range closers {
		c.Close()
	}
	n.ep.Close()
	n.stack.Close()
	n.wg.Wait()
	return nil
}

// destination is the guest's destination of a flow as a netip.AddrPort.
func destination(addr tcpip.Address, port uint16) netip.AddrPort {
	if addr.Len() != 4 {
		return netip.AddrPort{} // invalid: refused
	}
	return netip.AddrPortFrom(netip.AddrFrom4(addr.As4()), port)
}

// forwardTCP connects a guest TCP connection to the host side: a
// destination the policy refuses, one beyond MaxTCPConns, or a refusal
// there is a reset for the guest.
func (n *Net) forwardTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	dst, ok := target("tcp", destination(id.LocalAddress, id.LocalPort), n.policy)
	if !ok || !n.acquireTCP() {
		r.Complete(true)
		return
	}
	started := n.spawn(func() {
		defer n.releaseTCP()
		ctx, cancel := context.WithTimeout(n.ctx, dialTimeout)
		hc, err := n.dial(ctx, "tcp", dst)
		cancel()
		if err != nil {
			r.Complete(true)
			return
		}
		hcc, ok := hc.(halfCloser)
		if !ok {
			hc.Close()
			r.Complete(true)
			return
		}
		var wq waiter.Queue
		ep, terr := r.CreateEndpoint(&wq)
		if terr != nil {
			r.Complete(true)
			hc.Close()
			return
		}
		r.Complete(false)
		n.splice(gonet.NewTCPConn(&wq, ep), hcc)
	})
	if !started {
		n.releaseTCP()
		r.Complete(true)
	}
}

// halfCloser is a connection that can end its sending side alone.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// splice copies both ways until both sides are done (or Close closes
// them), then closes both.
func (n *Net) splice(a, b halfCloser) {
	if !n.track(a, b) {
		return
	}
	defer n.untrack(a, b)
	var wg sync.WaitGroup
	cp := func(dst, src halfCloser) {
		io.Copy(dst, src)
		dst.CloseWrite()
	}
	wg.Go(func() { cp(a, b) })
	cp(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

// udpFlow is one guest UDP flow and its host socket.
type udpFlow struct {
	guest, host net.Conn
	last        atomic.Int64 // unix nanoseconds of the last datagram either way
	once        sync.Once
}

func (f *udpFlow) touch() { f.last.Store(time.Now().UnixNano()) }

func (f *udpFlow) idle() time.Duration { return time.Duration(time.Now().UnixNano() - f.last.Load()) }

// Close closes both sides; the relays then end.
func (f *udpFlow) Close() error {
	f.once.Do(func() {
		f.guest.Close()
		f.host.Close()
	})
	return nil
}

// forwardUDP relays a guest UDP flow to the host side until it is idle
// for UDPIdle, evicted or closed. A destination the policy refuses is
// dropped (no ICMP error).
func (n *Net) forwardUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	dst, ok := target("udp", destination(id.LocalAddress, id.LocalPort), n.policy)
	if !ok || !n.reserveUDP() {
		return true
	}
	unreserve := func() {
		n.mu.Lock()
		n.udpPending--
		n.mu.Unlock()
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		unreserve()
		return false
	}
	gc := gonet.NewUDPConn(&wq, ep)
	ctx, cancel := context.WithTimeout(n.ctx, dialTimeout)
	hc, err := n.dial(ctx, "udp", dst)
	cancel()
	if err != nil {
		unreserve()
		gc.Close()
		return true
	}
	f := &udpFlow{guest: gc, host: hc}
	f.touch()
	n.mu.Lock()
	n.udpPending--
	if n.closed {
		n.mu.Unlock()
		f.Close()
		return true
	}
	n.flows[f] = struct{}{}
	n.wg.Go(func() { n.relayUDP(f, hc, gc) })
	n.wg.Go(func() { n.relayUDP(f, gc, hc) })
	n.mu.Unlock()
	return true
}

// reserveUDP makes room for one more UDP flow, evicting the flow idle
// the longest (whose host socket is closed before it returns) when
// MaxUDPFlows are open; it reports false once the network is closed.
func (n *Net) reserveUDP() bool {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return false
	}
	var evict *udpFlow
	if len(n.flows)+n.udpPending >= n.maxUDP {
		for o := range n.flows {
			if evict == nil || o.last.Load() < evict.last.Load() {
				evict = o
			}
		}
		delete(n.flows, evict)
	}
	n.udpPending++
	n.mu.Unlock()
	if evict != nil {
		evict.Close()
	}
	return true
}

// relayUDP copies datagrams from src to dst until the flow is idle or
// closed, then closes and forgets it.
func (n *Net) relayUDP(f *udpFlow, dst, src net.Conn) {
	defer func() {
		f.Close()
		n.mu.Lock()
		delete(n.flows, f)
		n.mu.Unlock()
	}()
	buf := make([]byte, 65535)
	for {
		src.SetReadDeadline(time.Now().Add(n.udpIdle - f.idle()))
		k, err := src.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && f.idle() < n.udpIdle {
				continue // the other direction kept the flow alive
			}
			return
		}
		f.touch()
		dst.Write(buf[:k])
	}
}

// boundTCPBuffers makes TCPBufSize the send and receive buffer of every
// TCP endpoint of s and MaxTCPBufSize the most auto-tuning grows either
// to (receive auto-tuning stays on: gVisor caps it at that maximum, as it
// does the send side's).
func boundTCPBuffers(s *stack.Stack) error {
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: TCPBufSize, Max: MaxTCPBufSize}
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
		return fmt.Errorf("user network: TCP send buffer: %s", err)
	}
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: TCPBufSize, Max: MaxTCPBufSize}
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
		return fmt.Errorf("user network: TCP receive buffer: %s", err)
	}
	return nil
}

// acceptLoop accepts host connections on l for handle until the network
// is closed. No error but the listener's closing ends it: after any other
// (EMFILE, ENFILE, ECONNABORTED...) it backs off and goes on.
func (n *Net) acceptLoop(l net.Listener, handle func(net.Conn)) {
	backoff.Accept(l, n.ctx.Done(), handle)
}

// listen opens the host side of a forward.
func (n *Net) listen(f HostFwd) error {
	addr := f.HostAddr
	if addr == "" {
		addr = "127.0.0.1"
	}
	hostport := net.JoinHostPort(addr, strconv.Itoa(f.HostPort))
	guest := tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4Slice(GuestIP), Port: uint16(f.GuestPort)}
	if f.Proto == "udp" {
		return n.listenUDP(hostport, guest, f)
	}
	l, err := net.Listen("tcp", hostport)
	if err != nil {
		if errors.Is(err, syscallEADDRINUSE) {
			return fmt.Errorf("hostfwd %s: host port %s is in use", f, hostport)
		}
		return fmt.Errorf("hostfwd %s: %w", f, err)
	}
	n.mu.Lock()
	n.listeners = append(n.listeners, l)
	n.mu.Unlock()
	n.spawn(func() { n.acceptLoop(l, func(hc net.Conn) { n.forwardHost(hc, guest) }) })
	return nil
}

// forwardHost splices a host connection of a forward to the guest port;
// one beyond MaxTCPConns is closed at once.
func (n *Net) forwardHost(hc net.Conn, guest tcpip.FullAddress) {
	hcc, ok := hc.(halfCloser)
	if !ok || !n.acquireTCP() {
		hc.Close()
		return
	}
	started := n.spawn(func() {
		defer n.releaseTCP()
		ctx, cancel := context.WithTimeout(n.ctx, dialTimeout)
		gc, err := gonet.DialContextTCP(ctx, n.stack, guest, ipv4.ProtocolNumber)
		cancel()
		if err != nil {
			hc.Close()
			return
		}
		n.splice(hcc, gc)
	})
	if !started {
		n.releaseTCP()
		hc.Close()
	}
}

// listenUDP forwards datagrams from one host UDP port to the guest port;
// answers go back to the last host peer.
func (n *Net) listenUDP(hostport string, guest tcpip.FullAddress, f HostFwd) error {
	pc, err := net.ListenPacket("udp", hostport)
	if err != nil {
		if errors.Is(err, syscallEADDRINUSE) {
			return fmt.Errorf("hostfwd %s: host port %s is in use", f, hostport)
		}
		return fmt.Errorf("hostfwd %s: %w", f, err)
	}
	gc, err := gonet.DialUDP(n.stack, nil, &guest, ipv4.ProtocolNumber)
	if err != nil {
		pc.Close()
		return fmt.Errorf("hostfwd %s: %w", f, err)
	}
	n.mu.Lock()
	n.listeners = append(n.listeners, pc, gc)
	n.mu.Unlock()
	var peer sync.Mutex
	var last net.Addr
	n.spawn(func() {
		buf := make([]byte, 65535)
		var delay backoff.Delay
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) || !delay.Wait(n.ctx.Done()) {
					return
				}
				continue
			}
			delay.Reset()
			peer.Lock()
			last = from
			peer.Unlock()
			gc.Write(buf[:k])
		}
	})
	n.spawn(func() {
		buf := make([]byte, 65535)
		var delay backoff.Delay
		for {
			k, err := gc.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) || n.ctx.Err() != nil || !delay.Wait(n.ctx.Done()) {
					return
				}
				continue
			}
			delay.Reset()
			peer.Lock()
			to := last
			peer.Unlock()
			if to != nil {
				pc.WriteTo(buf[:k], to)
			}
		}
	})
	return nil
}
