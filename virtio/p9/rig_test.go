package p9_test

import (
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	ninep "github.com/hugelgupf/p9/p9"

	"github.com/capsule-vm/capsule/machine"
	"github.com/capsule-vm/capsule/virtio"
	"github.com/capsule-vm/capsule/virtio/p9"
	"github.com/capsule-vm/capsule/virtio/p9/hostfs"
	"github.com/capsule-vm/capsule/virtio/virtiotest"
)

const (
	memSize   = 32 << 20
	queueSize = 128
	// Each chain the tests post uses descriptors 4*slot... and the
	// buffers of slot: slotSize bytes from DataBase + slot*slotSize,
	// the request in the first half and room for the answer in the
	// second.
	slotSize = 256 << 10
	slots    = queueSize / 4
	half     = slotSize / 2
)

// rig is a virtio-9p device on a host directory, driven by a test driver.
type rig struct {
	*virtiotest.Driver
	t   testing.TB
	dev *p9.Device
	fs  *hostfs.FS
	dir string
	// next is the next used index to collect.
	next uint16
}

// newRig shares a new directory holding hello.txt through backend (nil:
// hostfs on that directory) and sets the device up.
func newRig(t testing.TB, readOnly bool, wrap func(p9.Backend) p9.Backend) *rig {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fs, err := hostfs.Open(dir, readOnly)
	if err != nil {
		t.Fatal(err)
	}
	var be p9.Backend = fs
	if wrap != nil {
		be = wrap(fs)
	}
	dev, err := p9.New("share", be)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := machine.NewGuestMemory(memSize)
	if err != nil {
		t.Fatal(err)
	}
	d := virtiotest.New(t, mem, dev)
	d.Size = queueSize
	t.Cleanup(func() {
		d.M.Close()
		if n := fs.OpenFDs(); n != 0 {
			t.Errorf("%d host descriptors open after the device stopped", n)
		}
		fs.Close()
		mem.Close()
	})
	r := &rig{Driver: d, t: t, dev: dev, fs: fs, dir: dir}
	r.setup()
	return r
}

// setup (re)negotiates and starts the device.
func (r *rig) setup() {
	r.Setup(p9.FeatureMountTag | virtio.FeatureIndirectDesc)
	r.next = 0
}

// reset resets the device as a driver does.
func (r *rig) reset() { r.Write(virtio.RegStatus, 0) }

// slotAddr is where the buffers of slot begin.
func slotAddr(slot int) uint64 { return virtiotest.DataBase + uint64(slot)*slotSize }

// post makes one chain in slot: msg in readable descriptors cut at the
// given lengths (the rest in one more), then writable descriptors of the
// given sizes. It does not kick.
func (r *rig) post(slot int, msg []byte, cuts []int, writable ...uint32) {
	r.t.Helper()
	base := slotAddr(slot)
	if err := r.Mem.WriteAt(msg, base); err != nil {
		r.t.Fatal(err)
	}
	var descs []virtiotest.Desc
	off := 0
	for _, c := range cuts {
		descs = append(descs, virtiotest.Desc{Addr: base + uint64(off), Len: uint32(c)})
		off += c
	}
	if off < len(msg) || len(msg) == 0 {
		descs = append(descs, virtiotest.Desc{Addr: base + uint64(off), Len: uint32(len(msg) - off)})
	}
	waddr := base + half
	for _, w := range writable {
		descs = append(descs, virtiotest.Desc{Addr: waddr, Len: w, Flags: virtio.DescFlagWrite})
		waddr += uint64(w)
	}
	if len(descs) > 4 {
		r.t.Fatalf("%d descriptors for slot %d: at most 4", len(descs), slot)
	}
	r.Chain(0, uint16(4*slot), descs...)
}

// used waits for the next used chain and returns its slot and answer.
func (r *rig) used() (slot int, answer []byte) {
	r.t.Helper()
	if err := r.WaitUsed(0, r.next+1); err != nil {
		r.t.Fatal(err)
	}
	head, n := r.Used(0, r.next)
	r.next++
	slot = int(head / 4)
	answer = make([]byte, n)
	if err := r.Mem.ReadAt(answer, slotAddr(slot)+half); err != nil {
		r.t.Fatal(err)
	}
	return slot, answer
}

// call posts msg in slot 0 with writable bytes of room, kicks and returns
// the answer.
func (r *rig) call(msg []byte, room uint32) []byte {
	r.t.Helper()
	r.post(0, msg, nil, room)
	r.Kick(0)
	_, a := r.used()
	return a
}

// Raw 9P2000.L messages.

const (
	tStatfs    = 8
	rLerror    = 7
	tGetattr   = 24
	rGetattr   = 25
	tXattrwalk = 30
	tReaddir   = 40
	tGetlock   = 54
	rGetlock   = 55
	tVersion   = 100
	rVersion   = 101
	tAttach    = 104
	rAttach    = 105
	tFlush     = 108
	rFlush     = 109
	tWalk      = 110
	rWalk      = 111
	tLopen     = 12
	rLopen     = 13
	tRead      = 116
	rRead      = 117
	tWrite     = 118
	rWrite     = 119
	tClunk     = 120
	rClunk     = 121
	noTag      = 0xffff
	noFid      = 0xffffffff
)

// enc builds a message body.
type enc []byte

func (e enc) u8(v uint8) enc   { return append(e, v) }
func (e enc) u16(v uint16) enc { return binary.LittleEndian.AppendUint16(e, v) }
func (e enc) u32(v uint32) enc { return binary.LittleEndian.AppendUint32(e, v) }
func (e enc) u64(v uint64) enc { return binary.LittleEndian.AppendUint64(e, v) }
func (e enc) str(s string) enc { return append(e.u16(uint16(len(s))), s...) }

// msg frames a body as a message of type typ with tag.
func msg(typ uint8, tag uint16, body enc) []byte {
	b := enc(nil).u32(uint32(7 + len(body))).u8(typ).u16(tag)
	return append(b, body...)
}

func tversion(msize uint32, version string) []byte {
	return msg(tVersion, noTag, enc(nil).u32(msize).str(version))
}

func tattach(tag uint16, fid, uid uint32) []byte {
	return msg(tAttach, tag, enc(nil).u32(fid).u32(noFid).str("").str("").u32(uid))
}

func twalk(tag uint16, fid, newFid uint32, names ...string) []byte {
	e := enc(nil).u32(fid).u32(newFid).u16(uint16(len(names)))
	for _, n := range names {
		e = e.str(n)
	}
	return msg(tWalk, tag, e)
}

func tgetattr(tag uint16, fid uint32) []byte {
	return msg(tGetattr, tag, enc(nil).u32(fid).u64(0x3fff))
}

// answer is a decoded answer's header.
type answer struct {
	size  uint32
	typ   uint8
	tag   uint16
	ecode uint32 // of an Rlerror
	body  []byte
}

func decode(t testing.TB, b []byte) answer {
	t.Helper()
	if len(b) < 7 {
		t.Fatalf("answer of %d bytes", len(b))
	}
	a := answer{size: binary.LittleEndian.Uint32(b), typ: b[4], tag: binary.LittleEndian.Uint16(b[5:]), body: b[7:]}
	if int(a.size) != len(b) {
		t.Fatalf("answer size field %d, used length %d", a.size, len(b))
	}
	if a.typ == rLerror && len(a.body) >= 4 {
		a.ecode = binary.LittleEndian.Uint32(a.body)
	}
	return a
}

// expect checks an answer's type and tag (and errno, for an Rlerror).
func expect(t testing.TB, what string, b []byte, typ uint8, tag uint16, ecode uint32) answer {
	t.Helper()
	a := decode(t, b)
	if a.typ != typ || a.tag != tag || a.ecode != ecode {
		t.Fatalf("%s: answer type %d tag %d errno %d, want type %d tag %d errno %d", what, a.typ, a.tag, a.ecode, typ, tag, ecode)
	}
	return a
}

// attach negotiates 9P2000.L and attaches fid 1 to the root.
func (r *rig) attach() {
	r.t.Helper()
	expect(r.t, "Tversion", r.call(tversion(64<<10, "9P2000.L"), 4096), rVersion, noTag, 0)
	expect(r.t, "Tattach", r.call(tattach(1, 1, noFid), 4096), rAttach, 1, 0)
}

// vconn carries a p9 client's messages over the rig's queue: each
// T-message it writes becomes a chain of a free slot, and each answer
// becomes what the client reads.
type vconn struct {
	r  *rig
	mu sync.Mutex
	// cond: a slot was freed, or the connection closed.
	cond   sync.Cond
	free   []int
	wbuf   []byte
	closed bool
	pr     *io.PipeReader
	pw     *io.PipeWriter
	stop   chan struct{} // closed by Close
	done   chan struct{} // closed when collect returns
}

// client connects a p9 client over the rig's queue, with msize 64 KiB.
func (r *rig) client() *ninep.Client {
	r.t.Helper()
	c := &vconn{r: r, stop: make(chan struct{}), done: make(chan struct{})}
	c.cond.L = &c.mu
	for s := range slots {
		c.free = append(c.free, s)
	}
	c.pr, c.pw = io.Pipe()
	go c.collect()
	cl, err := ninep.NewClient(c, ninep.WithMessageSize(64<<10))
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { c.Close() })
	return cl
}

func (c *vconn) Read(p []byte) (int, error) { return c.pr.Read(p) }

// Write collects a T-message and posts it once complete.
func (c *vconn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wbuf = append(c.wbuf, p...)
	for len(c.wbuf) >= 4 {
		size := int(binary.LittleEndian.Uint32(c.wbuf))
		if len(c.wbuf) < size {
			break
		}
		for len(c.free) == 0 && !c.closed {
			c.cond.Wait()
		}
		if c.closed {
			return 0, io.ErrClosedPipe
		}
		s := c.free[len(c.free)-1]
		c.free = c.free[:len(c.free)-1]
		c.r.post(s, c.wbuf[:size], nil, half)
		c.r.Kick(0)
		c.wbuf = c.wbuf[size:]
	}
	return len(p), nil
}

// collect passes answers to the client as chains complete.
func (c *vconn) collect() {
	defer close(c.done)
	for {
		c.mu.Lock()
		idx := c.r.UsedIdx(0)
		c.mu.Unlock()
		if idx == c.r.next {
			// Interrupt.C holds one pending interrupt, so one raised
			// since UsedIdx was read is not missed.
			select {
			case <-c.r.IRQ.C:
				c.mu.Lock()
				c.r.Write(virtio.RegInterruptACK, c.r.Read(virtio.RegInterruptStatus))
				c.mu.Unlock()
			case <-c.stop:
				return
			}
			continue
		}
		c.mu.Lock()
		head, n := c.r.Used(0, c.r.next)
		c.r.next++
		b := make([]byte, n)
		c.r.Mem.ReadAt(b, slotAddr(int(head/4))+half)
		c.free = append(c.free, int(head/4))
		c.cond.Broadcast()
		c.mu.Unlock()
		if _, err := c.pw.Write(b); err != nil {
			return
		}
	}
}

func (c *vconn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
	close(c.stop)
	c.pw.Close()
	<-c.done
	return nil
}
