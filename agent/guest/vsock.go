package guest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Go's net package knows nothing of AF_VSOCK (net.FileListener and
// net.FileConn refuse it), so the agent wraps the socket in an os.File,
// which the runtime's poller drives: reads, writes and accepts block
// the goroutine, not a thread, and deadlines work.

// vsockAddr is a vsock address.
type vsockAddr struct{ cid, port uint32 }

func (a vsockAddr) Network() string { return "vsock" }
func (a vsockAddr) String() string  { return fmt.Sprintf("%d:%d", a.cid, a.port) }

// vsockListener accepts vsock connections on a port.
type vsockListener struct {
	f    *os.File
	rc   syscall.RawConn
	addr vsockAddr
}

// listenVsock listens on port for connections from any CID (the host).
func listenVsock(port uint32) (net.Listener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock port %d: %w", port, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock port %d: bind: %w", port, err)
	}
	if err := unix.Listen(fd, 64); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock port %d: listen: %w", port, err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("vsock:%d", port))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vsock port %d: %w", port, err)
	}
	return &vsockListener{f: f, rc: rc, addr: vsockAddr{unix.VMADDR_CID_ANY, port}}, nil
}

func (l *vsockListener) Accept() (net.Conn, error) {
	for {
		c, err := l.accept()
		if err != nil {
			return nil, err
		}
		if c.remote.cid == unix.VMADDR_CID_HOST {
			return c, nil
		}
		// Only the host speaks to the agent: a peer inside the guest
		// (a kernel with vsock loopback) would otherwise run processes
		// as any user.
		c.Close()
	}
}

func (l *vsockListener) accept() (*vsockConn, error) {
	var (
		nfd  int
		sa   unix.Sockaddr
		aerr error
	)
	err := l.rc.Read(func(fd uintptr) bool {
		nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		return aerr != unix.EAGAIN
	})
	if errors.Is(err, os.ErrClosed) {
		return nil, net.ErrClosed
	}
	if err == nil {
		err = aerr
	}
	if err != nil {
		return nil, fmt.Errorf("vsock port %d: accept: %w", l.addr.port, err)
	}
	c := &vsockConn{File: os.NewFile(uintptr(nfd), "vsock"), local: l.addr}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		c.remote = vsockAddr{vm.CID, vm.Port}
	}
	return c, nil
}

func (l *vsockListener) Close() error   { return l.f.Close() }
func (l *vsockListener) Addr() net.Addr { return l.addr }

// vsockConn is a connected vsock socket.
type vsockConn struct {
	*os.File
	local, remote vsockAddr
}

func (c *vsockConn) LocalAddr() net.Addr  { return c.local }
func (c *vsockConn) RemoteAddr() net.Addr { return c.remote }
