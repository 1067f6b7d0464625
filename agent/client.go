package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"unicode"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/capsule-vm/capsule/agent/agentpb"
	"github.com/capsule-vm/capsule/internal/backoff"
)

// Client is a connection to the agent. Its methods are safe for
// concurrent use.
type Client struct {
	dial Dialer
	tc   *ttrpc.Client
	svc  agentpb.AgentService
	lost chan struct{} // closed when the control connection ends
	// Agent is the agent's description of itself (name and build).
	Agent string
}

// version is what Dial says it speaks; tests change it.
var version uint32 = Version

// Dial connects to the agent's ControlPort through dial and checks that
// it speaks this Version (ErrVersion otherwise). Until ctx is done it
// retries connections refused because the agent is not listening yet
// (the guest is still booting).
func Dial(ctx context.Context, dial Dialer) (*Client, error) {
	var delay backoff.Delay
	var conn net.Conn
	for {
		var err error
		conn, err = dial(ctx, ControlPort)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrRefused) {
			return nil, fmt.Errorf("guest agent: %w", err)
		}
		if !delay.Wait(ctx.Done()) {
			return nil, fmt.Errorf("guest agent: %w (%w)", ctx.Err(), err)
		}
	}
	c := &Client{dial: dial, lost: make(chan struct{})}
	c.tc = ttrpc.NewClient(conn, ttrpc.WithOnClose(func() { close(c.lost) }))
	c.svc = agentpb.NewAgentClient(c.tc)
	resp, err := c.svc.Hello(ctx, &agentpb.HelloRequest{Version: version})
	if err == nil && resp.Version != version {
		err = fmt.Errorf("%w: the agent speaks version %d, capsule %d", ErrVersion, resp.Version, version)
	}
	if st, ok := status.FromError(err); ok && st.Code() == codes.FailedPrecondition {
		err = fmt.Errorf("%w: %s", ErrVersion, clean(st.Message()))
	}
	if err != nil {
		c.tc.Close()
		return nil, c.callErr(ctx, err)
	}
	c.Agent = clean(resp.Agent)
	return c, nil
}

// Close closes the connection. When the main process (ShutdownOnExit)
// has exited, the agent then powers the guest off.
func (c *Client) Close() error { return c.tc.Close() }

// Lost is closed when the control connection has ended: Close, or the
// agent lost.
func (c *Client) Lost() <-chan struct{} { return c.lost }

// Mount is a virtio-9p share to mount in the guest.
type Mount struct {
	Tag      string // the share's mount tag
	Path     string // where it appears in the root, absolute
	ReadOnly bool
}

// Sandbox is the guest's root and what is mounted in it.
type Sandbox struct {
	Hostname string
	// RootTag is the 9p tag of the root. A read-only root gets a writable
	// tmpfs overlay, discarded at power-off.
	RootTag      string
	RootReadOnly bool
	Mounts       []Mount
	Cache        string // the 9p cache mode (none, loose, mmap, ...); empty: the kernel's default
	Msize        uint32 // the 9p msize; 0: the kernel's default
}

// Setup mounts the sandbox's root and moves the agent into it; processes
// started afterwards run there. Once only, and only in the guest (an
// agent that is not PID 1 refuses it).
func (c *Client) Setup(ctx context.Context, sb Sandbox) error {
	req := &agentpb.SetupSandboxRequest{
		Hostname:     sb.Hostname,
		RootTag:      sb.RootTag,
		RootReadOnly: sb.RootReadOnly,
		Cache:        sb.Cache,
		Msize:        sb.Msize,
	}
	for _, m := range sb.Mounts {
		req.Mounts = append(req.Mounts, &agentpb.Mount{Tag: m.Tag, Path: m.Path, ReadOnly: m.ReadOnly})
	}
	_, err := c.svc.SetupSandbox(ctx, req)
	return c.callErr(ctx, err)
}

// Shutdown kills every process in the guest, syncs and powers it off,
// and closes the client. The guest going away before it answers is
// success.
func (c *Client) Shutdown(ctx context.Context) error {
	_, err := c.svc.Shutdown(ctx, &agentpb.ShutdownRequest{})
	err = c.callErr(ctx, err)
	c.tc.Close()
	if errors.Is(err, ErrAgentLost) {
		return nil
	}
	return err
}

// Rlimit is a resource limit, named as in setrlimit(2) ("RLIMIT_NOFILE").
type Rlimit struct {
	Resource   string
	Soft, Hard uint64
}

// ProcessSpec describes a process to start.
type ProcessSpec struct {
	// ID names the process (1 to MaxIDLen bytes), unique among the
	// agent's processes until Wait has returned for it.
	ID string
	// Args[0] is looked up in the PATH of Env when it has no slash.
	Args []string
	Env  []string
	Cwd  string // "/" when empty
	UID  uint32
	GID  uint32
	// Groups are the supplementary groups (none when empty).
	Groups  []uint32
	Rlimits []Rlimit
	// Terminal gives the process a pty of Rows×Cols as its stdin, stdout
	// and stderr; all its output goes to Stdio.Stdout.
	Terminal   bool
	Rows, Cols uint16
	// ShutdownOnExit makes this the main process: once it has exited and
	// the client is closed (or lost), the agent powers the guest off.
	ShutdownOnExit bool
}

// Stdio is where a process's stdio comes from and goes to.
type Stdio struct {
	// Stdin is copied to the process, then its end of file. Nil: the
	// process reads end of file at once.
	Stdin io.Reader
	// Stdout and Stderr receive the process's output; nil discards it. A
	// writer that fails is dropped: the rest of its stream is discarded.
	Stdout, Stderr io.Writer
}

// Process is a process started in the guest.
type Process struct {
	c       *Client
	id      string
	pid     int
	stdin   net.Conn // nil without Stdio.Stdin
	outs    []*outStream
	stdinMu sync.Mutex
}

// outStream copies an output stream to its writer.
type outStream struct {
	kind StreamKind
	conn net.Conn
	done chan struct{}
	n    uint64 // bytes received, once done
	err  error  // a read error other than end of file, once done
}

// Start starts a process and attaches its stdio.
func (c *Client) Start(ctx context.Context, spec ProcessSpec, stdio Stdio) (*Process, error) {
	if err := CheckID(spec.ID); err != nil {
		return nil, err
	}
	req := &agentpb.StartProcessRequest{
		Id:             spec.ID,
		Args:           spec.Args,
		Env:            spec.Env,
		Cwd:            spec.Cwd,
		Uid:            spec.UID,
		Gid:            spec.GID,
		Groups:         spec.Groups,
		Terminal:       spec.Terminal,
		Rows:           uint32(spec.Rows),
		Cols:           uint32(spec.Cols),
		Stdin:          stdio.Stdin != nil,
		ShutdownOnExit: spec.ShutdownOnExit,
	}
	for _, r := range spec.Rlimits {
		req.Rlimits = append(req.Rlimits, &agentpb.Rlimit{Resource: r.Resource, Soft: r.Soft, Hard: r.Hard})
	}
	resp, err := c.svc.StartProcess(ctx, req)
	if err != nil {
		return nil, c.callErr(ctx, err)
	}
	p := &Process{c: c, id: spec.ID, pid: int(resp.Pid)}
	kinds := []StreamKind{Stdout, Stderr}
	writers := []io.Writer{stdio.Stdout, stdio.Stderr}
	if spec.Terminal {
		kinds = kinds[:1]
	}
	if stdio.Stdin != nil {
		kinds = append(kinds, Stdin)
	}
	// The streams attach at once: each is a connection and a handshake,
	// a round trip to the guest apiece.
	conns := make([]net.Conn, len(kinds))
	errs := make([]error, len(kinds))
	var wg sync.WaitGroup
	for i, k := range kinds {
		wg.Go(func() { conns[i], errs[i] = c.attach(ctx, spec.ID, k) })
	}
	wg.Wait()
	for _, err := range errs {
		if err == nil {
			continue
		}
		for _, conn := range conns {
			if conn != nil {
				conn.Close()
			}
		}
		p.abandon()
		return nil, err
	}
	for i, k := range kinds {
		if k == Stdin {
			p.stdin = conns[i]
			go p.copyStdin(stdio.Stdin)
			continue
		}
		o := &outStream{kind: k, conn: conns[i], done: make(chan struct{})}
		p.outs = append(p.outs, o)
		go o.copy(writers[i])
	}
	return p, nil
}

// attach opens a stream connection of process id.
func (c *Client) attach(ctx context.Context, id string, kind StreamKind) (net.Conn, error) {
	conn, err := c.dial(ctx, StreamPort)
	if err != nil {
		return nil, c.streamErr(ctx, id, kind, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	err = WriteStreamHeader(conn, StreamHeader{Version: uint16(version), Kind: kind, ID: id})
	if err == nil {
		err = ReadStreamAnswer(conn)
	}
	if !stop() {
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		return nil, c.streamErr(ctx, id, kind, err)
	}
	return conn, nil
}

func (c *Client) streamErr(ctx context.Context, id string, kind StreamKind, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("process %q: %v stream: %w", id, kind, ctx.Err())
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, ErrRefused) {
		return fmt.Errorf("process %q: %v stream: %w", id, kind, ErrAgentLost)
	}
	return fmt.Errorf("process %q: %v stream: %w", id, kind, err)
}

// abandon kills a process whose streams could not all be attached and
// closes those that were.
func (p *Process) abandon() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the agent is most likely gone: don't wait for it
	p.c.svc.SignalProcess(ctx, &agentpb.SignalProcessRequest{Id: p.id, Signal: int32(syscall.SIGKILL)})
	for _, o := range p.outs {
		o.conn.Close()
	}
	if p.stdin != nil {
		p.stdin.Close()
	}
}

// copy copies the stream to w (or discards it: nil, or once w fails)
// until end of file.
func (o *outStream) copy(w io.Writer) {
	defer close(o.done)
	defer o.conn.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := o.conn.Read(buf)
		if n > 0 {
			o.n += uint64(n)
			if w != nil {
				if _, werr := w.Write(buf[:n]); werr != nil {
					w = nil
				}
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				o.err = err
			}
			return
		}
	}
}

// copyStdin copies r to the stdin stream, then closes it: the process
// reads end of file.
//
// The copy reads and writes, nothing else: io.Copy's fast paths
// (splice, sendfile) are system calls a VMM confined by seccomp may not
// make, and their failure would end the program's stdin early.
func (p *Process) copyStdin(r io.Reader) {
	io.CopyBuffer(struct{ io.Writer }{p.stdin}, struct{ io.Reader }{r}, make([]byte, 32<<10))
	p.CloseStdin()
}

// ID is the process's id.
func (p *Process) ID() string { return p.id }

// Pid is the process's pid in the guest.
func (p *Process) Pid() int { return p.pid }

// CloseStdin closes the process's stdin stream: after what was already
// copied, the process reads end of file (with a terminal in canonical
// mode, the terminal's end-of-file character). Stdin still being read
// (Stdio.Stdin) is no longer copied.
func (p *Process) CloseStdin() error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil {
		return nil
	}
	err := p.stdin.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// Signal sends sig to the process (ErrExited when it has exited).
func (p *Process) Signal(ctx context.Context, sig syscall.Signal) error {
	_, err := p.c.svc.SignalProcess(ctx, &agentpb.SignalProcessRequest{Id: p.id, Signal: int32(sig)})
	return p.c.callErr(ctx, err)
}

// Resize sets the window size of the process's terminal.
func (p *Process) Resize(ctx context.Context, rows, cols uint16) error {
	_, err := p.c.svc.ResizePty(ctx, &agentpb.ResizePtyRequest{Id: p.id, Rows: uint32(rows), Cols: uint32(cols)})
	return p.c.callErr(ctx, err)
}

// Wait waits until the process has exited and all its output has been
// written to Stdio's writers, and returns how it ended. Call it once. An
// output stream that ended short of what the agent sent is ErrAgentLost.
// The stdin stream is closed.
func (p *Process) Wait(ctx context.Context) (ExitStatus, error) {
	defer p.CloseStdin()
	resp, err := p.c.svc.WaitProcess(ctx, &agentpb.WaitProcessRequest{Id: p.id})
	if err != nil {
		return ExitStatus{}, fmt.Errorf("process %q: %w", p.id, p.c.callErr(ctx, err))
	}
	sent := map[StreamKind]uint64{Stdout: resp.StdoutBytes, Stderr: resp.StderrBytes}
	for _, o := range p.outs {
		select {
		case <-o.done:
		case <-ctx.Done():
			return ExitStatus{}, fmt.Errorf("process %q: %v stream: %w", p.id, o.kind, ctx.Err())
		}
		if o.n != sent[o.kind] {
			detail := ""
			if o.err != nil {
				detail = fmt.Sprintf(" (%v)", o.err)
			}
			return ExitStatus{}, fmt.Errorf("process %q: %v stream ended after %d of %d bytes%s: %w",
				p.id, o.kind, o.n, sent[o.kind], detail, ErrAgentLost)
		}
	}
	if resp.Signal != 0 {
		return ExitStatus{Signal: syscall.Signal(resp.Signal)}, nil
	}
	return ExitStatus{Code: int(resp.ExitCode)}, nil
}

// remoteError is an error the agent returned.
type remoteError struct {
	kind error // a sentinel, or nil
	msg  string
}

func (e *remoteError) Error() string { return "guest agent: " + e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// callErr maps the error of a call: the connection's end is
// ErrAgentLost, ctx's end is ctx's error, the agent's refusals are
// remoteErrors (with ErrNotFound, ErrPermission, ErrExited as their codes
// say: NOT_FOUND, PERMISSION_DENIED, ABORTED).
func (c *Client) callErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.OK && !errors.Is(err, ttrpc.ErrClosed) {
		e := &remoteError{msg: clean(st.Message())}
		switch st.Code() {
		case codes.NotFound:
			e.kind = ErrNotFound
		case codes.PermissionDenied:
			e.kind = ErrPermission
		case codes.Aborted:
			e.kind = ErrExited
		case codes.DeadlineExceeded, codes.Canceled:
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		return e
	}
	if ctx.Err() != nil && !isClosed(c.lost) {
		return ctx.Err()
	}
	if errors.Is(err, ttrpc.ErrClosed) || isClosed(c.lost) {
		return ErrAgentLost
	}
	return err
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// clean keeps text from the agent printable.
func clean(s string) string {
	if len(s) > 1024 {
		s = s[:1024]
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, s)
}
