package vsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// SocketMode is the mode of the socket capsule listens on: only its own
// user (and root) may connect.
const SocketMode = 0o600

// cidLockName is the abstract Unix socket name that holds the lock of a
// CID. Abstract names belong to the network namespace, need no file (so
// nothing on disk can redirect them) and vanish when the socket closes,
// even when the process dies.
func cidLockName(cid uint64) string {
	return "@capsule-vsock-cid-" + strconv.FormatUint(cid, 10)
}

// lockCID takes the lock of cid in this network namespace: a socket
// bound to cidLockName, held until the returned file descriptor is
// closed.
func lockCID(cid uint64) (int, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("vsock CID %d: lock: %w", cid, err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: cidLockName(cid)}); err != nil {
		syscall.Close(fd)
		if errors.Is(err, syscall.EADDRINUSE) {
			return -1, fmt.Errorf("vsock CID %d is in use by another capsule VM on this host", cid)
		}
		return -1, fmt.Errorf("vsock CID %d: lock: %w", cid, err)
	}
	return fd, nil
}

// ownerOf returns the owner of a file.
func ownerOf(fi os.FileInfo) (uid, gid uint32) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Uid, st.Gid
	}
	return 0, 0
}

// checkDir resolves the directory of the socket path to its real path
// (Debian's /var/run is a link to /run, for example) and refuses it if
// another user could use it to take the socket's name: it belongs to
// another user (other than root), or others can write it and it is not
// sticky. It returns path in that directory: capsule uses that name from
// then on, so a link in path changed after the check redirects nothing.
// In a sticky shared directory such as /tmp, clearPath then touches only
// our own sockets.
func checkDir(path string) (string, error) {
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return "", fmt.Errorf("vsock socket %s: %w", path, err)
	}
	fi, err := os.Lstat(dir) // resolved: no link left to follow
	if err != nil {
		return "", fmt.Errorf("vsock socket %s: %w", path, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("vsock socket %s: %s is not a directory", path, dir)
	}
	uid, gid := ownerOf(fi)
	if int(uid) != os.Geteuid() && uid != 0 {
		return "", fmt.Errorf("vsock socket %s: directory %s belongs to another user (uid %d); use a directory of your own", path, dir, uid)
	}
	mode := fi.Mode()
	others := mode&0o002 != 0 || (mode&0o020 != 0 && int(gid) != os.Getegid())
	if others && mode&os.ModeSticky == 0 {
		return "", fmt.Errorf("vsock socket %s: directory %s is writable by other users and not sticky; use a directory only you can write", path, dir)
	}
	return filepath.Join(dir, filepath.Base(path)), nil
}

// clearPath makes way for a new socket at path: nothing there, or a stale
// socket of ours (nobody listens on it), which is removed. Anything else
// is an error and left alone.
func clearPath(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("vsock socket %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("vsock socket %s: a file that is not a socket is in the way", path)
	}
	if uid, _ := ownerOf(fi); int(uid) != os.Geteuid() {
		return fmt.Errorf("vsock socket %s belongs to another user (uid %d); not replaced", path, uid)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("vsock socket %s is in use: another process listens on it", path)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("vsock socket %s: %w", path, unwrapOp(err))
	}
	// Stale: left by a process of ours that died.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("vsock socket %s: %w", path, err)
	}
	return nil
}

// listen creates the device's listening socket at path with SocketMode,
// whatever the umask: the socket's mode is set before bind (Linux gives
// the new file that mode, less the umask, so it is never wider) and again
// after. It returns the listener, the identity of the file made, so that
// Close removes that file and no other, and the socket's path in its
// directory's real path (checkDir), which the device uses from then on.
func listen(path string) (*net.UnixListener, fileID, string, error) {
	path, err := checkDir(path)
	if err != nil {
		return nil, fileID{}, "", err
	}
	if err := clearPath(path); err != nil {
		return nil, fileID{}, "", err
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fileID{}, "", fmt.Errorf("vsock socket %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close() // the listener holds its own descriptor
	if err := syscall.Fchmod(fd, SocketMode); err != nil {
		return nil, fileID{}, "", fmt.Errorf("vsock socket %s: %w", path, err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fileID{}, "", fmt.Errorf("vsock socket %s: another file took its place", path)
		}
		return nil, fileID{}, "", fmt.Errorf("vsock socket %s: %w", path, err)
	}
	id, err := idOf(path)
	if err == nil {
		err = os.Chmod(path, SocketMode)
	}
	if err == nil {
		err = syscall.Listen(fd, 128)
	}
	var ln net.Listener
	if err == nil {
		ln, err = net.FileListener(f)
	}
	if err != nil {
		id.remove(path)
		return nil, fileID{}, "", fmt.Errorf("vsock socket %s: %w", path, err)
	}
	return ln.(*net.UnixListener), id, path, nil
}

// fileID identifies a file by device and inode.
type fileID struct{ dev, ino uint64 }

func idOf(path string) (fileID, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}

// remove removes path if it is still the file id names.
func (id fileID) remove(path string) {
	if now, err := idOf(path); err == nil && now == id && id != (fileID{}) {
		os.Remove(path)
	}
}

// trustedSocket checks a host socket a guest connection is about to
// reach: a socket file that belongs to this user or root.
func trustedSocket(name string) error {
	fi, err := os.Lstat(name)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s is not a socket", name)
	}
	if uid, _ := ownerOf(fi); int(uid) != os.Geteuid() && uid != 0 {
		return fmt.Errorf("socket %s belongs to another user (uid %d)", name, uid)
	}
	return nil
}

// trustedPeer checks that the process listening on a connected socket
// runs as this user or root (SO_PEERCRED), which no file swap can fake.
func trustedPeer(s *net.UnixConn) error {
	rc, err := s.SyscallConn()
	if err != nil {
		return err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return cerr
	}
	if int(cred.Uid) != os.Geteuid() && cred.Uid != 0 {
		return fmt.Errorf("listener runs as another user (uid %d)", cred.Uid)
	}
	return nil
}
