// Package usernet is a rootless virtio-net backend: the guest's Ethernet
// frames go to a user-space TCP/IP stack (gVisor's netstack) inside
// capsule, which connects the guest's TCP and UDP flows to sockets of the
// capsule process, as QEMU's user networking (slirp) does. No TAP, no root.
//
// The network is 10.0.2.0/24, like QEMU's:
//
//	10.0.2.2   the gateway, and the host: connections to it go to the
//	           host's loopback (127.0.0.1)
//	10.0.2.3   the DNS server: queries go to the host's resolver
//	10.0.2.15  the guest, handed out by DHCP (or configured statically)
//
// Connections to other addresses leave from the host as connections of
// the capsule process. Host port forwards (hostfwd) make a host port reach
// a guest port.
package usernet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
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
	// dialTimeout bounds a connection from the guest to the host side.
	dialTimeout = 10 * time.Second
	// udpIdle ends a UDP flow without traffic for this long.
	udpIdle = 60 * time.Second
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

// Net is the user-mode network of one guest. It implements vnet.Backend.
type Net struct {
	stack *stack.Stack
	ep    *channel.Endpoint
	ctx   context.Context
	stop  context.CancelFunc
	out   chan []byte // frames for the guest
	dns   string      // host resolver, host:port

	mu        sync.Mutex
	listeners []io.Closer
	wg        sync.WaitGroup
}

// New builds the network and opens the host side of every forward; a
// host port in use is an error.
func New(fwds []HostFwd) (*Net, error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
		HandleLocal:        false,
	})
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
	// Take every flow, whatever its destination, as a router does.
	s.SetPromiscuousMode(nicID, true)
	s.SetSpoofing(nicID, true)
	ctx, stop := context.WithCancel(context.Background())
	n := &Net{stack: s, ep: ep, ctx: ctx, stop: stop, out: make(chan []byte, 64), dns: hostResolver()}
	tf := tcp.NewForwarder(s, 0, 1024, n.forwardTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tf.HandlePacket)
	uf := udp.NewForwarder(s, n.forwardUDP)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, uf.HandlePacket)
	for _, f := range fwds {
		if err := n.listen(f); err != nil {
			n.Close()
			return nil, err
		}
	}
	n.wg.Go(n.pumpOut)
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

// Close implements vnet.Backend: it stops the forwards and the stack.
func (n *Net) Close() error {
	n.stop()
	n.mu.Lock()
	for _, l := range n.listeners {
		l.Close()
	}
	n.listeners = nil
	n.mu.Unlock()
	n.ep.Close()
	n.stack.Close()
	n.wg.Wait()
	return nil
}

// hostAddr maps a destination the guest used to the host's address.
func (n *Net) hostAddr(addr tcpip.Address, port uint16) string {
	ip := net.IP(addr.AsSlice())
	switch {
	case ip.Equal(Gateway):
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	case ip.Equal(DNS) && port == 53:
		return n.dns
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(int(port)))
}

// forwardTCP connects a guest TCP connection to the host side; a refusal
// there is a reset for the guest.
func (n *Net) forwardTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	n.wg.Go(func() {
		dst := n.hostAddr(id.LocalAddress, id.LocalPort)
		hc, err := net.DialTimeout("tcp", dst, dialTimeout)
		if err != nil {
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
		splice(gonet.NewTCPConn(&wq, ep), hc.(*net.TCPConn))
	})
}

// halfCloser is a connection that can end its sending side alone.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// splice copies both ways until both sides are done, then closes both.
func splice(a, b halfCloser) {
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

// forwardUDP relays a guest UDP flow to the host side until it is idle.
func (n *Net) forwardUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		return false
	}
	gc := gonet.NewUDPConn(&wq, ep)
	hc, err := net.Dial("udp", n.hostAddr(id.LocalAddress, id.LocalPort))
	if err != nil {
		gc.Close()
		return true
	}
	relay := func(dst, src net.Conn) {
		buf := make([]byte, 65535)
		for {
			src.SetReadDeadline(time.Now().Add(udpIdle))
			k, err := src.Read(buf)
			if err != nil {
				gc.Close()
				hc.Close()
				return
			}
			dst.Write(buf[:k])
		}
	}
	n.wg.Go(func() { relay(hc, gc) })
	n.wg.Go(func() { relay(gc, hc) })
	return true
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
	n.wg.Go(func() {
		for {
			hc, err := l.Accept()
			if err != nil {
				return
			}
			n.wg.Go(func() {
				ctx, cancel := context.WithTimeout(n.ctx, dialTimeout)
				defer cancel()
				gc, err := gonet.DialContextTCP(ctx, n.stack, guest, ipv4.ProtocolNumber)
				if err != nil {
					hc.Close()
					return
				}
				splice(hc.(*net.TCPConn), gc)
			})
		}
	})
	return nil
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
	n.wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			peer.Lock()
			last = from
			peer.Unlock()
			gc.Write(buf[:k])
		}
	})
	n.wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			k, err := gc.Read(buf)
			if err != nil {
				return
			}
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
