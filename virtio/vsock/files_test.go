package vsock_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/capsule-vm/capsule/virtio/vsock"
)

// otherUID is a user capsule does not run as.
const otherUID = 65534

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes files that belong to another user")
	}
}

// tempDir makes a directory with a short path (Unix socket paths are
// short) and the given mode.
func tempDir(t *testing.T, mode os.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestCIDLock(t *testing.T) {
	t.Run("a symlink where the old lock file was is not followed", func(t *testing.T) {
		tmp := tempDir(t, 0o700)
		t.Setenv("TMPDIR", tmp)
		os.Mkdir(filepath.Join(tmp, "capsule-vsock-cids"), 0o777)
		victim := filepath.Join(tmp, "victim")
		if err := os.Symlink(victim, filepath.Join(tmp, "capsule-vsock-cids", strconv.FormatUint(guestCID, 10))); err != nil {
			t.Fatal(err)
		}
		d, err := vsock.Open(guestCID, filepath.Join(tmp, "s"))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if _, err := os.Lstat(victim); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the symlink's target was created: %v", err)
		}
	})
	t.Run("a second Open of a CID is refused until the first closes", func(t *testing.T) {
		dir := tempDir(t, 0o700)
		d, err := vsock.Open(guestCID, filepath.Join(dir, "a"))
		if err != nil {
			t.Fatal(err)
		}
		want := "vsock CID " + strconv.FormatUint(guestCID, 10) + " is in use by another capsule VM on this host"
		if _, err := vsock.Open(guestCID, filepath.Join(dir, "b")); err == nil || err.Error() != want {
			t.Errorf("second Open: %v, want %q", err, want)
		}
		d.Close()
		d, err = vsock.Open(guestCID, filepath.Join(dir, "b"))
		if err != nil {
			t.Fatalf("Open after Close: %v", err)
		}
		d.Close()
	})
	t.Run("the lock is the abstract socket name", func(t *testing.T) {
		fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_SEQPACKET, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer syscall.Close(fd)
		if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: "@capsule-vsock-cid-" + strconv.FormatUint(guestCID, 10)}); err != nil {
			t.Fatal(err)
		}
		if _, err := vsock.Open(guestCID, filepath.Join(tempDir(t, 0o700), "s")); err == nil || !strings.Contains(err.Error(), "in use by another capsule VM") {
			t.Errorf("Open with the name taken: %v", err)
		}
	})
}

func TestSocketFiles(t *testing.T) {
	t.Run("the socket is created 0600 whatever the umask", func(t *testing.T) {
		old := syscall.Umask(0)
		defer syscall.Umask(old)
		path := filepath.Join(tempDir(t, 0o700), "s")
		d, err := vsock.Open(guestCID, path)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != vsock.SocketMode {
			t.Errorf("socket mode %v, want %o", fi.Mode(), vsock.SocketMode)
		}
	})
	t.Run("a directory others can write is refused unless sticky", func(t *testing.T) {
		for _, mode := range []os.FileMode{0o777, 0o775} {
			dir := tempDir(t, mode)
			if mode == 0o775 && os.Chown(dir, -1, otherUID) != nil {
				continue // group-writable is refused only for another group
			}
			if _, err := vsock.Open(guestCID, filepath.Join(dir, "s")); err == nil || !strings.Contains(err.Error(), "writable by other users and not sticky") {
				t.Errorf("directory %v: %v", mode, err)
			}
		}
		dir := tempDir(t, 0o777|os.ModeSticky)
		d, err := vsock.Open(guestCID, filepath.Join(dir, "s"))
		if err != nil {
			t.Fatalf("sticky directory: %v", err)
		}
		d.Close()
	})
	t.Run("a linked directory is used by its real path", func(t *testing.T) {
		top := tempDir(t, 0o700)
		mine, other := filepath.Join(top, "mine"), filepath.Join(top, "other")
		os.Mkdir(mine, 0o700)
		os.Mkdir(other, 0o700)
		link := filepath.Join(top, "link")
		if err := os.Symlink(mine, link); err != nil {
			t.Fatal(err)
		}
		d, err := vsock.Open(guestCID, filepath.Join(link, "s"))
		if err != nil {
			t.Fatal(err)
		}
		real, _ := filepath.EvalSymlinks(filepath.Join(mine, "s"))
		if d.Path() != real {
			t.Errorf("Path %s, want %s", d.Path(), real)
		}
		// The link now leads elsewhere: capsule's socket stays where
		// it was checked, and Close removes it there.
		os.Remove(link)
		os.Symlink(other, link)
		if fi, err := os.Lstat(filepath.Join(mine, "s")); err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Errorf("socket in the real directory: %v", err)
		}
		d.Close()
		if _, err := os.Lstat(filepath.Join(mine, "s")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left after Close: %v", err)
		}
	})
	t.Run("a link to a directory others can write is refused", func(t *testing.T) {
		top := tempDir(t, 0o700)
		open := filepath.Join(top, "open")
		os.Mkdir(open, 0o700)
		os.Chmod(open, 0o777)
		link := filepath.Join(top, "link")
		if err := os.Symlink(open, link); err != nil {
			t.Fatal(err)
		}
		if _, err := vsock.Open(guestCID, filepath.Join(link, "s")); err == nil || !strings.Contains(err.Error(), "writable by other users and not sticky") {
			t.Errorf("%v", err)
		}
	})
	t.Run("a directory of another user is refused", func(t *testing.T) {
		needRoot(t)
		dir := tempDir(t, 0o755)
		os.Chown(dir, otherUID, otherUID)
		if _, err := vsock.Open(guestCID, filepath.Join(dir, "s")); err == nil || !strings.Contains(err.Error(), "belongs to another user") {
			t.Errorf("%v", err)
		}
	})
	t.Run("what is not ours is never deleted", func(t *testing.T) {
		dir := tempDir(t, 0o777|os.ModeSticky)
		file := filepath.Join(dir, "file")
		os.WriteFile(file, nil, 0o644)
		if _, err := vsock.Open(guestCID, file); err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("regular file: %v", err)
		}
		if _, err := os.Lstat(file); err != nil {
			t.Errorf("regular file: %v", err)
		}
		link := filepath.Join(dir, "link")
		os.Symlink(filepath.Join(dir, "nowhere"), link)
		if _, err := vsock.Open(guestCID, link); err == nil {
			t.Errorf("dangling symlink accepted")
		}
		if _, err := os.Lstat(link); err != nil {
			t.Errorf("symlink: %v", err)
		}
		if os.Geteuid() != 0 {
			return
		}
		// A stale socket of another user's.
		theirs := filepath.Join(dir, "theirs")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: theirs, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close()
		os.Lchown(theirs, otherUID, otherUID)
		if _, err := vsock.Open(guestCID, theirs); err == nil || !strings.Contains(err.Error(), "belongs to another user") {
			t.Errorf("another user's socket: %v", err)
		}
		if _, err := os.Lstat(theirs); err != nil {
			t.Errorf("another user's socket: %v", err)
		}
	})
	t.Run("Close removes only the socket it made", func(t *testing.T) {
		path := filepath.Join(tempDir(t, 0o700), "s")
		d, err := vsock.Open(guestCID, path)
		if err != nil {
			t.Fatal(err)
		}
		os.Remove(path)
		os.WriteFile(path, []byte("someone else's"), 0o600)
		d.Close()
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("a file that replaced the socket was removed: %v", err)
		}
	})
	t.Run("a guest connection to another user's socket is refused", func(t *testing.T) {
		needRoot(t)
		g := newGuest(t)
		name := g.path + "_5100"
		ln, err := net.Listen("unix", name)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			if s, err := ln.Accept(); err == nil {
				t.Errorf("capsule connected to another user's socket")
				s.Close()
			}
		}()
		os.Lchown(name, otherUID, otherUID)
		for range 2 {
			g.send(t, vsock.Header{SrcPort: 1, DstPort: 5100, Op: vsock.OpRequest}, "")
			if h, _ := g.recv(t); h.Op != vsock.OpRst {
				t.Fatalf("op %d, want RST", h.Op)
			}
		}
		if st := g.dev.Stats(); st.RefusedSockets != 2 {
			t.Errorf("refused %d, want 2", st.RefusedSockets)
		}
	})
}
