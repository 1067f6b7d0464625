package guest

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/capsule-vm/capsule/agent"
	"github.com/capsule-vm/capsule/agent/agentpb"
	"github.com/capsule-vm/capsule/internal/backoff"
)

const (
	// streamHeaderTimeout bounds the header of a stream connection.
	streamHeaderTimeout = 10 * time.Second
	// killWait bounds the wait for the processes killed at power-off.
	killWait = 2 * time.Second
)

// Server is the agent: the ttrpc service on the control port and the
// stdio streams on the stream port.
type Server struct {
	sys    System
	name   string
	reaper *reaper

	mu         sync.Mutex
	procs      map[string]*process
	reserved   map[string]bool // ids being started
	setupDone  bool
	conns      int  // open control connections
	mainExited bool // a shutdown_on_exit process has exited

	offOnce sync.Once
	off     chan struct{} // closed once powered off (outside a guest)
}

// NewServer returns an agent that acts on the machine through sys and
// calls itself name in Hello.
func NewServer(sys System, name string) *Server {
	return &Server{
		sys:      sys,
		name:     name,
		reaper:   processReaper(),
		procs:    make(map[string]*process),
		reserved: make(map[string]bool),
		off:      make(chan struct{}),
	}
}

// Off is closed once the agent has powered off, which outside a guest
// means it is done.
func (s *Server) Off() <-chan struct{} { return s.off }

// Serve serves the control and stream listeners until they are closed.
func (s *Server) Serve(control, streams net.Listener) error {
	srv, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	agentpb.RegisterAgentService(srv, service{s})
	go backoff.Accept(streams, s.off, func(c net.Conn) { go s.handleStream(c) })
	err = srv.Serve(context.Background(), &countingListener{Listener: control, s: s})
	if errors.Is(err, net.ErrClosed) || errors.Is(err, ttrpc.ErrServerClosed) {
		return nil
	}
	return err
}

// countingListener counts the open control connections: the agent
// powers off once the main process has exited and none is open.
type countingListener struct {
	net.Listener
	s *Server
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.s.mu.Lock()
	l.s.conns++
	l.s.mu.Unlock()
	return &countedConn{Conn: c, s: l.s}, nil
}

type countedConn struct {
	net.Conn
	s    *Server
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.s.mu.Lock()
		c.s.conns--
		off := c.s.mainExited && c.s.conns == 0
		c.s.mu.Unlock()
		if off {
			go c.s.powerOff()
		}
	})
	return err
}

// mainExit records the exit of a shutdown_on_exit process and powers off
// if no host is connected.
func (s *Server) mainExit() {
	s.mu.Lock()
	s.mainExited = true
	off := s.conns == 0
	s.mu.Unlock()
	if off {
		s.powerOff()
	}
}

// powerOff kills every process, then the system syncs and powers off.
func (s *Server) powerOff() {
	s.offOnce.Do(func() {
		s.mu.Lock()
		var procs []*process
		for _, p := range s.procs {
			unix.Kill(-p.pid, syscall.SIGKILL) // its session's process group
			p.osp.Kill()
			procs = append(procs, p)
		}
		s.mu.Unlock()
		s.sys.KillAll()
		// Reaped before the sync (and, outside a guest, before the agent
		// exits and leaves zombies to the host's init).
		deadline := time.After(killWait)
	wait:
		for _, p := range procs {
			select {
			case <-p.exited:
			case <-deadline:
				break wait
			}
		}
		s.sys.PowerOff()
		close(s.off)
	})
}

// lookup returns the process id names.
func (s *Server) lookup(id string) (*process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.procs[id]
	if p == nil {
		return nil, status.Errorf(codes.InvalidArgument, "no process %q", id)
	}
	return p, nil
}

// handleStream attaches a stream connection to its process.
func (s *Server) handleStream(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(streamHeaderTimeout))
	h, err := agent.ReadStreamHeader(c)
	if err != nil {
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	p, o, err := s.claim(h, c)
	if err != nil {
		agent.WriteStreamAnswer(c, err)
		c.Close()
		return
	}
	// The answer goes before any output: a connection that fails here
	// fails the copy, which then discards the output.
	agent.WriteStreamAnswer(c, nil)
	if o != nil {
		o.attach <- c
		return
	}
	s.mu.Lock()
	ended := p.stdinConn != c
	s.mu.Unlock()
	if ended {
		c.Close()
		if p.stdinW != nil {
			p.stdinW.Close()
		}
		return
	}
	p.copyStdin(c)
}

// claim finds the process and stream a header names and marks the
// stream, c, attached: it returns its output, or nil for stdin (which
// becomes p.stdinConn unless the process has exited).
func (s *Server) claim(h agent.StreamHeader, c net.Conn) (*process, *output, error) {
	if h.Version != agent.Version {
		return nil, nil, errors.New("protocol version mismatch")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.procs[h.ID]
	if p == nil {
		return nil, nil, errors.New("no such process")
	}
	if h.Kind == agent.Stdin {
		switch {
		case !p.wantStdin:
			return nil, nil, errors.New("the process was started without stdin")
		case p.stdinAttached:
			return nil, nil, errors.New("stdin already attached")
		}
		p.stdinAttached = true
		if p.stdinEnded {
			return p, nil, nil // nothing reads it: closed at once
		}
		p.stdinConn = c
		return p, nil, nil
	}
	for _, o := range p.outs {
		if o.kind == h.Kind {
			if o.attached {
				return nil, nil, errors.New(h.Kind.String() + " already attached")
			}
			o.attached = true
			return p, o, nil
		}
	}
	return nil, nil, errors.New("a process with a terminal has no stderr")
}

// service is the ttrpc service.
type service struct{ s *Server }

func (v service) Hello(ctx context.Context, req *agentpb.HelloRequest) (*agentpb.HelloResponse, error) {
	if req.Version != agent.Version {
		return nil, status.Errorf(codes.FailedPrecondition, "the host speaks protocol version %d, the agent %d", req.Version, agent.Version)
	}
	return &agentpb.HelloResponse{Version: agent.Version, Agent: v.s.name}, nil
}

func (v service) SetupSandbox(ctx context.Context, req *agentpb.SetupSandboxRequest) (*agentpb.SetupSandboxResponse, error) {
	s := v.s
	s.mu.Lock()
	done := s.setupDone
	s.setupDone = true
	s.mu.Unlock()
	if done {
		return nil, status.Error(codes.FailedPrecondition, "sandbox setup was already done (or tried)")
	}
	if err := s.sys.Setup(req); err != nil {
		return nil, err
	}
	return &agentpb.SetupSandboxResponse{}, nil
}

func (v service) StartProcess(ctx context.Context, req *agentpb.StartProcessRequest) (*agentpb.StartProcessResponse, error) {
	s := v.s
	s.mu.Lock()
	if s.procs[req.Id] != nil || s.reserved[req.Id] {
		s.mu.Unlock()
		return nil, status.Errorf(codes.AlreadyExists, "process %q exists", req.Id)
	}
	s.reserved[req.Id] = true
	s.mu.Unlock()
	p, err := s.newProcess(req)
	s.mu.Lock()
	delete(s.reserved, req.Id)
	if p != nil {
		s.procs[req.Id] = p
	}
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &agentpb.StartProcessResponse{Pid: int32(p.pid)}, nil
}

// exitedErr is the status for a process that has exited.
func exitedErr(id string) error {
	return status.Errorf(codes.Aborted, "process %q has exited", id)
}

func (v service) SignalProcess(ctx context.Context, req *agentpb.SignalProcessRequest) (*agentpb.SignalProcessResponse, error) {
	p, err := v.s.lookup(req.Id)
	if err != nil {
		return nil, err
	}
	if req.Signal < 0 || req.Signal > 64 {
		return nil, status.Errorf(codes.InvalidArgument, "no signal %d", req.Signal)
	}
	select {
	case <-p.exited:
		return nil, exitedErr(req.Id)
	default:
	}
	// Through the pidfd: a pid reused after the reap is never signalled.
	if err := p.osp.Signal(syscall.Signal(req.Signal)); err != nil {
		if errors.Is(err, errProcessDone) {
			return nil, exitedErr(req.Id)
		}
		return nil, status.Errorf(codes.Internal, "signal %d: %v", req.Signal, err)
	}
	return &agentpb.SignalProcessResponse{}, nil
}

func (v service) ResizePty(ctx context.Context, req *agentpb.ResizePtyRequest) (*agentpb.ResizePtyResponse, error) {
	p, err := v.s.lookup(req.Id)
	if err != nil {
		return nil, err
	}
	if p.tty == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "process %q has no terminal", req.Id)
	}
	if req.Rows > 0xffff || req.Cols > 0xffff {
		return nil, status.Errorf(codes.InvalidArgument, "window size %dx%d out of range", req.Rows, req.Cols)
	}
	if err := setWinsize(p.tty, uint16(req.Rows), uint16(req.Cols)); err != nil {
		select {
		case <-p.exited:
			return nil, exitedErr(req.Id)
		default:
		}
		return nil, status.Errorf(codes.Internal, "resize: %v", err)
	}
	return &agentpb.ResizePtyResponse{}, nil
}

func (v service) WaitProcess(ctx context.Context, req *agentpb.WaitProcessRequest) (*agentpb.WaitProcessResponse, error) {
	s := v.s
	p, err := s.lookup(req.Id)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	// The host has its answer (unless the connection fails now, and then
	// the host has lost the agent anyway): forget the process.
	s.mu.Lock()
	if s.procs[req.Id] == p {
		delete(s.procs, req.Id)
	}
	s.mu.Unlock()
	resp := &agentpb.WaitProcessResponse{}
	if p.status.Signaled() {
		resp.Signal = int32(p.status.Signal())
	} else {
		resp.ExitCode = int32(p.status.ExitStatus())
	}
	for _, o := range p.outs {
		if o.kind == agent.Stdout {
			resp.StdoutBytes = o.n
		} else {
			resp.StderrBytes = o.n
		}
	}
	return resp, nil
}

func (v service) Shutdown(ctx context.Context, req *agentpb.ShutdownRequest) (*agentpb.ShutdownResponse, error) {
	go v.s.powerOff()
	return &agentpb.ShutdownResponse{}, nil
}
