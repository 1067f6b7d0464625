package ociimage

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLinkProc checks the hard link fallback for kernels that refuse
// linkat(AT_EMPTY_PATH) to an unprivileged user: the new name is the
// file the descriptor refers to, a symbolic link not followed.
func TestLinkProc(t *testing.T) {
	d := t.TempDir()
	os.WriteFile(filepath.Join(d, "f"), []byte("x"), 0o644)
	os.Symlink("/etc/passwd", filepath.Join(d, "s"))
	dfd, err := unix.Open(d, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	for _, n := range []string{"f", "s"} {
		fd, err := unix.Openat(dfd, n, unix.O_PATH|unix.O_NOFOLLOW, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = linkProc(fd, dfd, n+".link")
		unix.Close(fd)
		if err != nil {
			t.Fatalf("linkProc %s: %v", n, err)
		}
		a, _ := os.Lstat(filepath.Join(d, n))
		b, err := os.Lstat(filepath.Join(d, n+".link"))
		if err != nil || !os.SameFile(a, b) {
			t.Errorf("%s.link is not a hard link of %s (%v)", n, n, err)
		}
	}
}

// TestRemoveUnwritable: Remove empties trees an unprivileged user made
// unreadable and unwritable, and leaves what links in it point to.
func TestRemoveUnwritable(t *testing.T) {
	base := t.TempDir()
	keep := filepath.Join(base, "keep")
	os.WriteFile(keep, []byte("keep"), 0o400)
	tree := filepath.Join(base, "tree")
	os.MkdirAll(filepath.Join(tree, "a", "b", "c"), 0o755)
	os.WriteFile(filepath.Join(tree, "a", "b", "c", "f"), nil, 0o000)
	os.Symlink(base, filepath.Join(tree, "a", "up"))
	os.Chmod(filepath.Join(tree, "a", "b", "c"), 0o000)
	os.Chmod(filepath.Join(tree, "a", "b"), 0o500)
	os.Chmod(filepath.Join(tree, "a"), 0o555)
	if err := Remove(tree); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(tree); !os.IsNotExist(err) {
		t.Errorf("tree still there: %v", err)
	}
	if fi, err := os.Stat(keep); err != nil || fi.Mode().Perm() != 0o400 {
		t.Errorf("the file a link in the tree pointed to: %v %v", fi, err)
	}
}
