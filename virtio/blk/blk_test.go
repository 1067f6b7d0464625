package blk_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capsule-vm/capsule/machine"
	"github.com/capsule-vm/capsule/virtio"
	"github.com/capsule-vm/capsule/virtio/blk"
	"github.com/capsule-vm/capsule/virtio/virtiotest"
)

const (
	diskSize = 2 << 20
	memSize  = 16 << 20
	hdrAddr  = virtiotest.DataBase
	dataAddr = virtiotest.DataBase + 0x1000
	statAddr = virtiotest.DataBase + 0x800
	canary   = virtiotest.DataBase + 0x100000 // 1 MiB the device must never touch
)

// disk writes an image whose sector n is filled with byte n.
func disk(t testing.TB) string {
	t.Helper()
	b := make([]byte, diskSize)
	for i := range b {
		b[i] = byte(i / blk.SectorSize)
	}
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func sum(t testing.TB, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

type rig struct {
	*virtiotest.Driver
	path string
	dev  *blk.Device
	head uint16
}

func newRig(t *testing.T, readOnly bool) *rig { return newRigRO(t, readOnly) }

// newRigTB is a writable rig for benchmarks and allocation tests.
func newRigTB(t testing.TB) *rig { return newRigRO(t, false) }

func newRigRO(t testing.TB, readOnly bool) *rig {
	t.Helper()
	mem, err := machine.NewGuestMemory(memSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	p := disk(t)
	dev, err := blk.Open(p, readOnly)
	if err != nil {
		t.Fatal(err)
	}
	d := virtiotest.New(t, mem, dev)
	t.Cleanup(func() {
		d.M.Close()
		if err := dev.Close(); err != nil {
			t.Error(err)
		}
	})
	d.Setup(virtio.FeatureIndirectDesc | blk.FeatureFlush)
	fillCanary(t, mem)
	return &rig{Driver: d, path: p, dev: dev}
}

func fillCanary(t testing.TB, mem *machine.GuestMemory) {
	if err := mem.WriteAt(bytes.Repeat([]byte{0xa5}, 1<<20), canary); err != nil {
		t.Fatal(err)
	}
}

func checkCanary(t *testing.T, mem *machine.GuestMemory) {
	t.Helper()
	b := make([]byte, 1<<20)
	if err := mem.ReadAt(b, canary); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, bytes.Repeat([]byte{0xa5}, 1<<20)) {
		t.Error("the device wrote guest memory outside the request's buffers")
	}
}

// header writes a request header at hdrAddr.
func (r *rig) header(typ uint32, sector uint64) {
	var h [blk.HeaderSize]byte
	binary.LittleEndian.PutUint32(h[0:], typ)
	binary.LittleEndian.PutUint64(h[8:], sector)
	if err := r.Mem.WriteAt(h[:], hdrAddr); err != nil {
		r.T.Fatal(err)
	}
	r.Mem.PutUint8(statAddr, 0xee)
}

// do posts a chain at the next free head, kicks and waits for it; it
// returns the status byte and the used length.
func (r *rig) do(t *testing.T, descs ...virtiotest.Desc) (status byte, used uint32) {
	t.Helper()
	return r.doTB(t, descs...)
}

// doTB is do for any testing.TB.
func (r *rig) doTB(t testing.TB, descs ...virtiotest.Desc) (status byte, used uint32) {
	t.Helper()
	head := r.head
	r.head = (r.head + uint16(len(descs))) % r.Size
	if int(r.head)+len(descs) > int(r.Size) {
		r.head = 0
	}
	n := r.UsedIdx(0)
	r.Chain(0, head, descs...)
	r.Kick(0)
	if err := r.WaitUsed(0, n+1); err != nil {
		t.Fatal(err)
	}
	h, l := r.Used(0, n)
	if h != uint32(head) {
		t.Errorf("used head %d, want %d", h, head)
	}
	s, _ := r.Mem.Uint8(statAddr)
	return s, l
}

func hdr() virtiotest.Desc { return virtiotest.Desc{Addr: hdrAddr, Len: blk.HeaderSize} }
func stat() virtiotest.Desc {
	return virtiotest.Desc{Addr: statAddr, Len: 1, Flags: virtio.DescFlagWrite}
}
func data(n uint32, write bool) virtiotest.Desc {
	d := virtiotest.Desc{Addr: dataAddr, Len: n}
	if write {
		d.Flags = virtio.DescFlagWrite
	}
	return d
}

func TestReadWriteFlushGetID(t *testing.T) {
	r := newRig(t, false)
	r.header(blk.TypeIn, 3)
	if s, n := r.do(t, hdr(), data(1024, true), stat()); s != blk.StatusOK || n != 1025 {
		t.Fatalf("read: status %d, used %d", s, n)
	}
	got := make([]byte, 1024)
	r.Mem.ReadAt(got, dataAddr)
	if got[0] != 3 || got[511] != 3 || got[512] != 4 || got[1023] != 4 {
		t.Errorf("read sectors 3-4: % x ...", got[:4])
	}

	r.Mem.WriteAt(bytes.Repeat([]byte{0x77}, 512), dataAddr)
	r.header(blk.TypeOut, 10)
	if s, n := r.do(t, hdr(), data(512, false), stat()); s != blk.StatusOK || n != 1 {
		t.Fatalf("write: status %d, used %d", s, n)
	}
	r.header(blk.TypeFlush, 0)
	if s, _ := r.do(t, hdr(), stat()); s != blk.StatusOK {
		t.Fatalf("flush: status %d", s)
	}
	b, _ := os.ReadFile(r.path)
	if !bytes.Equal(b[10*512:11*512], bytes.Repeat([]byte{0x77}, 512)) || b[11*512] != 11 {
		t.Error("sector 10 not written, or more than it")
	}

	r.header(blk.TypeGetID, 0)
	if s, n := r.do(t, hdr(), data(blk.IDLen, true), stat()); s != blk.StatusOK || n != blk.IDLen+1 {
		t.Fatalf("get id: status %d, used %d", s, n)
	}
	id := make([]byte, blk.IDLen)
	r.Mem.ReadAt(id, dataAddr)
	if !strings.HasPrefix(string(id), "disk.img") {
		t.Errorf("id %q", id)
	}
	r.header(99, 0)
	if s, _ := r.do(t, hdr(), stat()); s != blk.StatusUnsupp {
		t.Errorf("unknown request: status %d", s)
	}
	checkCanary(t, r.Mem)
}

func TestConfigSpace(t *testing.T) {
	r := newRig(t, true)
	var b [8]byte
	r.M.Read(virtio.RegConfig, b[:])
	if got := binary.LittleEndian.Uint64(b[:]); got != diskSize/512 {
		t.Errorf("capacity %d sectors, want %d", got, diskSize/512)
	}
	r.Write(virtio.RegDeviceFeaturesSel, 0)
	if r.Read(virtio.RegDeviceFeatures)&blk.FeatureRO == 0 {
		t.Error("read-only disk without VIRTIO_BLK_F_RO")
	}
}

func TestReadOnlyRefusesWrites(t *testing.T) {
	r := newRig(t, true)
	before := sum(t, r.path)
	r.Mem.WriteAt(bytes.Repeat([]byte{0x77}, 512), dataAddr)
	r.header(blk.TypeOut, 1)
	if s, _ := r.do(t, hdr(), data(512, false), stat()); s != blk.StatusIOErr {
		t.Errorf("write to read-only disk: status %d, want IOERR", s)
	}
	if sum(t, r.path) != before {
		t.Error("read-only image changed")
	}
}

func TestOutOfRangeRequestsFail(t *testing.T) {
	r := newRig(t, false)
	before := sum(t, r.path)
	last := uint64(diskSize/512 - 1)
	for _, c := range []struct {
		name   string
		typ    uint32
		sector uint64
		len    uint32
	}{
		{"read past the end", blk.TypeIn, last, 1024},
		{"write past the end", blk.TypeOut, last + 1, 512},
		{"sector overflows", blk.TypeOut, 1 << 62, 512},
		{"partial sector", blk.TypeOut, 0, 100},
	} {
		r.header(c.typ, c.sector)
		if s, _ := r.do(t, hdr(), data(c.len, c.typ == blk.TypeIn), stat()); s != blk.StatusIOErr {
			t.Errorf("%s: status %d, want IOERR", c.name, s)
		}
	}
	if sum(t, r.path) != before {
		t.Error("image changed")
	}
	// The last sector itself is fine.
	r.header(blk.TypeIn, last)
	if s, _ := r.do(t, hdr(), data(512, true), stat()); s != blk.StatusOK {
		t.Errorf("read of the last sector: status %d", s)
	}
}

func TestLocking(t *testing.T) {
	p := disk(t)
	w, err := blk.Open(p, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		if d, err := blk.Open(p, ro); err == nil || !strings.Contains(err.Error(), "in use") {
			t.Errorf("second open (read-only %v) while writable open: %v", ro, err)
			if d != nil {
				d.Close()
			}
		}
	}
	w.Close()
	r1, err := blk.Open(p, true)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, err := blk.Open(p, true)
	if err != nil {
		t.Fatalf("two read-only opens: %v", err)
	}
	r2.Close()
	if d, err := blk.Open(p, false); err == nil {
		d.Close()
		t.Error("writable open while a read-only one holds the image")
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	os.WriteFile(small, []byte("x"), 0o644)
	for _, c := range []struct{ path, want string }{
		{filepath.Join(dir, "missing"), "no such file"},
		{small, "smaller than one"},
		{dir, "is a directory"},
	} {
		if d, err := blk.Open(c.path, false); err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
			t.Errorf("Open(%s): %v, want an error naming it with %q", c.path, err, c.want)
			if d != nil {
				d.Close()
			}
		}
	}
}

func TestScatteredBuffers(t *testing.T) {
	r := newRig(t, false)
	// Sectors 5-8 into three buffers: two adjacent in guest memory, one
	// apart; then written back shifted by 8 sectors from the same buffers.
	bufs := []virtiotest.Desc{
		{Addr: dataAddr, Len: 512, Flags: virtio.DescFlagWrite},
		{Addr: dataAddr + 512, Len: 1024, Flags: virtio.DescFlagWrite},
		{Addr: dataAddr + 8192, Len: 512, Flags: virtio.DescFlagWrite},
	}
	r.header(blk.TypeIn, 5)
	if s, n := r.do(t, append(append([]virtiotest.Desc{hdr()}, bufs...), stat())...); s != blk.StatusOK || n != 2049 {
		t.Fatalf("read: status %d, used %d", s, n)
	}
	for i, addr := range []uint64{dataAddr, dataAddr + 512, dataAddr + 1024, dataAddr + 8192} {
		if b, _ := r.Mem.Uint8(addr); b != byte(5+i) {
			t.Errorf("sector %d read as %d", 5+i, b)
		}
	}
	for i := range bufs {
		bufs[i].Flags = 0
	}
	r.header(blk.TypeOut, 13)
	if s, _ := r.do(t, append(append([]virtiotest.Desc{hdr()}, bufs...), stat())...); s != blk.StatusOK {
		t.Fatalf("write: status %d", s)
	}
	b, _ := os.ReadFile(r.path)
	for i := range 4 {
		if got := b[(13+i)*512]; got != byte(5+i) {
			t.Errorf("sector %d holds %d, want %d", 13+i, got, 5+i)
		}
	}
}
