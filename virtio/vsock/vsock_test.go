package vsock_test

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/capsule-vm/capsule/machine"
	"github.com/capsule-vm/capsule/virtio"
	"github.com/capsule-vm/capsule/virtio/virtiotest"
	"github.com/capsule-vm/capsule/virtio/vsock"
)

// guestCID is unique to this process: CIDs are locked host-wide.
var guestCID = uint64(1000 + os.Getpid())

const (
	rxBase = virtiotest.DataBase
	rxLen  = vsock.HeaderSize + 4096
	txBase = virtiotest.DataBase + 0x100000
	rxBufs = 8
)

// guest plays the guest's vsock driver.
type guest struct {
	*virtiotest.Driver
	dev    *vsock.Device
	path   string
	rxSeen uint16
	txNext uint16
}

func newGuest(t *testing.T) *guest {
	t.Helper()
	return newGuestRx(t, rxBufs)
}

// newGuestRx is newGuest with n receive buffers posted (none: a guest
// that never reads).
func newGuestRx(t *testing.T, n int) *guest {
	t.Helper()
	mem, err := machine.NewGuestMemory(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	// Unix socket paths are short: keep it below the 108-byte limit.
	dir, err := os.MkdirTemp("", "vsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "v.sock")
	dev, err := vsock.Open(guestCID, path)
	if err != nil {
		t.Fatal(err)
	}
	d := virtiotest.New(t, mem, dev)
	t.Cleanup(func() { d.M.Close(); dev.Close() })
	d.Setup(0)
	g := &guest{Driver: d, dev: dev, path: path}
	for i := range uint16(n) {
		d.WriteDesc(0, i, virtiotest.Desc{Addr: rxBase + uint64(i)*0x2000, Len: rxLen, Flags: virtio.DescFlagWrite})
		d.Publish(0, i)
	}
	d.Kick(0)
	return g
}

// send puts one packet on the transmit queue and waits until it is used.
func (g *guest) send(t *testing.T, h vsock.Header, data string) {
	t.Helper()
	if h.SrcCID == 0 {
		h.SrcCID = guestCID
	}
	if h.DstCID == 0 {
		h.DstCID = vsock.HostCID
	}
	if h.Type == 0 {
		h.Type = vsock.TypeStream
	}
	if h.Len == 0 {
		h.Len = uint32(len(data))
	}
	if h.BufAlloc == 0 {
		h.BufAlloc = 64 << 10
	}
	buf := make([]byte, vsock.HeaderSize+len(data))
	h.Put(buf)
	copy(buf[vsock.HeaderSize:], data)
	head := g.txNext % g.Size
	g.txNext++
	addr := txBase + uint64(head)*0x10000
	if err := g.Mem.WriteAt(buf, addr); err != nil {
		t.Fatal(err)
	}
	n := g.UsedIdx(1)
	g.WriteDesc(1, head, virtiotest.Desc{Addr: addr, Len: uint32(len(buf))})
	g.Publish(1, head)
	g.Kick(1)
	if err := g.WaitUsed(1, n+1); err != nil {
		t.Fatal(err)
	}
}

// recv waits for the next packet in the receive queue and gives its
// buffer back.
func (g *guest) recv(t *testing.T) (vsock.Header, string) {
	t.Helper()
	if err := g.WaitUsed(0, g.rxSeen+1); err != nil {
		t.Fatal(err)
	}
	head, n := g.Used(0, g.rxSeen)
	g.rxSeen++
	buf := make([]byte, n)
	if err := g.Mem.ReadAt(buf, rxBase+uint64(head)*0x2000); err != nil {
		t.Fatal(err)
	}
	h, err := vsock.ParseHeader(buf)
	if err != nil {
		t.Fatal(err)
	}
	if h.SrcCID != vsock.HostCID || h.DstCID != guestCID {
		t.Errorf("packet from %d to %d", h.SrcCID, h.DstCID)
	}
	g.Publish(0, uint16(head))
	g.Kick(0)
	return h, string(buf[vsock.HeaderSize:])
}

// none checks that no packet arrives for a moment.
func (g *guest) none(t *testing.T) {
	t.Helper()
	select {
	case <-g.IRQ.C:
	case <-time.After(200 * time.Millisecond):
	}
	if g.UsedIdx(0) != g.rxSeen {
		h, _ := g.recv(t)
		t.Errorf("unexpected packet op %d", h.Op)
	}
}

func TestGuestConnectsToHost(t *testing.T) {
	g := newGuest(t)
	ln, err := net.Listen("unix", g.path+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	g.send(t, vsock.Header{SrcPort: 1234, DstPort: 5000, Op: vsock.OpRequest}, "")
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if h, _ := g.recv(t); h.Op != vsock.OpResponse || h.SrcPort != 5000 || h.DstPort != 1234 {
		t.Fatalf("answer %+v, want RESPONSE 5000->1234", h)
	}
	g.send(t, vsock.Header{SrcPort: 1234, DstPort: 5000, Op: vsock.OpRW}, "hello host\n")
	line, err := bufio.NewReader(s).ReadString('\n')
	if err != nil || line != "hello host\n" {
		t.Fatalf("host read %q, %v", line, err)
	}
	s.Write([]byte("hello guest"))
	h, data := g.recv(t)
	if h.Op != vsock.OpRW || data != "hello guest" || h.BufAlloc != vsock.BufAlloc {
		t.Fatalf("guest got op %d %q (buf_alloc %d)", h.Op, data, h.BufAlloc)
	}
	s.Close()
	if h, _ := g.recv(t); h.Op != vsock.OpShutdown {
		t.Fatalf("after the host closed: op %d, want SHUTDOWN", h.Op)
	}
	g.send(t, vsock.Header{SrcPort: 1234, DstPort: 5000, Op: vsock.OpRst}, "")
	g.none(t)
}

func TestGuestConnectRefused(t *testing.T) {
	g := newGuest(t)
	g.send(t, vsock.Header{SrcPort: 1, DstPort: 7777, Op: vsock.OpRequest}, "")
	if h, _ := g.recv(t); h.Op != vsock.OpRst {
		t.Fatalf("op %d, want RST for a port nobody listens on", h.Op)
	}
}

func TestHostConnectsToGuest(t *testing.T) {
	g := newGuest(t)
	s, err := net.Dial("unix", g.path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Write([]byte("CONNECT 6000\n"))
	h, _ := g.recv(t)
	if h.Op != vsock.OpRequest || h.DstPort != 6000 {
		t.Fatalf("guest got %+v, want REQUEST to 6000", h)
	}
	g.send(t, vsock.Header{SrcPort: 6000, DstPort: h.SrcPort, Op: vsock.OpResponse}, "")
	r := bufio.NewReader(s)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "OK ") {
		t.Fatalf("host got %q, %v", line, err)
	}
	s.Write([]byte("ping"))
	if h2, data := g.recv(t); h2.Op != vsock.OpRW || data != "ping" {
		t.Fatalf("guest got op %d %q", h2.Op, data)
	}
	g.send(t, vsock.Header{SrcPort: 6000, DstPort: h.SrcPort, Op: vsock.OpRW}, "pong")
	buf := make([]byte, 4)
	if _, err := r.Read(buf); err != nil || string(buf) != "pong" {
		t.Fatalf("host got %q, %v", buf, err)
	}
}

func TestHostConnectRefusedByGuest(t *testing.T) {
	g := newGuest(t)
	s, err := net.Dial("unix", g.path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Write([]byte("CONNECT 6001\n"))
	h, _ := g.recv(t)
	g.send(t, vsock.Header{SrcPort: 6001, DstPort: h.SrcPort, Op: vsock.OpRst}, "")
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := s.Read(make([]byte, 10)); err == nil {
		t.Fatalf("host read %d bytes after the guest refused; want the socket closed", n)
	}
}

func TestHostileGuestPackets(t *testing.T) {
	g := newGuest(t)
	// Another CID as source, or a destination that is not the host:
	// dropped without an answer.
	g.send(t, vsock.Header{SrcCID: 99, SrcPort: 1, DstPort: 2, Op: vsock.OpRequest}, "")
	g.send(t, vsock.Header{DstCID: 7, SrcPort: 1, DstPort: 2, Op: vsock.OpRequest}, "")
	g.none(t)
	for _, h := range []vsock.Header{
		{SrcPort: 1, DstPort: 2, Op: vsock.OpRW},                 // no such connection
		{SrcPort: 1, DstPort: 2, Op: vsock.OpRequest, Type: 2},   // seqpacket, not offered
		{SrcPort: 1, DstPort: 2, Op: 99},                         // unknown op
		{SrcPort: 1, DstPort: 2, Op: vsock.OpRW, Len: 1 << 31},   // length beyond the chain
		{SrcPort: 1, DstPort: 2, Op: vsock.OpShutdown, Flags: 3}, // shutdown of nothing
	} {
		g.send(t, h, "x")
		if r, _ := g.recv(t); r.Op != vsock.OpRst {
			t.Errorf("packet %+v: answer op %d, want RST", h, r.Op)
		}
	}
	// A header cut short is dropped.
	head := g.txNext % g.Size
	g.txNext++
	n := g.UsedIdx(1)
	g.WriteDesc(1, head, virtiotest.Desc{Addr: txBase, Len: 10})
	g.Publish(1, head)
	g.Kick(1)
	if err := g.WaitUsed(1, n+1); err != nil {
		t.Fatal(err)
	}
	g.none(t)
}

func TestGuestOverrunningCreditIsReset(t *testing.T) {
	g := newGuest(t)
	ln, err := net.Listen("unix", g.path+"_5001")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	g.send(t, vsock.Header{SrcPort: 9, DstPort: 5001, Op: vsock.OpRequest}, "")
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g.recv(t) // RESPONSE
	// The host never reads; the guest ignores its credit and sends on.
	// Once the socket's own buffer and BufAlloc are full, capsule resets.
	chunk := strings.Repeat("z", 60000)
	for range 200 {
		g.send(t, vsock.Header{SrcPort: 9, DstPort: 5001, Op: vsock.OpRW}, chunk)
		for g.UsedIdx(0) != g.rxSeen {
			h, _ := g.recv(t)
			switch h.Op {
			case vsock.OpRst:
				return
			case vsock.OpCreditUpdate:
			default:
				t.Fatalf("op %d, want RST or credit updates", h.Op)
			}
		}
	}
	t.Fatal("no RST after 12 MB sent to a host that does not read")
}

func TestOpenErrors(t *testing.T) {
	dir, err := os.MkdirTemp("", "vsock")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	if _, err := vsock.Open(2, filepath.Join(dir, "a")); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("CID 2: %v", err)
	}
	if _, err := vsock.Open(guestCID, file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v", err)
	}
	live := filepath.Join(dir, "live")
	d, err := vsock.Open(guestCID, live)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vsock.Open(guestCID+1, live); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("socket in use: %v", err)
	}
	if _, err := vsock.Open(guestCID, filepath.Join(dir, "other")); err == nil || !strings.Contains(err.Error(), "is in use by another capsule VM") {
		t.Errorf("duplicate CID: %v", err)
	}
	d.Close()
	if _, err := os.Stat(live); !os.IsNotExist(err) {
		t.Errorf("socket file left after Close: %v", err)
	}
	// A stale socket file (its listener died without removing it).
	ln, _ := net.ListenUnix("unix", &net.UnixAddr{Name: live, Net: "unix"})
	ln.SetUnlinkOnClose(false)
	ln.Close()
	d, err = vsock.Open(guestCID, live)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	d.Close()
}

// Data the host writes just before it closes reaches the guest before
// the SHUTDOWN.
func TestHostWritesThenCloses(t *testing.T) {
	g := newGuest(t)
	s, err := net.Dial("unix", g.path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Write([]byte("CONNECT 6000\n"))
	h, _ := g.recv(t)
	g.send(t, vsock.Header{SrcPort: 6000, DstPort: h.SrcPort, Op: vsock.OpResponse}, "")
	r := bufio.NewReader(s)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "OK ") {
		t.Fatalf("host got %q, %v", line, err)
	}
	s.Write([]byte("abc\n"))
	s.Close()
	var got string
	for {
		h2, data := g.recv(t)
		if h2.Op == vsock.OpRW {
			got += data
			continue
		}
		if h2.Op != vsock.OpShutdown {
			t.Fatalf("guest got op %d after %q", h2.Op, got)
		}
		break
	}
	if got != "abc\n" {
		t.Fatalf("guest got %q before the SHUTDOWN, want %q", got, "abc\n")
	}
}
