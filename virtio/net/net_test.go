package net_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/capsule-vm/capsule/machine"
	"github.com/capsule-vm/capsule/virtio"
	vnet "github.com/capsule-vm/capsule/virtio/net"
	"github.com/capsule-vm/capsule/virtio/virtiotest"
)

// chanBackend is a Backend over channels.
type chanBackend struct {
	toGuest   chan []byte
	fromGuest chan []byte
	closed    chan struct{}
	offloads  uint64
}

func newChanBackend() *chanBackend {
	return &chanBackend{toGuest: make(chan []byte, 16), fromGuest: make(chan []byte, 16), closed: make(chan struct{})}
}

func (b *chanBackend) Offloads() uint64 { return vnet.FeatureCsum }
func (b *chanBackend) SetOffloads(f uint64) error {
	b.offloads = f
	return nil
}
func (b *chanBackend) Read(p []byte) (int, error) {
	select {
	case f := <-b.toGuest:
		return copy(p, f), nil
	case <-b.closed:
		return 0, errors.New("closed")
	}
}
func (b *chanBackend) Write(p []byte) (int, error) {
	b.fromGuest <- append([]byte(nil), p...)
	return len(p), nil
}
func (b *chanBackend) Close() error { close(b.closed); return nil }

const (
	rxBase = virtiotest.DataBase
	txBase = virtiotest.DataBase + 0x100000
)

func setup(t *testing.T) (*virtiotest.Driver, *chanBackend) {
	mem, err := machine.NewGuestMemory(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	be := newChanBackend()
	dev := vnet.New(vnet.RandomMAC(), be)
	d := virtiotest.New(t, mem, dev)
	t.Cleanup(func() { d.M.Close(); dev.Close() })
	d.Setup(vnet.FeatureCsum | vnet.FeatureMAC)
	return d, be
}

func TestFramesBothWays(t *testing.T) {
	d, be := setup(t)
	if be.offloads != vnet.FeatureCsum {
		t.Errorf("backend offloads %#x, want CSUM", be.offloads)
	}
	// Guest to host: header and frame split over two descriptors.
	frame := append(make([]byte, vnet.HeaderSize), bytes.Repeat([]byte{0xab}, 60)...)
	d.Mem.WriteAt(frame, txBase)
	d.Chain(1, 0, virtiotest.Desc{Addr: txBase, Len: vnet.HeaderSize}, virtiotest.Desc{Addr: txBase + vnet.HeaderSize, Len: 60})
	d.Kick(1)
	select {
	case got := <-be.fromGuest:
		if !bytes.Equal(got, frame) {
			t.Errorf("backend got %d bytes, want the %d sent", len(got), len(frame))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no frame reached the backend")
	}
	// Host to guest.
	d.Chain(0, 0, virtiotest.Desc{Addr: rxBase, Len: 2048, Flags: virtio.DescFlagWrite})
	d.Kick(0)
	in := append(make([]byte, vnet.HeaderSize), []byte("frame for the guest")...)
	be.toGuest <- in
	if err := d.WaitUsed(0, 1); err != nil {
		t.Fatal(err)
	}
	if _, n := d.Used(0, 0); n != uint32(len(in)) {
		t.Errorf("used length %d, want %d", n, len(in))
	}
	got := make([]byte, len(in))
	d.Mem.ReadAt(got, rxBase)
	if string(got[vnet.HeaderSize:]) != "frame for the guest" || got[10] != 1 {
		t.Errorf("guest got %q (num_buffers %d)", got[vnet.HeaderSize:], got[10])
	}
}

func TestHostileFrames(t *testing.T) {
	d, be := setup(t)
	// Too short for a header, larger than MaxFrame, and outside RAM:
	// none reaches the backend, and the queue goes on.
	d.Chain(1, 0, virtiotest.Desc{Addr: txBase, Len: 4})
	d.Chain(1, 1, virtiotest.Desc{Addr: txBase, Len: vnet.MaxFrame + 1})
	d.Chain(1, 2, virtiotest.Desc{Addr: 16 << 20, Len: 100})
	d.Chain(1, 3, virtiotest.Desc{Addr: txBase, Len: 0xffffffff})
	d.Kick(1)
	if err := d.WaitUsed(1, 4); err != nil {
		t.Fatal(err)
	}
	select {
	case f := <-be.fromGuest:
		t.Fatalf("a bad frame of %d bytes reached the backend", len(f))
	default:
	}
	// A receive buffer too small for the frame comes back empty; the next
	// one gets the next frame.
	d.Chain(0, 0, virtiotest.Desc{Addr: rxBase, Len: 20, Flags: virtio.DescFlagWrite})
	d.Chain(0, 1, virtiotest.Desc{Addr: rxBase + 4096, Len: 2048, Flags: virtio.DescFlagWrite})
	d.Kick(0)
	be.toGuest <- make([]byte, 100)
	be.toGuest <- make([]byte, 50)
	if err := d.WaitUsed(0, 2); err != nil {
		t.Fatal(err)
	}
	if _, n := d.Used(0, 0); n != 0 {
		t.Errorf("small buffer: used length %d, want 0", n)
	}
	if _, n := d.Used(0, 1); n != 50 {
		t.Errorf("used length %d, want 50", n)
	}
}

func TestParseMAC(t *testing.T) {
	if _, err := vnet.ParseMAC("02:00:00:00:00:01"); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"", "zz", "01:00:00:00:00:01", "02:00:00:00:00:00:00:01"} {
		if _, err := vnet.ParseMAC(bad); err == nil {
			t.Errorf("ParseMAC(%q) accepted", bad)
		}
	}
	if m := vnet.RandomMAC(); m[0]&1 != 0 || m[0]&2 == 0 {
		t.Errorf("RandomMAC %s is not local unicast", m)
	}
}

// floodBackend hands the device frames as fast as it takes them, until
// closed.
type floodBackend struct {
	closed chan struct{}
	frame  []byte
}

func (b *floodBackend) Offloads() uint64         { return 0 }
func (b *floodBackend) SetOffloads(uint64) error { return nil }
func (b *floodBackend) Read(p []byte) (int, error) {
	select {
	case <-b.closed:
		return 0, errors.New("closed")
	default:
		return copy(p, b.frame), nil
	}
}
func (b *floodBackend) Write(p []byte) (int, error) { return len(p), nil }
func (b *floodBackend) Close() error                { close(b.closed); return nil }

func TestResetUnderTrafficIsSafe(t *testing.T) {
	mem, err := machine.NewGuestMemory(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	be := &floodBackend{closed: make(chan struct{}), frame: make([]byte, vnet.HeaderSize+60)}
	dev := vnet.New(vnet.RandomMAC(), be)
	d := virtiotest.New(t, mem, dev)
	t.Cleanup(func() { d.M.Close(); dev.Close() })
	iterations := 300
	if testing.Short() {
		iterations = 50
	}
	for i := range iterations {
		d.Setup(0) // writes 0 to status first: a reset while frames pour in
		// Post receive buffers and kick, so that the pump is delivering
		// (popping, writing, pushing) when the next reset comes.
		for j := range d.Size {
			d.Chain(0, j, virtiotest.Desc{Addr: rxBase + 2048*uint64(j), Len: 2048, Flags: virtio.DescFlagWrite})
		}
		d.Kick(0)
		if i%3 == 0 {
			d.WaitUsed(0, 1) // sometimes let it fill
		}
		if i%5 == 0 {
			d.Write(virtio.RegStatus, 0)
		}
	}
	select {
	case err := <-d.Errors:
		t.Errorf("transport reported %v", err)
	default:
	}
}
