package ociimage

import (
	"errors"
	"io"
	"os"
	"path"
	"strconv"

	"golang.org/x/sys/unix"
)

// inRoot is how every path the image names is resolved against a root
// directory: symbolic links (absolute ones included) and ".." are
// resolved as if the root were "/", so nothing resolves outside it, and
// /proc magic links and mount crossings are refused.
const inRoot = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// openat2 opens name beneath the root directory fd rootFD with
// resolution confined to it, retrying the EAGAIN and EINTR the kernel
// returns when a rename races the resolution.
func openat2(rootFD int, name string, flags int, resolve uint64) (int, error) {
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: resolve}
	for {
		fd, err := unix.Openat2(rootFD, name, &how)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err == unix.ENOSYS {
			return -1, errors.New("openat2 is not available (Linux 5.6 or later is needed)")
		}
		return fd, err
	}
}

// openDirIn opens the directory name (a clean relative path, "." for the
// root itself) beneath rootFD as an O_PATH descriptor, usable as the
// directory of the *at calls.
func openDirIn(rootFD int, name string) (int, error) {
	return openat2(rootFD, name, unix.O_PATH|unix.O_DIRECTORY, inRoot)
}

// lstatAt reports what name in the directory dirFD is, without
// following a final symbolic link; ok is false when it does not exist.
func lstatAt(dirFD int, name string) (st unix.Stat_t, ok bool, err error) {
	err = unix.Fstatat(dirFD, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if err == unix.ENOENT {
		return st, false, nil
	}
	return st, err == nil, err
}

// removeAt removes name from the directory dirFD, a whole tree if it is
// a directory. It never follows a symbolic link: every step is relative
// to a descriptor of a directory it opened with O_NOFOLLOW. A missing
// name is not an error.
func removeAt(dirFD int, name string) error {
	err := unix.Unlinkat(dirFD, name, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR && err != unix.EPERM {
		return err
	}
	fd, err := unix.Openat(dirFD, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := emptyDir(fd, nil); err != nil {
		unix.Close(fd)
		return err
	}
	unix.Close(fd)
	return unix.Unlinkat(dirFD, name, unix.AT_REMOVEDIR)
}

// emptyDir removes every entry of the directory fd (opened for reading)
// whose name keep does not accept; a nil keep accepts none.
func emptyDir(fd int, keep func(string) bool) error {
	dup, err := unix.Dup(fd)
	if err != nil {
		return err
	}
	dir := os.NewFile(uintptr(dup), "")
	defer dir.Close()
	for {
		removed := 0
		for {
			names, err := dir.Readdirnames(1024)
			for _, n := range names {
				if keep != nil && keep(n) {
					continue
				}
				if err := removeAt(fd, n); err != nil {
					return err
				}
				removed++
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
		}
		if removed == 0 {
			return nil
		}
		// Whether a directory read goes on correctly past removals is
		// up to the file system: read it again until nothing is left.
		if _, err := dir.Seek(0, io.SeekStart); err != nil {
			return err
		}
	}
}

// removeTree removes the directory tree at dir (a host path) even where
// an unprivileged owner has made directories unreadable or unwritable:
// an unpacked image has 0555 directories. It never follows symbolic
// links inside the tree.
func removeTree(dir string) error {
	if err := os.RemoveAll(dir); err == nil {
		return nil
	}
	var fix func(fd int) error
	fix = func(fd int) error {
		dup, err := unix.Dup(fd)
		if err != nil {
			return err
		}
		d := os.NewFile(uintptr(dup), "")
		defer d.Close()
		names, err := d.Readdirnames(-1)
		if err != nil {
			return err
		}
		for _, n := range names {
			// O_PATH needs no permission on the directory itself, and
			// O_NOFOLLOW|O_DIRECTORY skips links and other files.
			p, err := unix.Openat(fd, n, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				continue
			}
			chmodFD(p, 0o700)
			sub, err := unix.Openat(p, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			unix.Close(p)
			if err != nil {
				continue
			}
			err = fix(sub)
			unix.Close(sub)
			if err != nil {
				return err
			}
		}
		return nil
	}
	p, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return os.RemoveAll(dir)
	}
	chmodFD(p, 0o700)
	fd, err := unix.Openat(p, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	unix.Close(p)
	if err == nil {
		fix(fd)
		unix.Close(fd)
	}
	return os.RemoveAll(dir)
}

// chmodFD changes the mode of the file an O_PATH descriptor refers to
// (fchmod refuses O_PATH descriptors), through its /proc/self/fd link,
// which names that very file whatever its path has become.
func chmodFD(fd int, mode uint32) error {
	return unix.Chmod(procFD(fd), mode)
}

// procFD is the /proc/self/fd link of fd.
func procFD(fd int) string {
	return "/proc/self/fd/" + strconv.Itoa(fd)
}

// splitName splits a clean relative name into its directory and base.
func splitName(name string) (dir, base string) {
	return path.Dir(name), path.Base(name)
}
