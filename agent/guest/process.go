package guest

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/capsule-vm/capsule/agent"
	"github.com/capsule-vm/capsule/agent/agentpb"
)

// process is a process the agent started.
type process struct {
	id   string
	pid  int
	osp  *os.Process
	main bool     // shutdown_on_exit
	tty  *os.File // the pty's master, or nil
	// stdinW is the write end of the stdin pipe, when the host attaches
	// stdin and there is no tty.
	stdinW    *os.File
	wantStdin bool
	outs      []*output // stdout, and stderr without a tty

	// Under the server's mu.
	stdinAttached bool
	stdinConn     net.Conn // the stdin stream, while the process runs
	stdinEnded    bool     // the process has exited: no stdin is taken

	exited chan struct{}   // closed once reaped
	status unix.WaitStatus // once exited
	done   chan struct{}   // closed once exited and its output written
}

// output is a process's stdout or stderr: a pipe's read end or the pty's
// master, copied to its stream connection.
type output struct {
	kind     agent.StreamKind
	r        *os.File
	attach   chan net.Conn // the stream connection, once
	attached bool          // under the server's mu
	n        uint64        // bytes written to the stream, once done
	done     chan struct{}
}

// defaultPath is the PATH a program is looked up in when env has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// lookPath finds the executable of name as execvp would, in the PATH of
// env, relative names against cwd; the error is a NOT_FOUND or
// PERMISSION_DENIED status.
func lookPath(name string, env []string, cwd string) (string, error) {
	if strings.Contains(name, "/") {
		if !filepath.IsAbs(name) {
			name = filepath.Join(cwd, name)
		}
		if err := executable(name); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return "", status.Errorf(codes.NotFound, "%s: no such file", name)
			}
			return "", status.Errorf(codes.PermissionDenied, "%s: %v", name, err)
		}
		return name, nil
	}
	path := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	denied := false
	for dir := range strings.SplitSeq(path, ":") {
		if dir == "" {
			dir = "."
		}
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(cwd, dir)
		}
		p := filepath.Join(dir, name)
		err := executable(p)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			denied = true
		}
	}
	if denied {
		return "", status.Errorf(codes.PermissionDenied, "%s: found in $PATH but not executable", name)
	}
	return "", status.Errorf(codes.NotFound, "%s: executable file not found in $PATH", name)
}

// executable checks that path is a file someone may execute.
func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return errors.New("is a directory")
	}
	if fi.Mode()&0o111 == 0 {
		return errors.New("not executable")
	}
	return nil
}

// startErr is the status for a failed start.
func startErr(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return status.Errorf(codes.NotFound, "%s: %v", path, err)
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.ENOEXEC):
		return status.Errorf(codes.PermissionDenied, "%s: %v", path, err)
	}
	return status.Errorf(codes.Internal, "%s: %v", path, err)
}

// newProcess checks a request and starts its process, registered with
// the reaper.
func (s *Server) newProcess(req *agentpb.StartProcessRequest) (*process, error) {
	if err := agent.CheckID(req.Id); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if len(req.Args) == 0 {
		return nil, status.Error(codes.InvalidArgument, "no args")
	}
	if req.Rows > 0xffff || req.Cols > 0xffff {
		return nil, status.Errorf(codes.InvalidArgument, "window size %dx%d out of range", req.Rows, req.Cols)
	}
	var limits []rlimit
	for _, l := range req.Rlimits {
		res, ok := rlimits[l.Resource]
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "unknown resource limit %q", l.Resource)
		}
		if l.Soft > l.Hard {
			return nil, status.Errorf(codes.InvalidArgument, "%s: soft limit %d above hard limit %d", l.Resource, l.Soft, l.Hard)
		}
		limits = append(limits, rlimit{res, l.Soft, l.Hard})
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if !filepath.IsAbs(cwd) {
		return nil, status.Errorf(codes.InvalidArgument, "working directory %q is not absolute", cwd)
	}
	if fi, err := os.Stat(cwd); err != nil || !fi.IsDir() {
		return nil, status.Errorf(codes.InvalidArgument, "working directory %s: not a directory", cwd)
	}
	path, err := lookPath(req.Args[0], req.Env, cwd)
	if err != nil {
		return nil, err
	}

	p := &process{
		id:        req.Id,
		main:      req.ShutdownOnExit,
		wantStdin: req.Stdin,
		exited:    make(chan struct{}),
		done:      make(chan struct{}),
	}
	var files []*os.File // the child's 0, 1, 2
	var childEnds []*os.File
	defer func() {
		for _, f := range childEnds {
			f.Close()
		}
	}()
	sys := &syscall.SysProcAttr{Setsid: true}
	if req.Terminal {
		master, slave, err := openPty()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "pty: %v", err)
		}
		childEnds = append(childEnds, slave)
		if req.Rows > 0 && req.Cols > 0 {
			if err := setWinsize(master, uint16(req.Rows), uint16(req.Cols)); err != nil {
				master.Close()
				return nil, status.Errorf(codes.Internal, "pty: %v", err)
			}
		}
		p.tty = master
		p.outs = []*output{newOutput(agent.Stdout, master)}
		files = []*os.File{slave, slave, slave}
		sys.Setctty, sys.Ctty = true, 0
	} else {
		var fds [6]*os.File
		for i := 0; i < 6; i += 2 {
			r, w, err := os.Pipe()
			if err != nil {
				for _, f := range fds[:i] {
					f.Close()
				}
				return nil, status.Errorf(codes.Internal, "pipe: %v", err)
			}
			fds[i], fds[i+1] = r, w
		}
		childEnds = append(childEnds, fds[0], fds[3], fds[5])
		if req.Stdin {
			p.stdinW = fds[1]
		} else {
			fds[1].Close() // end of file at once
		}
		p.outs = []*output{newOutput(agent.Stdout, fds[2]), newOutput(agent.Stderr, fds[4])}
		files = []*os.File{fds[0], fds[3], fds[5]}
	}
	failed := true
	defer func() {
		if failed {
			p.closeParentEnds()
		}
	}()

	argv0, argv, env := path, req.Args, req.Env
	if len(limits) > 0 {
		argv0 = "/proc/self/exe"
		argv = append([]string{shimArg0, path}, req.Args...)
		env = append(env[:len(env):len(env)], shimEnv+"="+shimSpec(req.Uid, req.Gid, req.Groups, limits))
	} else if os.Geteuid() == 0 || int(req.Uid) != os.Geteuid() || int(req.Gid) != os.Getegid() || len(req.Groups) > 0 {
		groups := make([]uint32, len(req.Groups))
		copy(groups, req.Groups)
		sys.Credential = &syscall.Credential{Uid: req.Uid, Gid: req.Gid, Groups: groups}
	}
	attr := &os.ProcAttr{Dir: cwd, Env: env, Files: files, Sys: sys}
	exitc, err := s.reaper.start(func() (int, error) {
		osp, err := os.StartProcess(argv0, argv, attr)
		if err != nil {
			return 0, err
		}
		p.osp, p.pid = osp, osp.Pid
		return osp.Pid, nil
	})
	if err != nil {
		return nil, startErr(path, err)
	}
	failed = false
	for _, o := range p.outs {
		go o.copy()
	}
	go s.await(p, exitc)
	return p, nil
}

// closeParentEnds closes the agent's ends of the process's stdio.
func (p *process) closeParentEnds() {
	for _, o := range p.outs {
		o.r.Close()
	}
	if p.stdinW != nil {
		p.stdinW.Close()
	}
}

func newOutput(kind agent.StreamKind, r *os.File) *output {
	return &output{kind: kind, r: r, attach: make(chan net.Conn, 1), done: make(chan struct{})}
}

// copy waits for the stream connection, then copies the output to it
// until end of file (EIO from a pty's master, once every holder of the
// slave has closed it) and closes it. Until the host attaches, the
// output waits in the pipe or pty. A connection the host closed early is
// dropped and the rest of the output read and discarded, so that the
// process never blocks on it.
func (o *output) copy() {
	defer close(o.done)
	conn := <-o.attach
	buf := make([]byte, 64<<10)
	for {
		n, err := o.r.Read(buf)
		if n > 0 && conn != nil {
			if _, werr := conn.Write(buf[:n]); werr != nil {
				conn.Close()
				conn = nil
			} else {
				o.n += uint64(n)
			}
		}
		if err != nil {
			break
		}
	}
	o.r.Close() // a pty's master too: its slave is gone
	if conn != nil {
		conn.Close()
	}
}

// await waits for the process's exit, ends its stdin, and marks it done
// once its output has been written.
func (s *Server) await(p *process, exitc <-chan unix.WaitStatus) {
	p.status = <-exitc
	close(p.exited)
	s.mu.Lock()
	conn := p.stdinConn
	p.stdinConn, p.stdinEnded = nil, true
	unattached := p.stdinW != nil && !p.stdinAttached
	s.mu.Unlock()
	if conn != nil {
		conn.Close() // stops the stdin copy, which closes stdinW
	}
	if unattached {
		p.stdinW.Close()
	}
	if p.main {
		// As when a container's init exits: what the program left
		// running in its session goes too, so that no background child
		// holds its output open and keeps the host waiting.
		unix.Kill(-p.pid, syscall.SIGKILL)
		s.mainExit()
	}
	for _, o := range p.outs {
		<-o.done
	}
	p.osp.Release()
	close(p.done)
}

// copyStdin copies the stdin stream to the process until its end (or
// the process's exit), then gives the process its end of file: the
// pipe's write end closed, or with a tty the terminal's end-of-file
// character when it is in canonical mode.
func (p *process) copyStdin(conn net.Conn) {
	var dst *os.File
	if p.tty != nil {
		dst = p.tty
	} else {
		dst = p.stdinW
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	conn.Close()
	if p.tty != nil {
		sendEOF(p.tty)
	} else {
		p.stdinW.Close()
	}
}

// openPty opens a pty: its master, and its slave through the master
// (TIOCGPTPEER), so no path under /dev/pts is looked up.
func openPty() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	var sfd int
	err = control(m, func(fd int) error {
		if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
			return fmt.Errorf("unlockpt: %w", err)
		}
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCGPTPEER, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
		if errno != 0 {
			return fmt.Errorf("TIOCGPTPEER: %w", errno)
		}
		sfd = int(r)
		return nil
	})
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, os.NewFile(uintptr(sfd), "pty"), nil
}

// control runs fn on f's descriptor (without making f blocking, as Fd
// would).
func control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func setWinsize(master *os.File, rows, cols uint16) error {
	return control(master, func(fd int) error {
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
}

// sendEOF writes the terminal's end-of-file character when it reads in
// canonical mode; in raw mode a terminal has no end of file.
func sendEOF(master *os.File) {
	var eof byte
	err := control(master, func(fd int) error {
		t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
		if err != nil {
			return err
		}
		if t.Lflag&unix.ICANON == 0 {
			return errors.New("raw mode")
		}
		eof = t.Cc[unix.VEOF]
		return nil
	})
	if err == nil {
		master.Write([]byte{eof})
	}
}
