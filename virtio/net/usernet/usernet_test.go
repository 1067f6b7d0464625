package usernet

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
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
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	vnet "github.com/capsule-vm/capsule/virtio/net"
)

func TestParseHostFwd(t *testing.T) {
	for in, want := range map[string]HostFwd{
		"tcp:8080-:80":                    {Proto: "tcp", HostPort: 8080, GuestPort: 80},
		"tcp::8080-:80":                   {Proto: "tcp", HostPort: 8080, GuestPort: 80},
		"udp:0.0.0.0:5353-10.0.2.15:53":   {Proto: "udp", HostAddr: "0.0.0.0", HostPort: 5353, GuestPort: 53},
		"tcp:127.0.0.1:2222-10.0.2.15:22": {Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 2222, GuestPort: 22},
	} {
		got, err := ParseHostFwd(in)
		if err != nil || got != want {
			t.Errorf("ParseHostFwd(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "icmp:1-:2", "tcp:8080:80", "tcp:0-:80", "tcp:80-:70000", "tcp:80-10.0.2.99:80", "tcp:host:80-:80"} {
		if _, err := ParseHostFwd(bad); err == nil {
			t.Errorf("ParseHostFwd(%q) accepted", bad)
		}
	}
}

// discover returns a DHCPDISCOVER frame from mac.
func discover(mac net.HardwareAddr, typ byte) []byte {
	msg := make([]byte, bootpFixed+4)
	msg[0], msg[1], msg[2] = 1, 1, 6
	copy(msg[4:], []byte{1, 2, 3, 4})
	copy(msg[28:], mac)
	binary.BigEndian.PutUint32(msg[bootpFixed:], dhcpMagic)
	msg = append(msg, optMsgType, 1, typ, optEnd)
	f := make([]byte, 42, 42+len(msg))
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	f[14] = 0x45
	f[23] = 17
	binary.BigEndian.PutUint16(f[34:], 68)
	binary.BigEndian.PutUint16(f[36:], 67)
	return append(f, msg...)
}

func TestDHCP(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	for typ, want := range map[byte]byte{dhcpDiscover: dhcpOffer, dhcpRequest: dhcpAck} {
		r := dhcpReply(discover(mac, typ))
		if r == nil {
			t.Fatalf("no reply to type %d", typ)
		}
		ip := header.IPv4(r[14:])
		if !ip.IsChecksumValid() || ip.Protocol() != 17 {
			t.Errorf("bad IPv4 header")
		}
		msg := r[42:]
		if !net.IP(msg[16:20]).Equal(GuestIP) || !strings.HasPrefix(string(msg[28:34]), string(mac)) || msg[bootpFixed+6] != want {
			t.Errorf("reply to %d: yiaddr %v, type %d", typ, net.IP(msg[16:20]), msg[bootpFixed+6])
		}
	}
	// Cut short anywhere before its message type is whole: no reply,
	// no panic. (A missing end option is tolerated.)
	full := discover(mac, dhcpDiscover)
	for i := range len(full) - 1 {
		if dhcpReply(full[:i]) != nil {
			t.Errorf("reply to a frame cut at %d bytes", i)
		}
	}
}

func FuzzDHCP(f *testing.F) {
	f.Add(discover(net.HardwareAddr{2, 0, 0, 0, 0, 1}, dhcpDiscover))
	f.Add(discover(net.HardwareAddr{2, 0, 0, 0, 0, 1}, dhcpRequest))
	f.Fuzz(func(t *testing.T, frame []byte) {
		if r := dhcpReply(frame); r != nil && len(r) < 42+bootpMinSize {
			t.Errorf("short reply of %d bytes", len(r))
		}
	})
}

// guestStack is a second netstack playing the guest at 10.0.2.15,
// wired to n as a virtio-net device would be.
func guestStack(t *testing.T, n *Net) *stack.Stack {
	t.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	ep := channel.New(256, mtu, tcpip.LinkAddress([]byte{2, 0, 0, 0, 0, 0x15}))
	if err := s.CreateNIC(1, ethernet.New(ep)); err != nil {
		t.Fatal(err)
	}
	s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4Slice(GuestIP), PrefixLen: 24}}, stack.AddressProperties{})
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4Slice(Gateway), NIC: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ep.Close(); s.Close() })
	go func() { // guest to network
		for {
			pkt := ep.ReadContext(ctx)
			if pkt == nil {
				return
			}
			frame := make([]byte, vnet.HeaderSize)
			for _, sl := range pkt.AsSlices() {
				frame = append(frame, sl...)
			}
			pkt.DecRef()
			n.Write(frame)
		}
	}()
	go func() { // network to guest
		buf := make([]byte, vnet.MaxFrame)
		for {
			k, err := n.Read(buf)
			if err != nil {
				return
			}
			if k <= vnet.HeaderSize {
				continue
			}
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(append([]byte(nil), buf[vnet.HeaderSize:k]...))})
			ep.InjectInbound(0, pkt)
			pkt.DecRef()
		}
	}()
	return s
}

func TestHostLoopbackOnLetsTheGatewayReachHostLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("hello from the host\n"))
		c.Close()
	}()
	n, err := New(Options{HostLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	g := guestStack(t, n)
	port := ln.Addr().(*net.TCPAddr).Port
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, g, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4Slice(Gateway), Port: uint16(port)}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "hello from the host\n" {
		t.Fatalf("guest read %q, %v", line, err)
	}
	// A closed host port is a refused connection, promptly.
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln2.Addr().(*net.TCPAddr).Port
	ln2.Close()
	if _, err := gonet.DialContextTCP(ctx, g, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4Slice(Gateway), Port: uint16(closed)}, ipv4.ProtocolNumber); err == nil {
		t.Error("connection to a closed host port succeeded")
	}
}

func TestHostFwdReachesGuest(t *testing.T) {
	// Find a free port, then forward it.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	n, err := New(Options{HostFwds: []HostFwd{{Proto: "tcp", HostPort: port, GuestPort: 8080}}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	g := guestStack(t, n)
	gl, err := gonet.ListenTCP(g, tcpip.FullAddress{NIC: 1, Port: 8080}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer gl.Close()
	go func() {
		c, err := gl.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c) // echo
		c.Close()
	}()
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping\n"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "ping\n" {
		t.Fatalf("host read %q, %v", line, err)
	}
	// The same port cannot be forwarded twice.
	if n2, err := New(Options{HostFwds: []HostFwd{{Proto: "tcp", HostPort: port, GuestPort: 1}}}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second forward of port %d: %v", port, err)
		if n2 != nil {
			n2.Close()
		}
	}
}

// FuzzGuestFrame feeds arbitrary frames from the guest to the user-mode
// network (DHCP parser and netstack): nothing may panic.
func FuzzGuestFrame(f *testing.F) {
	f.Add(discover(net.HardwareAddr{2, 0, 0, 0, 0, 1}, dhcpDiscover))
	// An ARP request for the gateway and a TCP SYN to it.
	arpReq := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x06,
		0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 2, 15, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2}
	f.Add(arpReq)
	syn := make([]byte, 14+20+20)
	copy(syn, []byte{0x52, 0x55, 0x0a, 0, 2, 2, 2, 0, 0, 0, 0, 1, 8, 0})
	ip := header.IPv4(syn[14:])
	ip.Encode(&header.IPv4Fields{TotalLength: 40, TTL: 64, Protocol: 6,
		SrcAddr: tcpip.AddrFrom4Slice(GuestIP), DstAddr: tcpip.AddrFrom4Slice(Gateway)})
	ip.SetChecksum(^ip.CalculateChecksum())
	header.TCP(syn[34:]).Encode(&header.TCPFields{SrcPort: 40000, DstPort: 1, DataOffset: 20, Flags: header.TCPFlagSyn, WindowSize: 1000})
	f.Add(syn)
	n, err := New(Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { n.Close() })
	f.Fuzz(func(t *testing.T, frame []byte) {
		n.Write(append(make([]byte, vnet.HeaderSize), frame...))
		for { // drain the answers
			select {
			case <-n.out:
				continue
			default:
			}
			break
		}
	})
}
