package p9_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	ninep "github.com/hugelgupf/p9/p9"

	"github.com/capsule-vm/capsule/virtio"
	"github.com/capsule-vm/capsule/virtio/p9"
	"github.com/capsule-vm/capsule/virtio/virtiotest"
)

func TestConfigHoldsTheTag(t *testing.T) {
	r := newRig(t, false, nil)
	if f := r.Read(virtio.RegDeviceFeatures); f&p9.FeatureMountTag == 0 {
		t.Errorf("features %#x lack VIRTIO_9P_MOUNT_TAG", f)
	}
	var cfg [8]byte
	r.M.Read(virtio.RegConfig, cfg[:])
	if n := binary.LittleEndian.Uint16(cfg[:]); n != 5 || string(cfg[2:7]) != "share" || cfg[7] != 0 {
		t.Errorf("configuration space % x", cfg)
	}
	if r.Read(virtio.RegDeviceID) != 9 {
		t.Errorf("device ID %d", r.Read(virtio.RegDeviceID))
	}
}

func TestNewRefusesBadTags(t *testing.T) {
	for _, tag := range []string{"", strings.Repeat("x", p9.MaxTagLen+1), "a\x00b"} {
		if _, err := p9.New(tag, nil); err == nil {
			t.Errorf("tag %q accepted", tag)
		}
	}
	if _, err := p9.New(strings.Repeat("x", p9.MaxTagLen), nil); err != nil {
		t.Error(err)
	}
}

// TestClientOverTheQueue runs a p9 client over the device: the file
// system's operations, with reads and writes larger than one message.
func TestClientOverTheQueue(t *testing.T) {
	r := newRig(t, false, nil)
	cl := r.client()
	root, err := cl.Attach("")
	if err != nil {
		t.Fatal(err)
	}
	_, f, err := root.Walk([]string{"hello.txt"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.Open(ninep.ReadOnly); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	if n, err := f.ReadAt(buf, 0); err != nil || string(buf[:n]) != "hello from the host\n" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	_, g, _ := root.Walk(nil)
	if _, _, _, err := g.Create("big", ninep.ReadWrite, 0o644, ninep.NoUID, ninep.NoGID); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 1<<20+123)
	rand.Read(big)
	if n, err := g.WriteAt(big, 0); err != nil || n != len(big) {
		t.Fatalf("wrote %d, %v", n, err)
	}
	if b, _ := os.ReadFile(filepath.Join(r.dir, "big")); !bytes.Equal(b, big) {
		t.Fatal("the host's copy differs")
	}
	back := make([]byte, len(big))
	if n, err := g.ReadAt(back, 0); err != nil || n != len(big) || !bytes.Equal(back, big) {
		t.Fatalf("read back %d, %v", n, err)
	}
	// Concurrent requests.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			name := fmt.Sprintf("d%d", i)
			if _, err := root.Mkdir(name, 0o755, ninep.NoUID, ninep.NoGID); err != nil {
				t.Error(err)
				return
			}
			_, d, err := root.Walk([]string{name})
			if err != nil {
				t.Error(err)
				return
			}
			if _, _, _, err := d.GetAttr(ninep.AttrMaskAll); err != nil {
				t.Error(err)
			}
			d.Close()
		})
	}
	wg.Wait()
	entries, _ := os.ReadDir(r.dir)
	if len(entries) != 10 {
		t.Errorf("%d entries, want 10", len(entries))
	}
	// Extended attributes are not supported.
	if _, err := root.ListXattrs(); err == nil {
		t.Error("listxattr succeeded")
	}
}

// TestResetClosesEveryFid: after a reset nothing of the session is left,
// and a new session works.
func TestResetClosesEveryFid(t *testing.T) {
	r := newRig(t, false, nil)
	r.attach()
	for i := range 20 {
		expect(t, "walk", r.call(twalk(2, 1, uint32(10+i), "hello.txt"), 4096), rWalk, 2, 0)
	}
	expect(t, "open", r.call(msg(tLopen, 3, enc(nil).u32(10).u32(0)), 4096), rLopen, 3, 0)
	if n := r.fs.OpenFDs(); n != 22 {
		t.Errorf("%d descriptors open, want 22", n)
	}
	r.reset()
	if n := r.fs.OpenFDs(); n != 0 {
		t.Errorf("%d descriptors open after the reset", n)
	}
	r.setup()
	r.attach()
	// fid 10 is gone.
	expect(t, "getattr of an old fid", r.call(tgetattr(4, 10), 4096), rLerror, 4, 9 /* EBADF */)
	expect(t, "getattr", r.call(tgetattr(4, 1), 4096), rGetattr, 4, 0)
}

// TestHostileMessages sends malformed requests: each is answered (or
// completed empty), and the device goes on serving.
func TestHostileMessages(t *testing.T) {
	r := newRig(t, false, nil)
	r.attach()
	const (
		einval     = 22
		emsgsize   = 90
		eopnotsupp = 95
		enobufs    = 105
	)
	cases := []struct {
		name  string
		msg   []byte
		room  uint32
		typ   uint8
		errno uint32
	}{
		{"size field beyond the chain", append(enc(nil).u32(100).u8(tGetattr).u16(7), make([]byte, 12)...), 64, rLerror, einval},
		{"size field below a header", append(enc(nil).u32(3).u8(tGetattr).u16(7), make([]byte, 12)...), 64, rLerror, einval},
		{"body shorter than its fields", msg(tGetattr, 7, enc(nil).u32(1)), 64, rLerror, einval},
		{"walk names missing", msg(tWalk, 7, enc(nil).u32(1).u32(2).u16(5).str("a")), 64, rLerror, einval},
		{"string longer than the body", msg(tWalk, 7, enc(nil).u32(1).u32(2).u16(1).u16(500).u8('a')), 64, rLerror, einval},
		{"write count beyond the data", msg(tWrite, 7, enc(nil).u32(1).u64(0).u32(1000).u8(1)), 64, rLerror, einval},
		{"write count short of the data", msg(tWrite, 7, enc(nil).u32(1).u64(0).u32(0).u8(1)), 64, rLerror, einval},
		{"unknown type", msg(200, 7, nil), 64, rLerror, eopnotsupp},
		{"an R-message", msg(rRead, 7, enc(nil).u32(5).str("abcde")), 64, rLerror, eopnotsupp},
		{"9P2000 Topen", msg(112, 7, enc(nil).u32(1).u8(0)), 64, rLerror, eopnotsupp},
		{"xattrwalk", msg(tXattrwalk, 7, enc(nil).u32(1).u32(9).str("user.x")), 64, rLerror, eopnotsupp},
		{"answer larger than the chain", tgetattr(7, 1), 20, rLerror, enobufs},
		{"larger than the msize", msg(tWrite, 7, append(enc(nil).u32(1).u64(0).u32(70000), make([]byte, 70000)...)), 64, rLerror, emsgsize},
	}
	for _, c := range cases {
		expect(t, c.name, r.call(c.msg, c.room), c.typ, 7, c.errno)
	}
	// No room even for an Rlerror, or nothing readable: completed empty.
	for name, m := range map[string][]byte{"no room": tgetattr(7, 1), "no header": {1, 2, 3}} {
		r.post(0, m, nil, 8)
		r.Kick(0)
		if _, a := r.used(); len(a) != 0 {
			t.Errorf("%s: used length %d, want 0", name, len(a))
		}
	}
	// A chain with no readable byte at all.
	r.Chain(0, 0, virtiotest.Desc{Addr: slotAddr(0) + half, Len: 64, Flags: virtio.DescFlagWrite})
	r.Kick(0)
	if _, a := r.used(); len(a) != 0 {
		t.Errorf("writable-only chain: used length %d", len(a))
	}
	// A read cut to fit the chain.
	expect(t, "walk", r.call(twalk(8, 1, 2, "hello.txt"), 4096), rWalk, 8, 0)
	expect(t, "open", r.call(msg(tLopen, 8, enc(nil).u32(2).u32(0)), 4096), rLopen, 8, 0)
	a := expect(t, "read", r.call(msg(tRead, 8, enc(nil).u32(2).u64(0).u32(1<<20)), 16), rRead, 8, 0)
	if string(a.body[4:]) != "hello" {
		t.Errorf("cut read gave %q", a.body[4:])
	}
	// The device still serves, and every session fid is still there.
	expect(t, "getattr", r.call(tgetattr(9, 1), 4096), rGetattr, 9, 0)
}

// TestZeroCopyLayout sends a Twrite whose data is in descriptors of its
// own and a Tread whose answer's data goes past an 11-byte header buffer,
// as Linux lays out large requests.
func TestZeroCopyLayout(t *testing.T) {
	r := newRig(t, false, nil)
	r.attach()
	expect(t, "walk", r.call(twalk(2, 1, 2, "hello.txt"), 4096), rWalk, 2, 0)
	expect(t, "open", r.call(msg(tLopen, 2, enc(nil).u32(2).u32(2)), 4096), rLopen, 2, 0)
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	w := msg(tWrite, 3, append(enc(nil).u32(2).u64(0).u32(uint32(len(data))), data...))
	r.post(0, w, []int{23, 4096}, 64) // header, then the data in two
	r.Kick(0)
	_, ans := r.used()
	if a := expect(t, "write", ans, rWrite, 3, 0); binary.LittleEndian.Uint32(a.body) != uint32(len(data)) {
		t.Errorf("wrote %d", binary.LittleEndian.Uint32(a.body))
	}
	r.post(0, msg(tRead, 4, enc(nil).u32(2).u64(0).u32(uint32(len(data)))), nil, 11, 8000, 8000)
	r.Kick(0)
	_, ans = r.used()
	a := expect(t, "read", ans, rRead, 4, 0)
	if n := binary.LittleEndian.Uint32(a.body); n != uint32(len(data)) || !bytes.Equal(a.body[4:], data) {
		t.Errorf("read %d bytes back, equal %v", n, bytes.Equal(a.body[4:], data))
	}
}

func TestVersion(t *testing.T) {
	r := newRig(t, false, nil)
	a := expect(t, "Tversion", r.call(tversion(1<<30, "9P2000.L.Google.5"), 4096), rVersion, noTag, 0)
	msize := binary.LittleEndian.Uint32(a.body)
	version := string(a.body[6:])
	if msize != p9.MaxMessageSize || version != "9P2000.L" {
		t.Errorf("Rversion msize %d version %q", msize, version)
	}
	a = expect(t, "Tversion 9P2000", r.call(tversion(8192, "9P2000"), 4096), rVersion, noTag, 0)
	if string(a.body[6:]) != "unknown" {
		t.Errorf("9P2000 answered %q", a.body[6:])
	}
	expect(t, "Tversion", r.call(tversion(8192, "9P2000.L"), 4096), rVersion, noTag, 0)
	big := msg(tWrite, 5, append(enc(nil).u32(1).u64(0).u32(9000), make([]byte, 9000)...))
	expect(t, "past the new msize", r.call(big, 64), rLerror, 5, 90)
}

func TestGetlockAnswersUnlocked(t *testing.T) {
	r := newRig(t, false, nil)
	r.attach()
	m := msg(tGetlock, 3, enc(nil).u32(1).u8(1).u64(10).u64(20).u32(77).str("guest"))
	a := expect(t, "Tgetlock", r.call(m, 4096), rGetlock, 3, 0)
	want := enc(nil).u8(2).u64(10).u64(20).u32(77).str("guest")
	if !bytes.Equal(a.body, want) {
		t.Errorf("Rgetlock body % x, want % x", a.body, want)
	}
}

// Refused unlinks are bounded: the p9 library keeps a path-tree node for
// each name it was asked to unlink, even when the unlink fails, so a
// driver that keeps asking for new names is cut off, and a name longer
// than a file name may be is refused outright.
func TestFailedUnlinksBounded(t *testing.T) {
	const tUnlinkat = 76
	const (
		eperm        = 1
		enoent       = 2
		enametoolong = 36
	)
	t.Cleanup(p9.SetFailedUnlinkLimit(10))
	r := newRig(t, false, nil)
	r.attach()
	unlink := func(name string) []byte {
		return msg(tUnlinkat, 7, enc(nil).u32(1).str(name).u32(0))
	}
	expect(t, "long name", r.call(unlink(strings.Repeat("n", 256)), 64), rLerror, 7, enametoolong)
	for i := range 10 {
		expect(t, "missing name", r.call(unlink(fmt.Sprintf("missing-%d", i)), 64), rLerror, 7, enoent)
	}
	expect(t, "one unlink too many", r.call(unlink("missing-x"), 64), rLerror, 7, eperm)
	// Everything else still works.
	expect(t, "getattr", r.call(tgetattr(9, 1), 4096), rGetattr, 9, 0)
}

// A Tversion asking for an msize too small to carry the next Tversion is
// refused, and the session goes on with the msize it had.
func TestTinyMsizeRefused(t *testing.T) {
	r := newRig(t, false, nil)
	expect(t, "tiny Tversion", r.call(tversion(7, "9P2000.L"), 4096), rLerror, noTag, 22)
	r.attach()
	expect(t, "getattr", r.call(tgetattr(9, 1), 4096), rGetattr, 9, 0)
}
