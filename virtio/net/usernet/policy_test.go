package usernet

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	vnet "github.com/capsule-vm/capsule/virtio/net"
)

// These tests decide about addresses, or send packets only to 127.0.0.0/8:
// a dial to anything else goes to a recorder that never dials.

func TestAllowed(t *testing.T) {
	host := netip.MustParseAddr("203.0.113.7") // stands for a host's own public address
	def := policy{local: []netip.Addr{host}}
	for _, tc := range []struct {
		name string
		dst  string
		p    policy
		want bool
	}{
		{"a public address is allowed", "8.8.8.8", def, true},
		{"a public address is refused with restrict", "8.8.8.8", policy{restrict: true}, false},
		{"restrict with allow lets the allowed prefix through", "8.8.8.8", policy{restrict: true, allow: []netip.Prefix{netip.MustParsePrefix("8.8.8.0/24")}}, true},
		{"host loopback is refused", "127.0.0.1", def, false},
		{"all of 127/8 is refused", "127.1.2.3", def, false},
		{"hostloopback=on does not open 127/8 directly", "127.0.0.1", policy{hostLoopback: true}, false},
		{"allow=127.0.0.0/8 opens it", "127.0.0.1", policy{allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, true},
		{"cloud metadata (link-local) is refused", "169.254.169.254", def, false},
		{"a private range is refused", "192.168.1.5", def, false},
		{"10/8 is refused", "10.1.2.3", def, false},
		{"172.16/12 is refused", "172.20.0.1", def, false},
		{"shared address space is refused", "100.64.0.1", def, false},
		{"allow=192.168.1.0/24 opens that range", "192.168.1.5", policy{allow: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}}, true},
		{"allow=192.168.1.0/24 does not open another", "192.168.2.5", policy{allow: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}}, false},
		{"the host's own address is refused", host.String(), def, false},
		{"broadcast is refused", "255.255.255.255", def, false},
		{"multicast is refused", "224.0.0.1", def, false},
		{"unspecified is refused", "0.0.0.0", def, false},
		{"the gateway is never a real destination", "10.0.2.2", policy{hostLoopback: true}, false},
		{"the DNS address is never a real destination", "10.0.2.3", def, false},
		{"the guest is never a real destination", "10.0.2.15", def, false},
		{"no user network address is, even if allowed", "10.0.2.99", policy{allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, false},
		{"IPv6 link-local is refused", "fe80::1", def, false},
		{"IPv6 unique local is refused", "fd00::1", def, false},
		{"IPv6 loopback is refused", "::1", def, false},
		{"an IPv4-mapped private address is refused", "::ffff:192.168.1.1", def, false},
		{"a public IPv6 address is allowed", "2001:4860:4860::8888", def, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := allowed(netip.MustParseAddr(tc.dst), tc.p); got != tc.want {
				t.Errorf("allowed(%s, %+v) = %v, want %v", tc.dst, tc.p, got, tc.want)
			}
		})
	}
}

func TestTarget(t *testing.T) {
	def := policy{dns: "192.0.2.53:53"}
	on := policy{dns: def.dns, hostLoopback: true}
	restricted := policy{dns: def.dns, hostLoopback: true, restrict: true}
	for _, tc := range []struct {
		name    string
		network string
		dst     string
		p       policy
		want    string // "" for refused
	}{
		{"the gateway is closed by default", "tcp", "10.0.2.2:80", def, ""},
		{"hostloopback=on maps the gateway to host loopback", "tcp", "10.0.2.2:80", on, "127.0.0.1:80"},
		{"hostloopback=on holds under restrict", "udp", "10.0.2.2:5000", restricted, "127.0.0.1:5000"},
		{"DNS over UDP goes to the host's resolver", "udp", "10.0.2.3:53", def, def.dns},
		{"DNS over TCP goes to the host's resolver", "tcp", "10.0.2.3:53", def, def.dns},
		{"restrict refuses DNS", "udp", "10.0.2.3:53", restricted, ""},
		{"another port of the DNS address is refused", "tcp", "10.0.2.3:80", on, ""},
		{"the guest's own address is refused", "tcp", "10.0.2.15:22", on, ""},
		{"another user network address is refused", "udp", "10.0.2.99:53", on, ""},
		{"a public address passes through", "tcp", "8.8.8.8:443", def, "8.8.8.8:443"},
		{"metadata is refused", "tcp", "169.254.169.254:80", on, ""},
		{"an invalid address is refused", "tcp", "", def, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var dst netip.AddrPort
			if tc.dst != "" {
				dst = netip.MustParseAddrPort(tc.dst)
			}
			got, ok := target(tc.network, dst, tc.p)
			if !ok {
				got = ""
			}
			if got != tc.want {
				t.Errorf("target(%s, %s) = %q, %v; want %q", tc.network, tc.dst, got, ok, tc.want)
			}
		})
	}
}

// recorder records the host dials of a Net; it dials for real only to
// 127.0.0.0/8 when real is set, and refuses everything else.
type recorder struct {
	real bool

	mu      sync.Mutex
	dials   []string
	open    int // UDP sockets open
	maxOpen int
}

func (r *recorder) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	r.mu.Lock()
	r.dials = append(r.dials, network+" "+addr)
	r.mu.Unlock()
	ap, err := netip.ParseAddrPort(addr)
	if !r.real || err != nil || !ap.Addr().IsLoopback() {
		return nil, errors.New("test: not dialled")
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil || network != "udp" {
		return c, err
	}
	r.mu.Lock()
	r.open++
	r.maxOpen = max(r.maxOpen, r.open)
	r.mu.Unlock()
	return &countedConn{Conn: c, r: r}, nil
}

func (r *recorder) snapshot() (dials []string, open, maxOpen int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.dials), r.open, r.maxOpen
}

type countedConn struct {
	net.Conn
	r    *recorder
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.r.mu.Lock()
		c.r.open--
		c.r.mu.Unlock()
	})
	return c.Conn.Close()
}

// guestFrame builds an Ethernet frame from the guest (10.0.2.15) to dst:
// a TCP SYN or a UDP datagram, with its virtio-net header.
func guestFrame(proto string, dst netip.AddrPort, srcPort uint16) []byte {
	l4 := 20
	if proto == "udp" {
		l4 = 8 + 4
	}
	f := make([]byte, vnet.HeaderSize+14+20+l4)
	eth := f[vnet.HeaderSize:]
	copy(eth, gatewayHW)
	copy(eth[6:], []byte{2, 0, 0, 0, 0, 0x15})
	binary.BigEndian.PutUint16(eth[12:], 0x0800)
	ip := header.IPv4(eth[14:])
	src, to := tcpip.AddrFrom4Slice(GuestIP), tcpip.AddrFrom4(dst.Addr().As4())
	p := header.TCPProtocolNumber
	if proto == "udp" {
		p = header.UDPProtocolNumber
	}
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(20 + l4), TTL: 64, Protocol: uint8(p), SrcAddr: src, DstAddr: to})
	ip.SetChecksum(^ip.CalculateChecksum())
	if proto == "udp" {
		u := header.UDP(eth[34:])
		u.Encode(&header.UDPFields{SrcPort: srcPort, DstPort: dst.Port(), Length: uint16(l4)})
		copy(u[8:], "ping")
		sum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, to, uint16(l4))
		u.SetChecksum(^u.CalculateChecksum(checksum(u[8:], sum)))
		return f
	}
	tc := header.TCP(eth[34:])
	tc.Encode(&header.TCPFields{SrcPort: srcPort, DstPort: dst.Port(), SeqNum: 1, DataOffset: 20, Flags: header.TCPFlagSyn, WindowSize: 65535})
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, to, 20)
	tc.SetChecksum(^tc.CalculateChecksum(sum))
	return f
}

func checksum(b []byte, initial uint16) uint16 {
	sum := uint32(initial)
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// waitReset waits for the network's reset of the guest's connection from
// srcPort.
func waitReset(t *testing.T, n *Net, srcPort uint16) bool {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case f := <-n.out:
			if len(f) < 14+20+20 || f[14+9] != 6 {
				continue
			}
			tc := header.TCP(f[34:])
			if tc.DestinationPort() == srcPort && tc.Flags()&header.TCPFlagRst != 0 {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

func TestUserNetworkAddressesNeverBecomeHostConnections(t *testing.T) {
	rec := &recorder{}
	n, err := New(Options{HostLoopback: true, dial: rec.dial})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// The guest's link address, as ARP would give it, for the resets.
	n.stack.AddStaticNeighbor(nicID, ipv4.ProtocolNumber, tcpip.AddrFrom4Slice(GuestIP), tcpip.LinkAddress([]byte{2, 0, 0, 0, 0, 0x15}))
	port := uint16(40000)
	for _, dst := range []string{"10.0.2.3:80", "10.0.2.15:22", "10.0.2.15:80", "10.0.2.99:80", "10.0.2.255:80", "169.254.169.254:80", "192.168.1.1:80", "127.0.0.1:22"} {
		ap := netip.MustParseAddrPort(dst)
		if ap.Addr().IsLoopback() || dst == "10.0.2.255:80" {
			// The stack drops these (a martian, a broadcast) before any
			// forwarder sees them: no reset, and no dial either.
			n.Write(guestFrame("tcp", ap, 39999))
			continue
		}
		t.Run("tcp to "+dst+" is reset", func(t *testing.T) {
			port++
			n.Write(guestFrame("tcp", ap, port))
			if !waitReset(t, n, port) {
				t.Errorf("no reset for a SYN to %s", dst)
			}
		})
		port++
		n.Write(guestFrame("udp", ap, port))
	}
	// A public destination reaches the dialer (which does not dial): the
	// recorder does see what the network would connect to.
	n.Write(guestFrame("tcp", netip.MustParseAddrPort("8.8.8.8:80"), 50000))
	n.Write(guestFrame("udp", netip.MustParseAddrPort("10.0.2.3:53"), 50001))
	waitReset(t, n, 50000)
	deadline := time.Now().Add(5 * time.Second)
	for {
		dials, _, _ := rec.snapshot()
		want := []string{"tcp 8.8.8.8:80", "udp " + n.policy.dns}
		slices.Sort(dials)
		slices.Sort(want)
		if slices.Equal(dials, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host dials %q, want only %q", dials, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHostLoopbackIsClosedByDefault(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	rec := &recorder{real: true}
	n, err := New(Options{dial: rec.dial})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	g := guestStack(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	if c, err := gonet.DialContextTCP(ctx, g, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4Slice(Gateway), Port: port}, ipv4.ProtocolNumber); err == nil {
		c.Close()
		t.Fatal("the guest reached host loopback through 10.0.2.2 without hostloopback=on")
	}
	// One to 127.0.0.1 itself is dropped (a martian): it times out.
	short, cancelShort := context.WithTimeout(ctx, time.Second)
	defer cancelShort()
	if c, err := gonet.DialContextTCP(short, g, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4([4]byte{127, 0, 0, 1}), Port: port}, ipv4.ProtocolNumber); err == nil {
		c.Close()
		t.Fatal("the guest reached host loopback at 127.0.0.1")
	}
	select {
	case <-accepted:
		t.Error("the host server accepted a connection")
	case <-time.After(100 * time.Millisecond):
	}
	if dials, _, _ := rec.snapshot(); len(dials) != 0 {
		t.Errorf("host dials %q, want none", dials)
	}
}
