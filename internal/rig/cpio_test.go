package rig

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cpioEntry is an entry read back by readCPIO.
type cpioEntry struct {
	name         string
	mode         uint32
	mtime        int64
	major, minor uint32
	data         []byte
}

// readCPIO parses a newc archive up to its trailer and checks the 4-byte
// alignment of headers and data.
func readCPIO(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("offset %d: field %d: %v", off, i, err)
		}
		return uint32(v)
	}
	for {
		if off%4 != 0 || off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("offset %d: no newc header", off)
		}
		e := cpioEntry{mode: field(1), mtime: int64(field(5)), major: field(9), minor: field(10)}
		size, nameSize := int(field(6)), int(field(11))
		e.name = string(b[off+110 : off+110+nameSize-1])
		off = align4(off + 110 + nameSize)
		e.data = b[off : off+size]
		off = align4(off + size)
		if e.name == cpioTrailer {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func align4(n int) int { return (n + 3) &^ 3 }

func sampleArchive(t *testing.T, withDev bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	cw := newCPIOWriter(&buf)
	cw.Dir("/bin", 0o755)
	cw.Dir("tmp", 0o777|os.ModeSticky)
	cw.Bytes("/bin/hello", 0o755, []byte("#!/bin/sh\necho hello\n"))
	cw.File("/bin/x", 0o640|os.ModeSetuid, 3, time.Unix(1700000000, 0), strings.NewReader("abcdef"))
	cw.Bytes("/empty", 0o644, nil)
	cw.Symlink("/bin/sh", "busybox")
	if withDev {
		cw.CharDev("/dev/console", 0o600, 5, 1)
	}
	if err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestCPIORoundTrip(t *testing.T) {
	got := readCPIO(t, sampleArchive(t, true))
	want := []struct {
		name  string
		mode  uint32
		data  string
		mtime int64
	}{
		{"bin", 0o40755, "", 0},
		{"tmp", 0o41777, "", 0},
		{"bin/hello", 0o100755, "#!/bin/sh\necho hello\n", 0},
		{"bin/x", 0o104640, "abc", 1700000000},
		{"empty", 0o100644, "", 0},
		{"bin/sh", 0o120777, "busybox", 0},
		{"dev/console", 0o20600, "", 0},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.name != w.name || g.mode != w.mode || string(g.data) != w.data || g.mtime != w.mtime {
			t.Errorf("entry %d = %q %o %q %d, want %q %o %q %d",
				i, g.name, g.mode, g.data, g.mtime, w.name, w.mode, w.data, w.mtime)
		}
	}
	if dev := got[6]; dev.major != 5 || dev.minor != 1 {
		t.Errorf("console device %d,%d, want 5,1", dev.major, dev.minor)
	}
}

// TestCPIOSystemTool checks the archive with GNU cpio, when installed
// (apt-get install cpio).
func TestCPIOSystemTool(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("no cpio on this host")
	}
	if v, _ := exec.Command(cpio, "--version").Output(); !strings.Contains(string(v), "GNU cpio") {
		t.Skip("cpio is not GNU cpio")
	}
	list := exec.Command(cpio, "-t", "-v", "--quiet")
	list.Stdin = bytes.NewReader(sampleArchive(t, true))
	out, err := list.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	for _, want := range []string{"drwxr-xr-x", "drwxrwxrwt", "-rwxr-xr-x", "-rwSr-----", "bin/sh -> busybox", "crw-------", "dev/console"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("cpio -t -v output lacks %q:\n%s", want, out)
		}
	}

	dir := t.TempDir()
	extract := exec.Command(cpio, "-i", "-d", "--quiet", "--no-absolute-filenames")
	extract.Dir = dir
	extract.Stdin = bytes.NewReader(sampleArchive(t, false))
	if out, err := extract.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	checkFile(t, filepath.Join(dir, "bin/hello"), "#!/bin/sh\necho hello\n", 0o755)
	checkFile(t, filepath.Join(dir, "bin/x"), "abc", 0o640)
	if target, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || target != "busybox" {
		t.Errorf("bin/sh -> %q, %v; want busybox", target, err)
	}
}

func checkFile(t *testing.T, name, data string, perm os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != data || fi.Mode().Perm() != perm {
		t.Errorf("%s: %q mode %v, want %q mode %v", name, b, fi.Mode().Perm(), data, perm)
	}
}

type failWriter struct{ n int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.n < len(p) {
		return 0, fmt.Errorf("disk full")
	}
	w.n -= len(p)
	return len(p), nil
}

func TestCPIOErrorSticks(t *testing.T) {
	cw := newCPIOWriter(&failWriter{n: 200})
	cw.Bytes("/a", 0o644, bytes.Repeat([]byte("x"), 500))
	if err := cw.Close(); err == nil {
		t.Fatal("Close after a failed write: no error")
	}
}

func TestCPIOShortData(t *testing.T) {
	cw := newCPIOWriter(io.Discard)
	if err := cw.File("/a", 0o644, 10, time.Time{}, strings.NewReader("abc")); err == nil {
		t.Fatal("File with less data than its size: no error")
	}
}
