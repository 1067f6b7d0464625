package hostfs

import (
	"strconv"
	"sync"

	"github.com/hugelgupf/p9/linux"
	ninep "github.com/hugelgupf/p9/p9"
	"golang.org/x/sys/unix"
)

// file is one host file the guest holds. Its operations hold mu for
// reading and Close holds it for writing, so a descriptor is never used
// after it is closed (when its number may belong to something else).
type file struct {
	fs  *FS
	uid ninep.UID // the user whose attach it descends from

	mu     sync.RWMutex
	fd     int    // O_PATH; -1 once closed
	typ    uint32 // S_IFMT of the file
	io     int    // opened for I/O (Open, Create), or -1
	ioMode uint32 // O_ACCMODE of io

	dirMu sync.Mutex // readdir: io's position
}

var _ ninep.File = (*file)(nil)

// use read-locks f and checks that it is open; call the returned unlock.
func (f *file) use() (unlock func(), err error) {
	f.mu.RLock()
	if f.fd < 0 {
		f.mu.RUnlock()
		return nil, unix.EBADF
	}
	return f.mu.RUnlock, nil
}

// newFile wraps O_PATH descriptor fd (already counted) of a file with
// status st.
func (f *file) newFile(fd int, st *unix.Stat_t) *file {
	return &file{fs: f.fs, uid: f.uid, fd: fd, io: -1, typ: st.Mode & unix.S_IFMT}
}

// Close implements p9.File.
func (f *file) Close() (err error) {
	defer guestErrno(&err)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		return nil
	}
	unix.Close(f.fd)
	n := int64(1)
	if f.io >= 0 {
		unix.Close(f.io)
		n++
	}
	f.fd, f.io = -1, -1
	f.fs.release(n)
	return nil
}

// walk walks names from f, returning their QIDs and an O_PATH descriptor
// (counted) of the last with its status.
func (f *file) walk(names []string) ([]ninep.QID, int, *unix.Stat_t, error) {
	if err := f.fs.acquire(1); err != nil {
		return nil, -1, nil, err
	}
	var st unix.Stat_t
	if len(names) == 0 {
		fd, err := unix.FcntlInt(uintptr(f.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err == nil {
			if err = unix.Fstat(fd, &st); err != nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			f.fs.release(1)
			return nil, -1, nil, err
		}
		return nil, fd, &st, nil
	}
	qids := make([]ninep.QID, 0, len(names))
	cur := f.fd
	for _, name := range names {
		fd, err := walkOne(cur, name, 0)
		if cur != f.fd {
			unix.Close(cur)
		}
		if err == nil {
			if err = unix.Fstat(fd, &st); err != nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			f.fs.release(1)
			return nil, -1, nil, err
		}
		qids = append(qids, f.fs.qid(&st))
		cur = fd
	}
	return qids, cur, &st, nil
}

// Walk implements p9.File.
func (f *file) Walk(names []string) (_ []ninep.QID, _ ninep.File, err error) {
	defer guestErrno(&err)
	unlock, err := f.use()
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	qids, fd, st, err := f.walk(names)
	if err != nil {
		return nil, nil, err
	}
	return qids, f.newFile(fd, st), nil
}

// WalkGetAttr implements p9.File.
func (f *file) WalkGetAttr(names []string) (_ []ninep.QID, _ ninep.File, _ ninep.AttrMask, _ ninep.Attr, err error) {
	defer guestErrno(&err)
	unlock, err := f.use()
	if err != nil {
		return nil, nil, ninep.AttrMask{}, ninep.Attr{}, err
	}
	defer unlock()
	qids, fd, st, err := f.walk(names)
	if err != nil {
		return nil, nil, ninep.AttrMask{}, ninep.Attr{}, err
	}
	return qids, f.newFile(fd, st), validAttrs, attrOf(st), nil
}

// validAttrs are the attributes GetAttr gives.
var validAttrs = ninep.AttrMask{Mode: true, NLink: true, UID: true, GID: true, RDev: true,
	ATime: true, MTime: true, CTime: true, INo: true, Size: true, Blocks: true}

func attrOf(st *unix.Stat_t) ninep.Attr {
	return ninep.Attr{
		Mode: ninep.FileMode(st.Mode), UID: ninep.UID(st.Uid), GID: ninep.GID(st.Gid),
		NLink: ninep.NLink(st.Nlink), RDev: ninep.Dev(st.Rdev), Size: uint64(st.Size),
		BlockSize: uint64(st.Blksize), Blocks: uint64(st.Blocks),
		ATimeSeconds: uint64(st.Atim.Sec), ATimeNanoSeconds: uint64(st.Atim.Nsec),
		MTimeSeconds: uint64(st.Mtim.Sec), MTimeNanoSeconds: uint64(st.Mtim.Nsec),
		CTimeSeconds: uint64(st.Ctim.Sec), CTimeNanoSeconds: uint64(st.Ctim.Nsec),
	}
}

// GetAttr implements p9.File.
func (f *file) GetAttr(ninep.AttrMask) (_ ninep.QID, _ ninep.AttrMask, _ ninep.Attr, err error) {
	defer guestErrno(&err)
	unlock, err := f.use()
	if err != nil {
		return ninep.QID{}, ninep.AttrMask{}, ninep.Attr{}, err
	}
	defer unlock()
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return ninep.QID{}, ninep.AttrMask{}, ninep.Attr{}, err
	}
	return f.fs.qid(&st), validAttrs, attrOf(&st), nil
}

// StatFS implements p9.File.
func (f *file) StatFS() (_ ninep.FSStat, err error) {
	defer guestErrno(&err)
	unlock, err := f.use()
	if err != nil {
		return ninep.FSStat{}, err
	}
	defer unlock()
	var s unix.Statfs_t
	if err := unix.Fstatfs(f.fd, &s); err != nil {
		return ninep.FSStat{}, err
	}
	return ninep.FSStat{
		Type: uint32(s.Type), BlockSize: uint32(s.Bsize), Blocks: s.Blocks, BlocksFree: s.Bfree,
		BlocksAvailable: s.Bavail, Files: s.Files, FilesFree: s.Ffree,
		FSID: uint64(uint32(s.Fsid.Val[0])) | uint64(uint32(s.Fsid.Val[1]))<<32, NameLength: uint32(s.Namelen),
	}, nil
}

// Open implements p9.File: a regular file or directory only, reopened
// through /proc/self/fd.
func (f *file) Open(mode ninep.OpenFlags) (_ ninep.QID, _ uint32, err error) {
	defer guestErrno(&err)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		return ninep.QID{}, 0, unix.EBADF
	}
	if f.io >= 0 {
		return ninep.QID{}, 0, unix.EINVAL
	}
	flags := openFlags(uint32(mode))
	acc := uint32(flags & unix.O_ACCMODE)
	switch {
	case f.typ == unix.S_IFDIR && (acc != unix.O_RDONLY || flags&unix.O_TRUNC != 0):
		return ninep.QID{}, 0, unix.EISDIR
	case f.typ != unix.S_IFREG && f.typ != unix.S_IFDIR:
		return ninep.QID{}, 0, unix.EPERM // never open a device, FIFO or socket on the host
	case f.fs.readOnly && (acc != unix.O_RDONLY || flags&unix.O_TRUNC != 0):
		return ninep.QID{}, 0, unix.EROFS
	}
	if f.typ == unix.S_IFDIR {
		flags |= unix.O_DIRECTORY
	}
	if err := f.fs.acquire(1); err != nil {
		return ninep.QID{}, 0, err
	}
	io, err := f.fs.reopen(f.fd, flags)
	if err != nil {
		f.fs.release(1)
		return ninep.QID{}, 0, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(io, &st); err != nil {
		unix.Close(io)
		f.fs.release(1)
		return ninep.QID{}, 0, err
	}
	f.io, f.ioMode = io, acc
	return f.fs.qid(&st), 0, nil
}

// Linux open flags as 9P2000.L carries them (they are x86's own).
const (
	dotlTrunc  = 0o1000
	dotlAppend = 0o2000
	dotlDsync  = 0o10000
	dotlSync   = 0o4000000
)

// openFlags turns the guest's open flags into the host's: the access mode
// (no access counts as read-only), truncation, appending and the sync
// flags. Others (creation, O_DIRECT, O_NOATIME, ...) are dropped.
func openFlags(m uint32) int {
	flags := int(m & unix.O_ACCMODE)
	if flags == unix.O_ACCMODE {
		flags = unix.O_RDONLY
	}
	if m&dotlTrunc != 0 {
		flags |= unix.O_TRUNC
	}
	if m&dotlAppend != 0 {
		flags |= unix.O_APPEND
	}
	if m&dotlDsync != 0 {
		flags |= unix.O_DSYNC
	}
	if m&dotlSync != 0 {
		flags |= unix.O_SYNC
	}
	return flags
}

// ReadAt implements p9.File.
func (f *file) ReadAt(p []byte, off int64) (_ int, err error) {
	defer guestErrno(&err)
	unlock, err := f.use()
	if err != nil {
		return 0, err
	}
	defer unlock()
	if f.io < 0 {
		return 0, unix.EBADF
	}
	for {
		n, err := unix.Pread(f.io, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		return n, nil
	}
}

// WriteAt implements p9.File.
func (f *file) WriteAt(p []byte, off int64) (_ int, err error) {
	defer guestErrno(&err)
	unlock, err := f.use()
	if err != nil {
		return 0, err
	}
	defer unlock()
	switch {
	case f.fs.readOnly:
		return 0, unix.EROFS
	case f.io < 0:
		return 0, unix.EBADF
	}
	done := 0
	for done < len(p) {
		n, err := unix.Pwrite(f.io, p[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if done > 0 {
				return done, nil
			}
			return 0, err
		}
		if n == 0 {
			break
		}
		done += n
	}
	return done, nil
}

// FSync implements p9.File.
func (f *file) FSync() (err error) {
	defer guestErrno(&err)
	unlock, err := f.use()
	if err != nil {
		return err
	}
	defer unlock()
	if f.io < 0 {
		return unix.EBADF
	}
	return unix.Fsync(f.io)
}

// Lock implements p9.File: it always succeeds and takes no host lock.
func (f *file) Lock(int, ninep.LockType, ninep.LockFlags, uint64, uint64, string) (ninep.LockStatus, error) {
	return ninep.LockStatusOK, nil
}

// Readlink implements p9.File.
func (f *file) Readlink() (_ string, err error) {
	defer guestErrno(&err)
	unlock, err := f.use()
	if err != nil {
		return "", err
	}
	defer unlock()
	if f.typ != unix.S_IFLNK {
		return "", unix.EINVAL
	}
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(f.fd, "", buf)
	if err != nil {
		return "", err
	}
	if n == len(buf) {
		return "", unix.ENAMETOOLONG
	}
	return string(buf[:n]), nil
}

// Extended attributes are not supported (the device answers them itself).

func (f *file) SetXattr(string, []byte, ninep.XattrFlags) error { return linux.EOPNOTSUPP }
func (f *file) GetXattr(string) ([]byte, error)                 { return nil, linux.EOPNOTSUPP }
func (f *file) ListXattrs() ([]string, error)                   { return nil, linux.EOPNOTSUPP }
func (f *file) RemoveXattr(string) error                        { return linux.EOPNOTSUPP }

// Renamed implements p9.File: files are descriptors, not paths.
func (f *file) Renamed(ninep.File, string) {}

// Rename implements p9.File; the server uses RenameAt.
func (f *file) Rename(ninep.File, string) error { return linux.ENOSYS }

// fdName is the name of descriptor fd in /proc/self/fd.
func fdName(fd int) string { return strconv.Itoa(fd) }
