package hostfs

import (
	ninep "github.com/hugelgupf/p9/p9"
	"golang.org/x/sys/unix"
)

// changing read-locks f for an operation that changes the host, which a
// read-only share refuses.
func (f *file) changing() (unlock func(), err error) {
	if f.fs.readOnly {
		return nil, unix.EROFS
	}
	return f.use()
}

// own gives what fd names the owner the guest asks for, when capsule is
// root: uid (or, when it names none, the attaching user) and gid. It does
// not follow a symbolic link.
func (f *file) own(fd int, uid ninep.UID, gid ninep.GID) error {
	if !f.fs.chown {
		return nil
	}
	if !uid.Ok() {
		uid = f.uid
	}
	u, g := -1, -1
	if uid.Ok() {
		u = int(uid)
	}
	if gid.Ok() {
		g = int(gid)
	}
	if u < 0 && g < 0 {
		return nil
	}
	return unix.Fchownat(fd, "", u, g, unix.AT_EMPTY_PATH)
}

// created finishes the creation of name in f, a file of type typ that fd
// names: its owner, its mode (exact: the umask does not apply; a
// symbolic link has none) and its QID. On error the new entry is removed
// again.
func (f *file) created(name string, fd int, typ uint32, uid ninep.UID, gid ninep.GID, mode uint32) (ninep.QID, error) {
	err := f.own(fd, uid, gid)
	if err == nil && typ != unix.S_IFLNK {
		err = f.fs.chmod(fd, mode)
	}
	var st unix.Stat_t
	if err == nil {
		err = unix.Fstat(fd, &st)
	}
	if err != nil {
		flags := 0
		if typ == unix.S_IFDIR {
			flags = unix.AT_REMOVEDIR
		}
		unix.Unlinkat(f.fd, name, flags)
		return ninep.QID{}, err
	}
	return f.fs.qid(&st), nil
}

// Create implements p9.File: a new regular file (never an existing one),
// opened.
func (f *file) Create(name string, flags ninep.OpenFlags, perm ninep.FileMode, uid ninep.UID, gid ninep.GID) (_ ninep.File, _ ninep.QID, _ uint32, err error) {
	defer guestErrno(&err)
	unlock, err := f.changing()
	if err != nil {
		return nil, ninep.QID{}, 0, err
	}
	defer unlock()
	if err := checkName(name); err != nil {
		return nil, ninep.QID{}, 0, err
	}
	if err := f.fs.acquire(2); err != nil {
		return nil, ninep.QID{}, 0, err
	}
	oflags := openFlags(uint32(flags)) &^ unix.O_TRUNC
	var io int
	for {
		io, err = unix.Openat2(f.fd, name, &unix.OpenHow{
			Flags:   uint64(oflags) | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK,
			Mode:    uint64(perm) & 0o777,
			Resolve: resolve,
		})
		if err != unix.EINTR && err != unix.EAGAIN {
			break
		}
	}
	if err != nil {
		f.fs.release(2)
		return nil, ninep.QID{}, 0, err
	}
	fd, err := unix.Openat(f.fs.proc, fdName(io), unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(io)
		unix.Unlinkat(f.fd, name, 0)
		f.fs.release(2)
		return nil, ninep.QID{}, 0, err
	}
	qid, err := f.created(name, fd, unix.S_IFREG, uid, gid, uint32(perm))
	if err != nil {
		unix.Close(io)
		unix.Close(fd)
		f.fs.release(2)
		return nil, ninep.QID{}, 0, err
	}
	nf := &file{fs: f.fs, uid: f.uid, fd: fd, typ: unix.S_IFREG, io: io, ioMode: uint32(oflags & unix.O_ACCMODE)}
	return nf, qid, 0, nil
}

// Mkdir implements p9.File.
func (f *file) Mkdir(name string, perm ninep.FileMode, uid ninep.UID, gid ninep.GID) (_ ninep.QID, err error) {
	defer guestErrno(&err)
	unlock, err := f.changing()
	if err != nil {
		return ninep.QID{}, err
	}
	defer unlock()
	if err := checkName(name); err != nil {
		return ninep.QID{}, err
	}
	if err := unix.Mkdirat(f.fd, name, uint32(perm)&safeMode); err != nil {
		return ninep.QID{}, err
	}
	fd, err := walkOne(f.fd, name, unix.O_DIRECTORY)
	if err != nil {
		return ninep.QID{}, err
	}
	defer unix.Close(fd)
	return f.created(name, fd, unix.S_IFDIR, uid, gid, uint32(perm))
}

// Symlink implements p9.File: a link to target, whose text is stored as
// it is and never followed on the host.
func (f *file) Symlink(target, name string, uid ninep.UID, gid ninep.GID) (_ ninep.QID, err error) {
	defer guestErrno(&err)
	unlock, err := f.changing()
	if err != nil {
		return ninep.QID{}, err
	}
	defer unlock()
	if err := checkName(name); err != nil {
		return ninep.QID{}, err
	}
	if err := unix.Symlinkat(target, f.fd, name); err != nil {
		return ninep.QID{}, err
	}
	fd, err := walkOne(f.fd, name, 0)
	if err != nil {
		return ninep.QID{}, err
	}
	defer unix.Close(fd)
	return f.created(name, fd, unix.S_IFLNK, uid, gid, 0)
}

// Mknod implements p9.File: a regular file, FIFO or socket; device nodes
// are refused.
func (f *file) Mknod(name string, mode ninep.FileMode, _, _ uint32, uid ninep.UID, gid ninep.GID) (_ ninep.QID, err error) {
	defer guestErrno(&err)
	unlock, err := f.changing()
	if err != nil {
		return ninep.QID{}, err
	}
	defer unlock()
	if err := checkName(name); err != nil {
		return ninep.QID{}, err
	}
	typ := uint32(mode) & unix.S_IFMT
	switch typ {
	case 0:
		typ = unix.S_IFREG
	case unix.S_IFREG, unix.S_IFIFO, unix.S_IFSOCK:
	default:
		return ninep.QID{}, unix.EPERM
	}
	if err := unix.Mknodat(f.fd, name, typ|uint32(mode)&safeMode, 0); err != nil {
		return ninep.QID{}, err
	}
	fd, err := walkOne(f.fd, name, 0)
	if err != nil {
		return ninep.QID{}, err
	}
	defer unix.Close(fd)
	return f.created(name, fd, typ, uid, gid, uint32(mode))
}

// other returns g as a file of this share, read-locked unless it is f;
// call the returned unlock.
func (f *file) other(g ninep.File) (*file, func(), error) {
	o, ok := g.(*file)
	if !ok || o.fs != f.fs {
		return nil, nil, unix.EXDEV
	}
	if o == f {
		return o, func() {}, nil
	}
	unlock, err := o.use()
	return o, unlock, err
}

// Link implements p9.File: name in f becomes a hard link to target, a
// file of the share the guest holds.
func (f *file) Link(target ninep.File, name string) (err error) {
	defer guestErrno(&err)
	unlock, err := f.changing()
	if err != nil {
		return err
	}
	defer unlock()
	if err := checkName(name); err != nil {
		return err
	}
	t, tunlock, err := f.other(target)
	if err != nil {
		return err
	}
	defer tunlock()
	return unix.Linkat(f.fs.proc, fdName(t.fd), f.fd, name, unix.AT_SYMLINK_FOLLOW)
}

// RenameAt implements p9.File.
func (f *file) RenameAt(oldName string, newDir ninep.File, newName string) (err error) {
	defer guestErrno(&err)
	unlock, err := f.changing()
	if err != nil {
		return err
	}
	defer unlock()
	if err := checkName(oldName); err != nil {
		return err
	}
	if err := checkName(newName); err != nil {
		return err
	}
	d, dunlock, err := f.other(newDir)
	if err != nil {
		return err
	}
	defer dunlock()
	return unix.Renameat(f.fd, oldName, d.fd, newName)
}

// UnlinkAt implements p9.File; flags may hold AT_REMOVEDIR.
func (f *file) UnlinkAt(name string, flags uint32) (err error) {
	defer guestErrno(&err)
	unlock, err := f.changing()
	if err != nil {
		return err
	}
	defer unlock()
	if err := checkName(name); err != nil {
		return err
	}
	return unix.Unlinkat(f.fd, name, int(flags&unix.AT_REMOVEDIR))
}

// SetAttr implements p9.File: mode (without set-ID bits), owner, size and
// times, each applied to the file held.
func (f *file) SetAttr(valid ninep.SetAttrMask, attr ninep.SetAttr) (err error) {
	defer guestErrno(&err)
	if !(valid.Permissions || valid.UID || valid.GID || valid.Size || valid.ATime || valid.MTime) {
		return nil // only the change time, which the host keeps itself
	}
	unlock, err := f.changing()
	if err != nil {
		return err
	}
	defer unlock()
	if valid.Permissions {
		if err := f.fs.chmod(f.fd, uint32(attr.Permissions)); err != nil {
			return err
		}
	}
	if valid.UID || valid.GID {
		u, g := -1, -1
		if valid.UID && attr.UID.Ok() {
			u = int(attr.UID)
		}
		if valid.GID && attr.GID.Ok() {
			g = int(attr.GID)
		}
		if err := unix.Fchownat(f.fd, "", u, g, unix.AT_EMPTY_PATH); err != nil {
			return err
		}
	}
	if valid.Size {
		if err := f.truncate(int64(attr.Size)); err != nil {
			return err
		}
	}
	if valid.ATime || valid.MTime {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if valid.ATime {
			ts[0] = timespec(valid.ATimeNotSystemTime, attr.ATimeSeconds, attr.ATimeNanoSeconds)
		}
		if valid.MTime {
			ts[1] = timespec(valid.MTimeNotSystemTime, attr.MTimeSeconds, attr.MTimeNanoSeconds)
		}
		if err := unix.UtimesNanoAt(f.fs.proc, fdName(f.fd), ts, 0); err != nil {
			return err
		}
	}
	return nil
}

// timespec is a time to set: the given one, or now.
func timespec(given bool, sec, nsec uint64) unix.Timespec {
	if !given {
		return unix.Timespec{Nsec: unix.UTIME_NOW}
	}
	return unix.Timespec{Sec: int64(sec), Nsec: int64(nsec)}
}

// truncate sets the size of a regular file, through the descriptor the
// guest opened for writing when there is one.
func (f *file) truncate(size int64) error {
	switch {
	case size < 0:
		return unix.EINVAL
	case f.typ == unix.S_IFDIR:
		return unix.EISDIR
	case f.typ != unix.S_IFREG:
		return unix.EINVAL
	case f.io >= 0 && f.ioMode != unix.O_RDONLY:
		return unix.Ftruncate(f.io, size)
	}
	fd, err := f.fs.reopen(f.fd, unix.O_WRONLY)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Ftruncate(fd, size)
}
