package p9_test

import (
	"sync"
	"sync/atomic"
	"testing"

	ninep "github.com/hugelgupf/p9/p9"

	"github.com/capsule-vm/capsule/virtio/p9"
)

// gate is a backend whose root's GetAttr, once on, waits for a release:
// requests that stay in flight as long as a test wants.
type gate struct {
	p9.Backend
	on      atomic.Bool
	in      atomic.Int32 // GetAttr calls waiting
	max     atomic.Int32 // the most that ever waited at once
	entered chan struct{}
	release chan struct{}
	closed  sync.Once
}

func newGate(t testing.TB) (*gate, func(p9.Backend) p9.Backend) {
	g := &gate{entered: make(chan struct{}, 64), release: make(chan struct{})}
	t.Cleanup(g.open)
	return g, func(b p9.Backend) p9.Backend { g.Backend = b; return g }
}

// open releases every waiting call, now and later.
func (g *gate) open() { g.closed.Do(func() { close(g.release) }) }

func (g *gate) Attach(uid ninep.UID) (ninep.File, error) {
	f, err := g.Backend.Attach(uid)
	if err != nil {
		return nil, err
	}
	return &gatedFile{File: f, g: g}, nil
}

type gatedFile struct {
	ninep.File
	g *gate
}

func (f *gatedFile) GetAttr(m ninep.AttrMask) (ninep.QID, ninep.AttrMask, ninep.Attr, error) {
	if g := f.g; g.on.Load() {
		n := g.in.Add(1)
		for {
			old := g.max.Load()
			if n <= old || g.max.CompareAndSwap(old, n) {
				break
			}
		}
		g.entered <- struct{}{}
		<-g.release
		g.in.Add(-1)
	}
	return f.File.GetAttr(m)
}

// TestTagInFlightAndFlush: a tag already in flight is refused; a flush
// of a request in flight is answered right after it, and a flush of
// itself at once.
func TestTagInFlightAndFlush(t *testing.T) {
	g, wrap := newGate(t)
	r := newRig(t, false, wrap)
	r.attach()
	g.on.Store(true)
	r.post(1, tgetattr(5, 1), nil, 4096)
	r.Kick(0)
	<-g.entered
	// The same tag again.
	expect(t, "tag in flight", r.call(tgetattr(5, 1), 4096), rLerror, 5, 22)
	// Tflush of tag 5 waits; Tflush of its own tag does not.
	r.post(2, msg(tFlush, 6, enc(nil).u16(5)), nil, 64)
	r.post(3, msg(tFlush, 7, enc(nil).u16(7)), nil, 64)
	r.Kick(0)
	slot, a := r.used()
	if slot != 3 {
		t.Fatalf("first answer in slot %d, want 3 (the self-flush)", slot)
	}
	expect(t, "self-flush", a, rFlush, 7, 0)
	g.on.Store(false)
	g.release <- struct{}{}
	slot, a = r.used()
	if slot != 1 {
		t.Fatalf("answer in slot %d, want 1 (the getattr)", slot)
	}
	expect(t, "getattr", a, rGetattr, 5, 0)
	slot, a = r.used()
	if slot != 2 {
		t.Fatalf("answer in slot %d, want 2 (the flush)", slot)
	}
	expect(t, "flush", a, rFlush, 6, 0)
	// A flush of a tag not in flight is answered at once.
	expect(t, "flush of nothing", r.call(msg(tFlush, 8, enc(nil).u16(5)), 64), rFlush, 8, 0)
}

// TestInFlightBounded fills the queue with requests that wait: at most
// MaxInFlight reach the backend at once, and all complete.
func TestInFlightBounded(t *testing.T) {
	g, wrap := newGate(t)
	r := newRig(t, false, wrap)
	r.attach()
	g.on.Store(true)
	const n = slots
	for s := range n {
		r.post(s, tgetattr(uint16(100+s), 1), nil, 4096)
	}
	r.Kick(0)
	for range p9.MaxInFlight {
		<-g.entered
	}
	// Each release lets one more in, never more than MaxInFlight.
	for range n - p9.MaxInFlight {
		g.release <- struct{}{}
		<-g.entered
	}
	if m := g.max.Load(); m != p9.MaxInFlight {
		t.Errorf("%d requests waited at once, want %d", m, p9.MaxInFlight)
	}
	g.open()
	seen := map[uint16]bool{}
	for range n {
		_, b := r.used()
		a := decode(t, b)
		if a.typ != rGetattr || seen[a.tag] {
			t.Fatalf("answer type %d tag %d", a.typ, a.tag)
		}
		seen[a.tag] = true
	}
}

// TestResetWaitsForRequestsInFlight resets the device while requests wait
// in the backend: the reset ends once they finish, nothing of the session
// stays, and a new session works.
func TestResetWaitsForRequestsInFlight(t *testing.T) {
	g, wrap := newGate(t)
	r := newRig(t, false, wrap)
	r.attach()
	expect(t, "walk", r.call(twalk(2, 1, 2, "hello.txt"), 4096), rWalk, 2, 0)
	g.on.Store(true)
	for s := range 5 {
		r.post(s, tgetattr(uint16(10+s), 1), nil, 4096)
	}
	r.Kick(0)
	for range 5 {
		<-g.entered
	}
	done := make(chan struct{})
	go func() {
		r.reset()
		close(done)
	}()
	g.open()
	<-done
	if n := r.fs.OpenFDs(); n != 0 {
		t.Errorf("%d descriptors open after the reset", n)
	}
	g.on.Store(false)
	r.setup()
	r.attach()
	expect(t, "getattr", r.call(tgetattr(3, 1), 4096), rGetattr, 3, 0)
}
