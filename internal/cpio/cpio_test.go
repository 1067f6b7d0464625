package cpio

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sampleArchive(t *testing.T, withDev bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	cw := NewWriter(&buf)
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

func TestRoundTrip(t *testing.T) {
	got, err := ParseAll(sampleArchive(t, true))
	if err != nil {
		t.Fatal(err)
	}
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
		if g.Name != w.name || g.Mode != w.mode || string(g.Data) != w.data || g.Mtime != w.mtime {
			t.Errorf("entry %d = %q %o %q %d, want %q %o %q %d",
				i, g.Name, g.Mode, g.Data, g.Mtime, w.name, w.mode, w.data, w.mtime)
		}
	}
	if dev := got[6]; dev.Major != 5 || dev.Minor != 1 || dev.Type() != TypeChar || dev.Perm() != 0o600 {
		t.Errorf("console device %d,%d type %o perm %o, want 5,1 %o 600", dev.Major, dev.Minor, dev.Type(), dev.Perm(), TypeChar)
	}
}

func TestDeterministic(t *testing.T) {
	if !bytes.Equal(sampleArchive(t, true), sampleArchive(t, true)) {
		t.Fatal("the same calls gave different archives")
	}
}

func TestParseErrors(t *testing.T) {
	b := sampleArchive(t, false)
	if _, n, err := Parse(append(append([]byte{}, b...), "junk"...)); err != nil || n != len(b) {
		t.Errorf("Parse with trailing data: n=%d err=%v, want %d, nil", n, err, len(b))
	}
	if _, err := ParseAll(append(append([]byte{}, b...), 0, 0, 0, 0)); err == nil {
		t.Error("ParseAll with bytes after the trailer: no error")
	}
	for _, cut := range []int{0, 50, 120, len(b) - 120} {
		if _, _, err := Parse(b[:cut]); err == nil {
			t.Errorf("Parse of the first %d bytes: no error", cut)
		}
	}
	bad := append([]byte{}, b...)
	bad[3] = '8'
	if _, _, err := Parse(bad); err == nil {
		t.Error("Parse with a bad magic: no error")
	}
}

// TestSystemTool checks the archive with GNU cpio, when installed
// (apt-get install cpio).
func TestSystemTool(t *testing.T) {
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

func TestErrorSticks(t *testing.T) {
	cw := NewWriter(&failWriter{n: 200})
	cw.Bytes("/a", 0o644, bytes.Repeat([]byte("x"), 500))
	if err := cw.Close(); err == nil {
		t.Fatal("Close after a failed write: no error")
	}
}

func TestShortData(t *testing.T) {
	cw := NewWriter(io.Discard)
	if err := cw.File("/a", 0o644, 10, time.Time{}, strings.NewReader("abc")); err == nil {
		t.Fatal("File with less data than its size: no error")
	}
}
