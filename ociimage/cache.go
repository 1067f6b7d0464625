package ociimage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/capsule-vm/capsule/internal/patherr"

	"golang.org/x/sys/unix"
)

// tmpPrefix names an unpack in progress beside the rootfs it becomes:
// <cache>/<hex>/rootfs.tmp-*.
const tmpPrefix = "rootfs.tmp-"

// lock takes the exclusive flock on name, waiting for another unpacker
// of the image (in this process or another: flock locks belong to the
// open file) to finish. The returned function releases it.
func lock(name string) (func(), error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open the cache lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return func() { f.Close() }, nil
}

// Remove removes dir, an unpacked root file system or a whole cache
// directory, as a user other than root can only with care: it makes the
// directories the image made read-only (0555 is common) writable first.
// It never follows a symbolic link in the tree.
func Remove(dir string) error {
	if err := removeTree(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, patherr.Unwrap(err))
	}
	return nil
}

// removeStale removes what killed unpacks left in the cache entry dir.
// The caller holds the entry's lock, so no unpack is in progress.
func removeStale(dir string) {
	stale, _ := filepath.Glob(filepath.Join(dir, tmpPrefix+"*"))
	for _, d := range stale {
		removeTree(d)
	}
}

// publish renames the complete tree tmp to final, which must not exist.
// If it does (another unpacker that took no lock got there first), tmp
// is removed and final, as complete as tmp, is used.
func publish(tmp, final string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE)
	if err == unix.EINVAL || err == unix.ENOSYS {
		// A file system without RENAME_NOREPLACE: rename refuses to
		// replace a directory that is not empty, and an empty one
		// is an empty image's, like tmp.
		err = os.Rename(tmp, final)
	}
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
		if isDir(final) {
			removeTree(tmp)
			return nil
		}
	}
	removeTree(tmp)
	return fmt.Errorf("publish %s: %w", final, err)
}
