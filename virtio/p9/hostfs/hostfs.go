// Package hostfs serves one host directory to a virtio-9p device (it is a
// p9.Backend), so that the guest reaches nothing outside that directory.
//
// # Confinement
//
// Every file the guest holds (every fid) is an O_PATH descriptor of the
// host file it names, never a path. A walk goes one name at a time from
// such a descriptor with openat2(O_PATH|O_NOFOLLOW, RESOLVE_BENEATH|
// RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS), and the names "", ".", ".."
// and any name with '/' or NUL are refused, so a walk cannot leave the
// directory: not by "..", not through a symbolic link (a walk to a link
// gives the link itself, and no walk goes on from it), not through a link
// the host swaps in while the guest walks. Every other name the guest
// gives (create, mkdir, link, rename, unlink) is likewise one name inside
// a directory it holds, used with the *at system calls that do not follow
// a final symbolic link.
//
// Only regular files and directories are opened for I/O, and only the
// very file the guest holds: the file's type is known from its descriptor
// and it is reopened through /proc/self/fd (with O_NONBLOCK), so a device
// node, FIFO or socket in the directory, the host's or the guest's, is
// never opened on the host (an open is refused with EPERM). Creating
// files always uses O_EXCL, so it never opens what exists already.
// Symbolic links the guest creates hold the target text it gave, which is
// never followed on the host; readlink returns it. Mknod makes regular
// files, FIFOs and sockets only: character and block devices are refused
// with EPERM. A hard link joins two files the guest holds, both inside
// the directory.
//
// Mode changes and times go through /proc/self/fd as well, so they apply
// to the file held and follow no link. The set-user-ID and set-group-ID
// bits are cleared from the mode of everything the guest creates and from
// every mode it sets, so a guest cannot leave a set-ID program on the host
// (the sticky bit is kept).
//
// # Read-only
//
// A read-only share refuses every change with EROFS before touching the
// host (create, mkdir, symlink, link, mknod, rename, unlink, setattr, and
// an open for writing or truncation) and opens files read-only.
//
// # Ownership
//
// When capsule runs as root, what the guest creates belongs to the uid it
// attached as (the n_uname of the Tattach its fid descends from; Linux
// attaches once per guest user) and to the gid it asks for, and chown
// sets what the guest asks: guest and host ids are the same numbers.
// Otherwise everything the guest creates belongs to capsule's user (and
// the group the host gives), and a chown the host refuses fails with
// EPERM. Either way the guest can do inside the directory what capsule's
// user can do there.
//
// # Limits
//
// The files of a share hold at most MaxFDs host descriptors (one for each
// file the guest holds, one more for each it opened; fewer when capsule's
// descriptor limit is low, which Open raises towards 2*MaxFDs where it
// may): a walk, attach or open beyond that fails with ENFILE, and a clunk
// gives them back. A guest mounting with cache=loose holds a file for
// each name in its dentry cache and an opened one for each inode it
// wrote, about three descriptors a file: some 20,000 files it has
// created or looked up at once. (A descriptor is a few hundred bytes of
// host kernel memory: 65536 of them are some 20 MiB.) Extended attributes are not
// supported (ENOTSUP). Locks (Tlock) always succeed and take no host
// lock, as QEMU's; they hold between the guest's own processes only. QIDs
// are inode numbers; files on another file system mounted inside the
// directory have their device mixed into the high bits.
//
// Reopening needs /proc: a share cannot be served where /proc is not
// mounted when it is opened.
package hostfs

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/hugelgupf/p9/linux"
	ninep "github.com/hugelgupf/p9/p9"
	"golang.org/x/sys/unix"
)

// MaxFDs bounds the host descriptors the files of one share hold.
const MaxFDs = 65536

// FS is one shared host directory.
type FS struct {
	dir      string
	root     int // O_PATH descriptor of the directory
	proc     int // O_PATH descriptor of /proc/self/fd
	readOnly bool
	chown    bool // capsule is root: owners are the guest's
	rootDev  uint64

	maxFDs atomic.Int64
	fds    atomic.Int64 // descriptors the files hold

	devMu sync.Mutex
	devs  map[uint64]uint64 // other file systems' devices: their QID prefix

	closeOnce sync.Once
}

// Open opens the directory dir for sharing; it must exist and be a
// directory.
func Open(dir string, readOnly bool) (*FS, error) {
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOTDIR) {
			return nil, fmt.Errorf("share %s: not a directory", dir)
		}
		return nil, fmt.Errorf("share %s: %w", dir, err)
	}
	proc, err := unix.Open("/proc/self/fd", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(root)
		return nil, fmt.Errorf("share %s: /proc/self/fd: %w (hostfs needs /proc)", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(root, &st); err != nil {
		unix.Close(root)
		unix.Close(proc)
		return nil, fmt.Errorf("share %s: %w", dir, err)
	}
	fs := &FS{dir: dir, root: root, proc: proc, readOnly: readOnly, chown: os.Geteuid() == 0,
		rootDev: st.Dev, devs: map[uint64]uint64{}}
	fs.maxFDs.Store(MaxFDs)
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil {
		rl = raiseFileLimit(rl)
		processMaxFDs.Store(int64(min(rl.Cur/2, 1<<30))) // leave capsule half of its descriptors
	}
	return fs, nil
}

// The descriptors every share of the process holds, and their bound (half
// of RLIMIT_NOFILE when the last share was opened): a VM's shares
// together leave capsule half of its descriptors.
var processFDs, processMaxFDs atomic.Int64

func init() { processMaxFDs.Store(MaxFDs) }

// raiseFileLimit raises the process's descriptor limit (rl) towards
// 2*MaxFDs, so that a share can hold MaxFDs: the soft limit up to the hard
// one, and the hard one as well where the process may (root's may be as
// low as Linux's 4096 for init and its children). It returns the limit in
// force.
func raiseFileLimit(rl unix.Rlimit) unix.Rlimit {
	const want = 2 * MaxFDs
	if rl.Cur >= want {
		return rl
	}
	if rl.Max < want {
		if unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: want, Max: want}) == nil {
			return unix.Rlimit{Cur: want, Max: want}
		}
	}
	raised := unix.Rlimit{Cur: min(want, rl.Max), Max: rl.Max}
	if unix.Setrlimit(unix.RLIMIT_NOFILE, &raised) == nil {
		return raised
	}
	return rl
}

// Close closes the directory; closing it again does nothing. The files
// the guest holds must be closed (the device reset) first.
func (fs *FS) Close() error {
	var err error
	fs.closeOnce.Do(func() {
		unix.Close(fs.proc)
		err = unix.Close(fs.root)
	})
	return err
}

// Dir is the shared directory.
func (fs *FS) Dir() string { return fs.dir }

// ReadOnly reports whether the share refuses changes.
func (fs *FS) ReadOnly() bool { return fs.readOnly }

// OpenFDs is the number of host descriptors the guest's files hold.
func (fs *FS) OpenFDs() int { return int(fs.fds.Load()) }

// SetMaxFDs changes the bound on the descriptors the files hold (MaxFDs
// by default).
func (fs *FS) SetMaxFDs(n int) { fs.maxFDs.Store(int64(n)) }

// acquire counts n more descriptors, or fails with ENFILE beyond the
// bound.
func (fs *FS) acquire(n int64) error {
	if fs.fds.Add(n) > fs.maxFDs.Load() {
		fs.fds.Add(-n)
		return unix.ENFILE
	}
	if processFDs.Add(n) > processMaxFDs.Load() {
		processFDs.Add(-n)
		fs.fds.Add(-n)
		return unix.ENFILE
	}
	return nil
}

func (fs *FS) release(n int64) {
	fs.fds.Add(-n)
	processFDs.Add(-n)
}

// Attach implements p9.Backend: the root of the share, for user uid.
func (fs *FS) Attach(uid ninep.UID) (_ ninep.File, err error) {
	defer guestErrno(&err)
	if err := fs.acquire(1); err != nil {
		return nil, err
	}
	fd, err := unix.FcntlInt(uintptr(fs.root), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		fs.release(1)
		return nil, err
	}
	return &file{fs: fs, uid: uid, fd: fd, io: -1, typ: unix.S_IFDIR}, nil
}

// resolve are the openat2 resolve flags of every walk.
const resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// checkName refuses a name that is not one entry of a directory.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." {
		return unix.EINVAL
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '/' || name[i] == 0 {
			return unix.EINVAL
		}
	}
	return nil
}

// walkOne opens name in directory dirfd as an O_PATH descriptor of what
// is there, a symbolic link itself included.
func walkOne(dirfd int, name string, extra uint64) (int, error) {
	if err := checkName(name); err != nil {
		return -1, err
	}
	for {
		fd, err := unix.Openat2(dirfd, name, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC | extra,
			Resolve: resolve,
		})
		if err == unix.EINTR || err == unix.EAGAIN {
			continue // EAGAIN: a rename raced the lookup
		}
		return fd, err
	}
}

// reopen opens the file of O_PATH descriptor fd, itself, with flags.
// Call it only for a regular file or a directory.
func (fs *FS) reopen(fd int, flags int) (int, error) {
	for {
		nfd, err := unix.Openat(fs.proc, strconv.Itoa(fd), flags|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
		if err == unix.EINTR {
			continue
		}
		return nfd, err
	}
}

// chmod sets the mode of the file of descriptor fd (which it does not
// follow), without the set-ID bits.
func (fs *FS) chmod(fd int, mode uint32) error {
	return unix.Fchmodat(fs.proc, strconv.Itoa(fd), mode&safeMode, 0)
}

// safeMode are the mode bits a guest may set: permissions and sticky, no
// set-user-ID or set-group-ID.
const safeMode = 0o1777

// qid is the QID of a file with status st.
func (fs *FS) qid(st *unix.Stat_t) ninep.QID {
	return ninep.QID{Type: ninep.FileMode(st.Mode).QIDType(), Path: fs.qidPath(st.Dev, st.Ino)}
}

// qidPath is the inode number, with the device mixed into the high bits
// for files of other file systems than the share's.
func (fs *FS) qidPath(dev, ino uint64) uint64 {
	if dev == fs.rootDev {
		return ino
	}
	fs.devMu.Lock()
	defer fs.devMu.Unlock()
	n, ok := fs.devs[dev]
	if !ok {
		n = uint64(len(fs.devs) + 1)
		fs.devs[dev] = n
	}
	return ino ^ n<<48
}

// guestErrno turns a host errno into the p9 package's Errno, so that the
// guest gets that very number (the server would otherwise turn EPERM into
// EACCES and ENOTEMPTY into EEXIST, as os does).
func guestErrno(err *error) {
	var e unix.Errno
	if *err != nil && errors.As(*err, &e) {
		*err = linux.Errno(e)
	}
}
