package ocirt

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/capsule-vm/capsule/agent"
	"github.com/capsule-vm/capsule/internal/tail"
	"github.com/capsule-vm/capsule/sandbox"
	"github.com/capsule-vm/capsule/vmm"
)

// Exit statuses of the monitor besides the container's own.
const (
	// StatusFailed: the monitor could not boot the VM or start the
	// process for a reason of its own.
	StatusFailed = 1
	// StatusAgentLost: the guest went away before reporting the
	// process's end.
	StatusAgentLost = 123
	// A program that could not be run, or was not found, gives the
	// agent's statuses (agent.StartStatus: 126, 127).
)

// processID is the container process's id for the agent.
const processID = "init"

// MonitorConfig is what RunMonitor needs besides the state directory.
type MonitorConfig struct {
	Kernel, Initrd string
	BootTimeout    time.Duration
	// Ready gets one line once the VM is up ("ok") or why it could not
	// be brought up ("error: ..."), and is closed.
	Ready io.WriteCloser
	// The container process's stdio.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Log            *Logger
	// Confine, when set, is called once the VM is made, before it boots,
	// with its devices: the caller's chance to take powers away (the
	// capabilities a VMM run as root does not need).
	Confine func(devices []vmm.Device) error
	// Lock is the container's lock (Container.Lock) that create took and
	// handed down, held from then on; nil: the monitor takes it.
	Lock *os.File
}

// ReadyOK is the line a monitor writes to MonitorConfig.Ready when the
// container is created.
const ReadyOK = "ok"

// monitor is a running monitor.
type monitor struct {
	c    *Container
	cfg  MonitorConfig
	sb   *sandbox.VM
	proc agent.ProcessSpec

	mu      sync.Mutex
	state   State
	process *agent.Process // once started
	ending  bool           // the container is ending: no more start or kill
	end     chan int       // the container's status, once
}

// RunMonitor is the monitor of container c, whose state.json create has
// written: it boots the VM, says so on cfg.Ready, serves start and kill
// on the container's socket, and returns the container's exit status
// once its process has ended (or a kill ended the created container) and
// the VM has stopped, after recording it in state.json.
func RunMonitor(c *Container, cfg MonitorConfig) int {
	// Until the VM is up, create reports the monitor's errors (and
	// logs them).
	fail := func(err error) int {
		if _, werr := fmt.Fprintf(cfg.Ready, "error: %s\n", oneLine(err.Error())); werr != nil {
			cfg.Log.Errorf("%v", err)
		}
		cfg.Ready.Close()
		return StatusFailed
	}
	lock := cfg.Lock
	if lock == nil {
		var err error
		if lock, err = c.Lock(); err != nil {
			return fail(fmt.Errorf("container %s: monitor lock: %w", c.ID, err))
		}
	}
	defer lock.Close() // last: the container is stopped from then on
	// A reader gone away (conmon's pipes closed) must not kill the
	// container with SIGPIPE: writes fail and the output is dropped.
	signal.Ignore(syscall.SIGPIPE)

	st, err := c.Read()
	if err != nil {
		return fail(err)
	}
	// The monitor's pid is known from the start, so that delete --force
	// can end a container still booting.
	st.MonitorPid = os.Getpid()
	if err := c.Write(st); err != nil {
		return fail(err)
	}
	b, err := LoadBundle(st.Bundle)
	if err != nil {
		return fail(err)
	}
	vmc, err := b.VM()
	if err != nil {
		return fail(err)
	}
	for _, s := range vmc.Skipped {
		cfg.Log.Warnf("container %s: %s", c.ID, s)
	}
	proc, err := b.Process(processID)
	if err != nil {
		return fail(err)
	}
	proc.ShutdownOnExit = true

	consoleTail := &tail.Writer{Max: 8 << 10}
	sb, err := sandbox.New(sandbox.Config{
		Kernel: cfg.Kernel, Initrd: cfg.Initrd,
		CPUs: vmc.CPUs, MemoryMiB: vmc.MemoryMiB,
		Root: vmc.Root, RootReadOnly: vmc.RootReadOnly, Volumes: vmc.Volumes, Hostname: vmc.Hostname,
		Console: consoleTail, Log: consoleTail, Dir: c.VMDir(),
	})
	if err != nil {
		return fail(err)
	}
	defer sb.Close()
	ln, err := net.Listen("unix", c.Socket())
	if err != nil {
		return fail(err)
	}
	defer ln.Close() // removes the socket
	if err := os.Chmod(c.Socket(), privateMode); err != nil {
		return fail(err)
	}
	if cfg.Confine != nil {
		if err := cfg.Confine(sb.Devices()); err != nil {
			return fail(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.BootTimeout)
	err = sb.Start(ctx)
	cancel()
	if err != nil {
		if t := strings.TrimSpace(string(consoleTail.Bytes())); t != "" {
			cfg.Log.Errorf("container %s: the guest console's last output: %s", c.ID, t)
		}
		return fail(err)
	}
	cfg.Log.Debugf("container %s: VM up (%d vCPUs, %d MiB), agent %s", c.ID, vmc.CPUs, vmc.MemoryMiB, sb.Agent().Agent)

	m := &monitor{c: c, cfg: cfg, sb: sb, proc: proc, state: st, end: make(chan int, 1)}
	m.state.Pid, m.state.MonitorPid, m.state.Status = os.Getpid(), os.Getpid(), specs.StateCreated
	if err := c.Write(m.state); err != nil {
		return fail(err)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	// A create that is gone (killed) cannot tell anyone of this
	// container: it ends rather than run unknown.
	_, err = fmt.Fprintln(cfg.Ready, ReadyOK)
	cfg.Ready.Close()
	if err != nil {
		cfg.Log.Errorf("container %s: create is gone: %v", c.ID, err)
		return StatusFailed
	}

	go m.serve(ln)
	var status int
	for done := false; !done; {
		select {
		case s := <-sigs:
			// The monitor stands for the container's process: a
			// signal sent to it is the process's.
			if end, _ := m.kill(s.(syscall.Signal)); end >= 0 {
				status, done = end, true
			}
		case status = <-m.end:
			done = true
		case <-sb.Done():
			status = m.vmEnded()
			done = true
		}
	}
	m.mu.Lock()
	started := m.process != nil
	m.mu.Unlock()
	grace := time.Duration(0)
	if started { // the guest syncs and powers off once the process has ended
		grace = 2 * time.Second
	}
	sb.Stop(grace)
	m.mu.Lock()
	m.ending = true
	m.state.Status, m.state.Pid, m.state.ExitStatus = specs.StateStopped, 0, status
	err = c.Write(m.state)
	m.mu.Unlock()
	if err != nil {
		cfg.Log.Errorf("container %s: %v", c.ID, err)
	}
	cfg.Log.Debugf("container %s: stopped, status %d; the guest: %s", c.ID, status, sb.Ended())
	return status
}

// vmEnded is the status when the VM stopped before the process's end was
// known: the guest's panic, triple fault or crash status, else
// StatusAgentLost.
func (m *monitor) vmEnded() int {
	m.mu.Lock()
	m.ending = true
	m.mu.Unlock()
	// The process's waiter may have its status already: the guest
	// powers off once the process has exited and the host's client is
	// closed, which the waiter does not do; so the VM ending first is
	// the guest's doing.
	select {
	case s := <-m.end:
		return s
	default:
	}
	m.cfg.Log.Errorf("container %s: the guest stopped before the process's end was reported: %s", m.c.ID, m.sb.Ended())
	res, _ := m.sb.Result()
	switch res.Reason {
	case vmm.ReasonPanic, vmm.ReasonTripleFault, vmm.ReasonCrash:
		return res.Status
	}
	return StatusAgentLost
}

// serve answers requests on ln until it is closed.
func (m *monitor) serve(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.cfg.Log.Errorf("container %s: monitor socket: %v", m.c.ID, err)
			return
		}
		go m.handle(conn)
	}
}

// handle answers one request.
func (m *monitor) handle(conn net.Conn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(callTimeout))
	line, err := bufio.NewReader(io.LimitReader(conn, 4096)).ReadBytes('\n')
	var req Request
	if err == nil {
		err = json.Unmarshal(line, &req)
	}
	var resp Response
	end := -1 // the container's status, when the request ends it
	switch {
	case err != nil:
		resp.Error = fmt.Sprintf("bad request: %v", err)
	case req.Op == OpStart:
		if end, err = m.start(); err != nil {
			resp.Error = err.Error()
		}
	case req.Op == OpKill:
		if req.Signal < 0 || req.Signal > 64 {
			resp.Error = fmt.Sprintf("bad signal %d", req.Signal)
		} else if end, err = m.kill(syscall.Signal(req.Signal)); errors.Is(err, ErrNotRunning) {
			resp.NotRunning = true
		} else if err != nil {
			resp.Error = err.Error()
		}
	default:
		resp.Error = fmt.Sprintf("unknown request %q", req.Op)
	}
	b, _ := json.Marshal(resp)
	conn.Write(append(b, '\n'))
	if end >= 0 { // answered first: the monitor ends next
		m.end <- end
	}
}

// start starts the container's process with the monitor's stdio. When
// it cannot, the container ends with the status end (-1 otherwise).
func (m *monitor) start() (end int, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.ending:
		return -1, errors.New("cannot start a container that has stopped")
	case m.process != nil:
		return -1, errors.New("cannot start an already running container")
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	p, err := m.sb.Agent().Start(ctx, m.proc, agent.Stdio{Stdin: m.cfg.Stdin, Stdout: m.cfg.Stdout, Stderr: m.cfg.Stderr})
	if err != nil {
		status := StatusFailed
		if s, ok := agent.StartStatus(err); ok {
			status = s
		}
		m.ending = true
		return status, fmt.Errorf("starting container process %q: %w", m.proc.Args[0], err)
	}
	m.process = p
	m.state.Status = specs.StateRunning
	if err := m.c.Write(m.state); err != nil {
		m.cfg.Log.Errorf("container %s: %v", m.c.ID, err)
	}
	m.cfg.Log.Debugf("container %s: process %q started (guest pid %d)", m.c.ID, m.proc.Args[0], p.Pid())
	go func() {
		st, err := p.Wait(context.Background())
		if err != nil {
			m.cfg.Log.Errorf("container %s: %v", m.c.ID, err)
			select {
			case <-m.sb.Done():
			case <-time.After(2 * time.Second):
			}
			m.end <- m.vmEnded()
			return
		}
		m.end <- st.ShellCode()
	}()
	return -1, nil
}

// kill delivers sig to the container's process; a created container
// (nothing started yet) ends with 128+sig (end; -1 otherwise), as runc's
// does when its init is killed by a signal whose default is to end it.
func (m *monitor) kill(sig syscall.Signal) (end int, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.ending:
		return -1, ErrNotRunning
	case sig == 0:
		return -1, nil
	case m.process == nil && (sig == syscall.SIGCHLD || sig == syscall.SIGURG || sig == syscall.SIGWINCH || sig == syscall.SIGCONT):
		// Ignored by default: the waiting process would not end.
		return -1, nil
	case m.process == nil:
		m.ending = true
		return 128 + int(sig), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	err = m.process.Signal(ctx, sig)
	if errors.Is(err, agent.ErrExited) || errors.Is(err, agent.ErrAgentLost) {
		return -1, ErrNotRunning
	}
	return -1, err
}

// oneLine joins the lines of s.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
