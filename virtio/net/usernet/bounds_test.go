package usernet

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// sockets counts the process's open sockets.
func sockets(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("needs /proc/self/fd")
	}
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

func TestCloseEndsIdleConnectionsPromptly(t *testing.T) {
	// A host server that accepts and then holds its connections, idle.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held <- c
		}
	}()
	fwd := freePort(t)
	n, err := New(Options{HostLoopback: true, HostFwds: []HostFwd{{Proto: "tcp", HostPort: fwd, GuestPort: 8080}}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	g := guestStack(t, n)
	// Guest to host: a splice the host peer never closes.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gc, err := gonet.DialContextTCP(ctx, g, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4Slice(Gateway), Port: uint16(ln.Addr().(*net.TCPAddr).Port)}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	var hostPeer net.Conn
	select {
	case hostPeer = <-held:
		defer hostPeer.Close()
	case <-ctx.Done():
		t.Fatal("the host server got no connection")
	}
	// Host to guest through hostfwd: a host peer that holds it, idle.
	gl, err := gonet.ListenTCP(g, tcpip.FullAddress{NIC: 1, Port: 8080}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer gl.Close()
	guestAccepted := make(chan net.Conn, 1)
	go func() {
		if c, err := gl.Accept(); err == nil {
			guestAccepted <- c
		}
	}()
	fc, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(fwd)), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	select {
	case c := <-guestAccepted:
		defer c.Close()
	case <-ctx.Done():
		t.Fatal("the guest got no forwarded connection")
	}

	start := time.Now()
	n.Close()
	d := time.Since(start)
	t.Logf("Close took %v with an idle host peer on a guest connection and on a hostfwd connection", d)
	if d > 2*time.Second {
		t.Errorf("Close took %v with idle host peers, want under 2 s", d)
	}
	// Both host peers see their connection end.
	for _, c := range []net.Conn{hostPeer, fc} {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("host peer %s: read %v after Close, want end of stream", c.LocalAddr(), err)
		}
	}
	// The forward's listener is closed.
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(fwd)), time.Second); err == nil {
		c.Close()
		t.Error("the hostfwd port still accepts after Close")
	}
}

func TestUDPFlowsAreBounded(t *testing.T) {
	sink, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	go io.Copy(io.Discard, readerOf(sink))
	before := sockets(t)
	rec := &recorder{real: true}
	const flows = 1000
	n, err := New(Options{HostLoopback: true, dial: rec.dial})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	g := guestStack(t, n)
	to := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4Slice(Gateway), Port: uint16(sink.LocalAddr().(*net.UDPAddr).Port)}
	maxSockets := 0
	for i := range flows {
		c, err := gonet.DialUDP(g, nil, &to, ipv4.ProtocolNumber) // a new source port each
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x"))
		c.Close()
		if i%50 == 0 {
			time.Sleep(time.Millisecond) // let the network keep up
			maxSockets = max(maxSockets, sockets(t)-before)
		}
	}
	// Wait until the network has taken what it will (the guest's link
	// drops some datagrams when it is full, as a wire would).
	for last, deadline := -1, time.Now().Add(10*time.Second); time.Now().Before(deadline); {
		dials, _, _ := rec.snapshot()
		if len(dials) == last || len(dials) == flows {
			break
		}
		last = len(dials)
		time.Sleep(200 * time.Millisecond)
	}
	dials, open, maxOpen := rec.snapshot()
	maxSockets = max(maxSockets, sockets(t)-before)
	t.Logf("%d flows from the guest: %d host sockets dialled, at most %d open at once; process sockets +%d at most", flows, len(dials), maxOpen, maxSockets)
	if len(dials) <= MaxUDPFlows {
		t.Fatalf("only %d flows reached the network; the test needs more than %d", len(dials), MaxUDPFlows)
	}
	if maxOpen > MaxUDPFlows || open > MaxUDPFlows {
		t.Errorf("%d host UDP sockets open at once (%d now), want at most MaxUDPFlows = %d", maxOpen, open, MaxUDPFlows)
	}
	if slack := 16; maxSockets > MaxUDPFlows+slack {
		t.Errorf("the process held %d more sockets, want at most %d + %d", maxSockets, MaxUDPFlows, slack)
	}
	n.mu.Lock()
	tracked := len(n.flows)
	n.mu.Unlock()
	if tracked > MaxUDPFlows {
		t.Errorf("%d flows tracked, want at most %d", tracked, MaxUDPFlows)
	}
}

// readerOf reads datagrams from pc as a stream.
func readerOf(pc net.PacketConn) io.Reader {
	return readerFunc(func(p []byte) (int, error) {
		k, _, err := pc.ReadFrom(p)
		return k, err
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func TestIdleUDPFlowsEnd(t *testing.T) {
	sink, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	rec := &recorder{real: true}
	n, err := New(Options{HostLoopback: true, dial: rec.dial, udpIdle: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	g := guestStack(t, n)
	to := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4Slice(Gateway), Port: uint16(sink.LocalAddr().(*net.UDPAddr).Port)}
	for range 5 {
		c, err := gonet.DialUDP(g, nil, &to, ipv4.ProtocolNumber)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x"))
		defer c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		dials, open, _ := rec.snapshot()
		if len(dials) == 5 && open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d flows dialled, %d host sockets still open after the idle time", len(dials), open)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTCPConnectionsAreBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held until the test ends
		}
	}()
	n, err := New(Options{HostLoopback: true, maxTCP: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	g := guestStack(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	to := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4Slice(Gateway), Port: uint16(ln.Addr().(*net.TCPAddr).Port)}
	for i := range 3 {
		c, err := gonet.DialContextTCP(ctx, g, to, ipv4.ProtocolNumber)
		if i < 2 {
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			defer c.Close()
			continue
		}
		if err == nil {
			c.Close()
			t.Fatal("a third connection was spliced with a cap of 2")
		}
	}
}

// flakyListener fails its first Accepts with err, then accepts for real.
type flakyListener struct {
	net.Listener
	fails int
	err   error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, l.err
	}
	return l.Listener.Accept()
}

func TestAcceptLoopSurvivesTemporaryErrors(t *testing.T) {
	n, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED} {
		t.Run(errno.Error(), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			fl := &flakyListener{Listener: ln, fails: 3, err: &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}}
			got := make(chan net.Conn, 1)
			done := make(chan struct{})
			go func() {
				defer close(done)
				n.acceptLoop(fl, func(c net.Conn) { got <- c })
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			select {
			case hc := <-got:
				hc.Close()
			case <-time.After(5 * time.Second):
				t.Fatalf("no connection accepted after %v", errno)
			}
			ln.Close() // closing ends the loop
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("the accept loop did not end when its listener closed")
			}
		})
	}
}

func TestTCPBuffersAreBounded(t *testing.T) {
	n, err := New(Options{HostLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	t.Run("the stack's buffer ranges are the bounds", func(t *testing.T) {
		var snd tcpip.TCPSendBufferSizeRangeOption
		var rcv tcpip.TCPReceiveBufferSizeRangeOption
		if err := n.stack.TransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
			t.Fatal(err)
		}
		if err := n.stack.TransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
			t.Fatal(err)
		}
		if snd.Default != TCPBufSize || snd.Max != MaxTCPBufSize || rcv.Default != TCPBufSize || rcv.Max != MaxTCPBufSize {
			t.Errorf("send %+v, receive %+v: want default %d, max %d", snd, rcv, TCPBufSize, MaxTCPBufSize)
		}
	})
	t.Run("a guest writing to a host sink that never reads fills only bounded buffers", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		sink := make(chan net.Conn, 1)
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.(*net.TCPConn).SetReadBuffer(4 << 10) // the host kernel takes little
				sink <- c                               // and never reads
			}
		}()
		g := guestStack(t, n)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := gonet.DialContextTCP(ctx, g, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4Slice(Gateway),
			Port: uint16(ln.Addr().(*net.TCPAddr).Port)}, ipv4.ProtocolNumber)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		select {
		case s := <-sink:
			defer s.Close()
		case <-time.After(10 * time.Second):
			t.Fatal("the host sink got no connection")
		}
		// Write until the writes stall for half a second.
		chunk := make([]byte, 64<<10)
		written := 0
		for written < 64<<20 {
			c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
			k, err := c.Write(chunk)
			written += k
			if err != nil {
				break
			}
		}
		if written >= 64<<20 {
			t.Fatalf("the guest wrote %d MiB to a sink that never reads", written>>20)
		}
		found := false
		for _, ep := range n.stack.RegisteredEndpoints() {
			te, ok := ep.(*tcp.Endpoint)
			if !ok {
				continue
			}
			found = true
			ops := te.SocketOptions()
			queued, _ := te.GetSockOptInt(tcpip.ReceiveQueueSizeOption)
			t.Logf("guest wrote %d KiB before stalling; capsule's endpoint: receive buffer %d, queued %d, send buffer %d",
				written>>10, ops.GetReceiveBufferSize(), queued, ops.GetSendBufferSize())
			if ops.GetReceiveBufferSize() > MaxTCPBufSize || ops.GetSendBufferSize() > MaxTCPBufSize || queued > MaxTCPBufSize {
				t.Errorf("receive buffer %d (queued %d), send buffer %d: want each at most %d",
					ops.GetReceiveBufferSize(), queued, ops.GetSendBufferSize(), MaxTCPBufSize)
			}
		}
		if !found {
			t.Error("no TCP endpoint in capsule's netstack")
		}
	})
}
