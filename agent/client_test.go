package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/capsule-vm/capsule/agent"
	"github.com/capsule-vm/capsule/agent/guest"
)

// The test binary is the agent too: run with listenEnv set, it serves on
// that Unix socket (the hybrid vsock handshake) as capsule-agent does on
// vsock, in a process of its own, as a guest's init would be.
const listenEnv = "CAPSULE_AGENT_TEST_LISTEN"

func TestMain(m *testing.M) {
	guest.MaybeShim()
	if path := os.Getenv(listenEnv); path != "" {
		if err := guest.Run(guest.Options{Name: "test-agent", Listen: path}); err != nil {
			fmt.Fprintf(os.Stderr, "test agent: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// testAgent is an agent process.
type testAgent struct {
	cmd    *exec.Cmd
	dial   agent.Dialer
	exited chan struct{} // closed once cmd.Wait has returned
	err    error         // cmd.Wait's, once exited
}

// startAgent starts an agent process, stopped (SIGKILL) at the end of the
// test.
//
// These tests run the agent as a host process, with the host's programs
// (sh, cat, a /dev/ptmx): make test-host runs them. In the rig, whose
// guest has neither, they skip; there the agent runs as a guest's init
// (vm_test.go).
func startAgent(t *testing.T) *testAgent {
	t.Helper()
	if os.Getenv("CAPSULE_RIG") == "1" {
		t.Skip("the agent as a host process: make test-host runs this (the rig has no /dev/ptmx or /usr/bin)")
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), listenEnv+"="+sock)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &testAgent{cmd: cmd, dial: agent.HybridDialer(sock), exited: make(chan struct{})}
	go func() {
		a.err = cmd.Wait()
		close(a.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-a.exited
	})
	return a
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connect starts an agent and connects to it.
func connect(t *testing.T) (*agent.Client, *testAgent, context.Context) {
	t.Helper()
	a := startAgent(t)
	ctx := testContext(t)
	c, err := agent.Dial(ctx, a.dial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, a, ctx
}

var testEnv = []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}

// run runs args to completion and returns its status, stdout and stderr.
func run(t *testing.T, c *agent.Client, ctx context.Context, spec agent.ProcessSpec, stdin io.Reader) (agent.ExitStatus, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if spec.Env == nil {
		spec.Env = testEnv
	}
	p, err := c.Start(ctx, spec, agent.Stdio{Stdin: stdin, Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st, stdout.String(), stderr.String()
}

// watched is an output buffer a test can wait on for some text.
type watched struct {
	mu    sync.Mutex
	b     bytes.Buffer
	wrote chan struct{}
}

func newWatched() *watched { return &watched{wrote: make(chan struct{}, 1)} }

func (w *watched) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.b.Write(p)
	w.mu.Unlock()
	select {
	case w.wrote <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (w *watched) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// waitFor waits until the output holds s.
func (w *watched) waitFor(t *testing.T, ctx context.Context, s string) {
	t.Helper()
	for !strings.Contains(w.String(), s) {
		select {
		case <-w.wrote:
		case <-ctx.Done():
			t.Fatalf("no %q in the output %q", s, w.String())
		}
	}
}

func TestExitStatus(t *testing.T) {
	c, _, ctx := connect(t)
	st, out, errout := run(t, c, ctx, agent.ProcessSpec{ID: "main", Args: []string{"sh", "-c", "echo hello; exit 7"}}, nil)
	if st != (agent.ExitStatus{Code: 7}) || st.ShellCode() != 7 || out != "hello\n" || errout != "" {
		t.Errorf("got %v, stdout %q, stderr %q; want exit status 7, hello", st, out, errout)
	}
	st, out, _ = run(t, c, ctx, agent.ProcessSpec{ID: "main", Args: []string{"true"}}, nil)
	if st != (agent.ExitStatus{}) || out != "" {
		t.Errorf("true: got %v, stdout %q", st, out)
	}
}

func TestKilledBySignal(t *testing.T) {
	c, _, ctx := connect(t)
	st, _, _ := run(t, c, ctx, agent.ProcessSpec{ID: "k", Args: []string{"sh", "-c", "kill -KILL $$"}}, nil)
	if st.Signal != syscall.SIGKILL || st.ShellCode() != 137 {
		t.Errorf("got %v (shell code %d), want killed by SIGKILL, 137", st, st.ShellCode())
	}
}

func TestStdoutStderrApart(t *testing.T) {
	c, _, ctx := connect(t)
	st, out, errout := run(t, c, ctx, agent.ProcessSpec{ID: "p", Args: []string{"sh", "-c", "echo out; echo err >&2; echo out2"}}, nil)
	if st.Code != 0 || out != "out\nout2\n" || errout != "err\n" {
		t.Errorf("got %v, stdout %q, stderr %q", st, out, errout)
	}
}

func TestStdinToCat(t *testing.T) {
	c, _, ctx := connect(t)
	st, out, _ := run(t, c, ctx, agent.ProcessSpec{ID: "cat", Args: []string{"cat"}}, strings.NewReader("abc\n"))
	if st.Code != 0 || out != "abc\n" {
		t.Errorf("got %v, stdout %q", st, out)
	}
	// Without stdin, the program reads end of file at once.
	st, out, _ = run(t, c, ctx, agent.ProcessSpec{ID: "cat", Args: []string{"cat"}}, nil)
	if st.Code != 0 || out != "" {
		t.Errorf("no stdin: got %v, stdout %q", st, out)
	}
}

func TestTerminal(t *testing.T) {
	c, _, ctx := connect(t)
	out := newWatched()
	stdinR, stdinW := io.Pipe()
	defer stdinW.Close()
	p, err := c.Start(ctx, agent.ProcessSpec{
		ID: "tty", Args: []string{"sh", "-c", "tty; stty size; echo ready; read x; stty size; echo err >&2"},
		Env: testEnv, Terminal: true, Rows: 24, Cols: 80,
	}, agent.Stdio{Stdin: stdinR, Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, ctx, "ready")
	if err := p.Resize(ctx, 50, 132); err != nil {
		t.Fatal(err)
	}
	io.WriteString(stdinW, "go\n")
	st, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := out.String()
	lines := strings.Split(strings.ReplaceAll(got, "\r\n", "\n"), "\n")
	if st.Code != 0 || len(lines) < 6 || !strings.HasPrefix(lines[0], "/dev/pts/") || lines[1] != "24 80" ||
		lines[2] != "ready" || lines[3] != "go" || lines[4] != "50 132" || lines[5] != "err" {
		t.Errorf("got %v, output %q; want a /dev/pts name, 24 80, ready, the echoed go, 50 132, err", st, got)
	}
	if err := p.Resize(ctx, 10, 10); !errors.Is(err, agent.ErrExited) && err == nil {
		t.Errorf("resize after wait: %v", err)
	}
}

func TestTerminalStdinEOF(t *testing.T) {
	c, _, ctx := connect(t)
	st, out, _ := run(t, c, ctx, agent.ProcessSpec{ID: "cat", Args: []string{"cat"}, Terminal: true, Rows: 24, Cols: 80},
		strings.NewReader("abc\n"))
	// The terminal echoes the line, cat writes it again, then reads the
	// end-of-file character the agent sends at the stdin stream's end.
	if st.Code != 0 || out != "abc\r\nabc\r\n" {
		t.Errorf("got %v, output %q", st, out)
	}
}

func TestSignalToHandler(t *testing.T) {
	c, _, ctx := connect(t)
	out := newWatched()
	// The trap kills the sleep with SIGKILL: a TERM could reach it
	// between its fork and its exec, while it still has sh's handler.
	p, err := c.Start(ctx, agent.ProcessSpec{
		ID: "trap", Env: testEnv,
		Args: []string{"sh", "-c", `trap 'echo got TERM; kill -KILL $!; exit 3' TERM; echo ready; while :; do sleep 100 >/dev/null 2>&1 & wait $!; done`},
	}, agent.Stdio{Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, ctx, "ready\n")
	if err := p.Signal(ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Code != 3 || out.String() != "ready\ngot TERM\n" {
		t.Errorf("got %v, output %q", st, out.String())
	}
	// The process is gone: a signal to it now is refused.
	if err := p.Signal(ctx, syscall.SIGTERM); err == nil {
		t.Error("signal after wait: no error")
	}
}

func TestExecWhileRunning(t *testing.T) {
	c, _, ctx := connect(t)
	out := newWatched()
	stdinR, stdinW := io.Pipe()
	first, err := c.Start(ctx, agent.ProcessSpec{ID: "first", Env: testEnv, Args: []string{"sh", "-c", "echo ready; read x; echo first $x"}},
		agent.Stdio{Stdin: stdinR, Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, ctx, "ready\n")
	if _, err := c.Start(ctx, agent.ProcessSpec{ID: "first", Args: []string{"true"}}, agent.Stdio{}); err == nil {
		t.Error("a second process with the same id started")
	}
	st, second, _ := run(t, c, ctx, agent.ProcessSpec{ID: "second", Args: []string{"echo", "second"}}, nil)
	if st.Code != 0 || second != "second\n" {
		t.Errorf("second: %v, %q", st, second)
	}
	io.WriteString(stdinW, "done\n")
	stdinW.Close()
	st, err = first.Wait(ctx)
	if err != nil || st.Code != 0 || out.String() != "ready\nfirst done\n" {
		t.Errorf("first: %v, %v, %q", st, err, out.String())
	}
}

func TestEnvCwdUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("switching users needs root")
	}
	c, _, ctx := connect(t)
	st, out, errout := run(t, c, ctx, agent.ProcessSpec{
		ID: "u", Args: []string{"sh", "-c", "echo $FOO; pwd; id -u; id -g; id -G"},
		Env: append([]string{"FOO=bar baz"}, testEnv...), Cwd: "/usr/bin", UID: 1234, GID: 2345, Groups: []uint32{4, 24},
	}, nil)
	if want := "bar baz\n/usr/bin\n1234\n2345\n2345 4 24\n"; st.Code != 0 || out != want {
		t.Errorf("got %v, stdout %q, stderr %q; want %q", st, out, errout, want)
	}
	if _, err := c.Start(ctx, agent.ProcessSpec{ID: "bad", Args: []string{"true"}, Cwd: "/no/such/dir"}, agent.Stdio{}); err == nil {
		t.Error("a missing working directory was accepted")
	}
}

func TestRlimits(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("switching users needs root")
	}
	c, _, ctx := connect(t)
	st, out, errout := run(t, c, ctx, agent.ProcessSpec{
		ID: "r", Args: []string{"sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c; id -u; id -G"}, UID: 1234, GID: 2345, Groups: []uint32{4},
		Rlimits: []agent.Rlimit{{Resource: "RLIMIT_NOFILE", Soft: 123, Hard: 456}, {Resource: "RLIMIT_CORE", Soft: 0, Hard: 0}},
	}, nil)
	if want := "123\n456\n0\n1234\n2345 4\n"; st.Code != 0 || out != want {
		t.Errorf("got %v, stdout %q, stderr %q; want %q", st, out, errout, want)
	}
	_, err := c.Start(ctx, agent.ProcessSpec{ID: "bad", Args: []string{"true"}, Rlimits: []agent.Rlimit{{Resource: "RLIMIT_BOGUS"}}}, agent.Stdio{})
	if err == nil {
		t.Error("an unknown rlimit was accepted")
	}
}

func TestNotFound(t *testing.T) {
	c, _, ctx := connect(t)
	_, err := c.Start(ctx, agent.ProcessSpec{ID: "nf", Args: []string{"no-such-program-here"}, Env: testEnv}, agent.Stdio{})
	if !errors.Is(err, agent.ErrNotFound) {
		t.Errorf("got %v, want ErrNotFound", err)
	}
	_, err = c.Start(ctx, agent.ProcessSpec{ID: "nf", Args: []string{"/etc/passwd"}}, agent.Stdio{})
	if !errors.Is(err, agent.ErrPermission) {
		t.Errorf("got %v, want ErrPermission", err)
	}
}

func TestAgentLost(t *testing.T) {
	c, a, ctx := connect(t)
	out := newWatched()
	stdinR, stdinW := io.Pipe()
	defer stdinW.Close()
	// cat ends at its stdin's end when the agent dies: nothing is left
	// behind.
	p, err := c.Start(ctx, agent.ProcessSpec{ID: "p", Env: testEnv, Args: []string{"sh", "-c", "echo ready; exec cat"}},
		agent.Stdio{Stdin: stdinR, Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, ctx, "ready\n")
	waitErr := make(chan error, 1)
	go func() {
		_, err := p.Wait(ctx)
		waitErr <- err
	}()
	a.cmd.Process.Kill()
	if err := <-waitErr; !errors.Is(err, agent.ErrAgentLost) {
		t.Errorf("wait: got %v, want ErrAgentLost", err)
	}
	<-c.Lost()
	if _, err := c.Start(ctx, agent.ProcessSpec{ID: "q", Args: []string{"true"}}, agent.Stdio{}); !errors.Is(err, agent.ErrAgentLost) {
		t.Errorf("start after the loss: got %v, want ErrAgentLost", err)
	}
}

func TestVersionMismatch(t *testing.T) {
	a := startAgent(t)
	restore := agent.SetVersion(agent.Version + 1)
	defer restore()
	c, err := agent.Dial(testContext(t), a.dial)
	if !errors.Is(err, agent.ErrVersion) {
		t.Errorf("got %v, %v; want ErrVersion", c, err)
	}
}

func TestDialTimeout(t *testing.T) {
	// Nothing ever listens: Dial keeps trying until its context ends.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := agent.Dial(ctx, agent.HybridDialer(filepath.Join(t.TempDir(), "none.sock")))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want the deadline", err)
	}
}

func TestLargeOutput(t *testing.T) {
	c, _, ctx := connect(t)
	data := make([]byte, 64<<20)
	rand.Read(data)
	want := sha256.Sum256(data)
	h := sha256.New()
	var errout bytes.Buffer
	p, err := c.Start(ctx, agent.ProcessSpec{ID: "big", Args: []string{"cat"}, Env: testEnv},
		agent.Stdio{Stdin: bytes.NewReader(data), Stdout: h, Stderr: &errout})
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait(ctx)
	if err != nil || st.Code != 0 {
		t.Fatalf("%v, %v, stderr %q", st, err, errout.String())
	}
	if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
		t.Errorf("64 MiB through stdin and stdout: sha256 %x, want %x", got, want)
	}
}

func TestShutdown(t *testing.T) {
	c, a, ctx := connect(t)
	out := newWatched()
	stdinR, stdinW := io.Pipe()
	defer stdinW.Close()
	if _, err := c.Start(ctx, agent.ProcessSpec{ID: "p", Env: testEnv, Args: []string{"sh", "-c", "echo ready; exec sleep 1000"}},
		agent.Stdio{Stdin: stdinR, Stdout: out}); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, ctx, "ready\n")
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.exited:
	case <-ctx.Done():
		t.Fatal("the agent did not exit")
	}
	if a.err != nil {
		t.Errorf("agent: %v", a.err)
	}
}

func TestShutdownOnMainExit(t *testing.T) {
	c, a, ctx := connect(t)
	st, out, _ := run(t, c, ctx, agent.ProcessSpec{ID: "main", Args: []string{"echo", "hi"}, ShutdownOnExit: true}, nil)
	if st.Code != 0 || out != "hi\n" {
		t.Errorf("got %v, %q", st, out)
	}
	select {
	case <-a.exited:
		t.Fatal("the agent powered off while the host was connected")
	default:
	}
	c.Close()
	select {
	case <-a.exited:
	case <-ctx.Done():
		t.Fatal("the agent did not power off after the main process and the host were gone")
	}
}

func TestStreamRefusals(t *testing.T) {
	c, a, ctx := connect(t)
	stdinR, stdinW := io.Pipe()
	defer stdinW.Close()
	out := newWatched()
	p, err := c.Start(ctx, agent.ProcessSpec{ID: "p", Env: testEnv, Args: []string{"sh", "-c", "echo ready; exec cat"}},
		agent.Stdio{Stdin: stdinR, Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, ctx, "ready\n")
	for _, h := range []agent.StreamHeader{
		{Version: agent.Version, Kind: agent.Stdout, ID: "nobody"},
		{Version: agent.Version, Kind: agent.Stdout, ID: "p"},
		{Version: agent.Version, Kind: agent.Stdin, ID: "p"},
		{Version: agent.Version + 1, Kind: agent.Stderr, ID: "p"},
	} {
		conn, err := a.dial(ctx, agent.StreamPort)
		if err != nil {
			t.Fatal(err)
		}
		agent.WriteStreamHeader(conn, h)
		if err := agent.ReadStreamAnswer(conn); err == nil {
			t.Errorf("%+v: attached", h)
		}
		conn.Close()
	}
	// Garbage: the agent closes the connection (a reset, with what it
	// left unread).
	conn, err := a.dial(ctx, agent.StreamPort)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n")
	if n, err := conn.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("garbage header: read %d, %v; want the connection closed", n, err)
	}
	conn.Close()
	// The process is unharmed.
	stdinW.Close()
	if st, err := p.Wait(ctx); err != nil || st.Code != 0 {
		t.Errorf("%v, %v", st, err)
	}
}

func TestStdinLeftOpen(t *testing.T) {
	c, _, ctx := connect(t)
	stdinR, stdinW := io.Pipe()
	defer stdinW.Close()
	// The host's stdin never ends; the process exits anyway.
	st, out, _ := run(t, c, ctx, agent.ProcessSpec{ID: "p", Args: []string{"echo", "hi"}}, stdinR)
	if st.Code != 0 || out != "hi\n" {
		t.Errorf("%v, %q", st, out)
	}
}
