package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capsule-vm/capsule/agent"
	"github.com/capsule-vm/capsule/internal/cpio"
	"github.com/capsule-vm/capsule/internal/kvmtest"
)

// agentInitramfs writes an initramfs with bin/capsule-agent as /init and
// a static busybox with the applets the test runs.
func agentInitramfs(t *testing.T, agentBin string) string {
	t.Helper()
	busybox := "/bin/busybox" // the rig's guest has it there, as Debian's busybox-static
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Skipf("needs a static busybox: %v", err)
	}
	init, err := os.ReadFile(agentBin)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	w := cpio.NewWriter(&b)
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp"} {
		w.Dir(d, 0o755)
	}
	w.CharDev("dev/console", 0o600, 5, 1)
	w.Bytes("init", 0o755, init)
	w.Bytes("bin/busybox", 0o755, bb)
	for _, a := range []string{"sh", "cat", "echo", "tty", "stty", "sleep", "true", "kill", "head"} {
		w.Symlink("bin/"+a, "busybox")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "agent.cpio")
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// guestVM is a capsule VM whose init is the agent.
type guestVM struct {
	c      *agent.Client
	ctx    context.Context
	exited chan error // capsule's Wait, sent again after it is read
}

// bootAgent boots the default kernel with the agent as its init, capsule
// given extra flags, and connects to the agent through capsule's vsock.
// capsule is killed at the end of the test if it is still running.
func bootAgent(t *testing.T, extra ...string) *guestVM {
	t.Helper()
	kvmtest.OpenHardware(t)
	capsule := kvmtest.File(t, "../bin/capsule", "bin/capsule")
	agentBin := kvmtest.File(t, "../bin/capsule-agent", "bin/capsule-agent")
	kernel := kvmtest.File(t, "../testdata/images/default.bzImage", "default-images")
	initrd := agentInitramfs(t, agentBin)
	dir, err := os.MkdirTemp("", "agent") // short: Unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "v.sock")
	cid := strconv.Itoa(1000 + os.Getpid()) // CIDs are locked host-wide

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	args := append([]string{"run", "--kernel", kernel, "--initrd", initrd,
		"--cmdline", "console=ttyS0 quiet reboot=k panic=-1", "--vsock", cid + "," + sock}, extra...)
	cmd := exec.CommandContext(ctx, capsule, args...)
	var console, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &console, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g := &guestVM{ctx: ctx, exited: make(chan error, 1)}
	go func() { g.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-g.exited
		if t.Failed() {
			t.Logf("capsule stderr %q\nconsole:\n%s", stderr.String(), console.String())
		}
	})
	start := time.Now()
	g.c, err = agent.Dial(ctx, agent.HybridDialer(sock))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.c.Close() })
	t.Logf("%s answered %.1fs after capsule started", g.c.Agent, time.Since(start).Seconds())
	return g
}

// powerOff runs a main process, lets go of the agent and checks that the
// guest powers off and capsule exits 0.
func (g *guestVM) powerOff(t *testing.T, env []string) {
	t.Helper()
	st, out, _ := run(t, g.c, g.ctx, agent.ProcessSpec{ID: "main", Args: []string{"echo", "bye"}, Env: env, ShutdownOnExit: true}, nil)
	if st.Code != 0 || out != "bye\n" {
		t.Errorf("main: %v, %q", st, out)
	}
	g.c.Close()
	select {
	case err := <-g.exited:
		g.exited <- err // for the cleanup's wait
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		if err != nil {
			t.Errorf("capsule: %v after the power-off, want exit status 0", err)
		}
	case <-g.ctx.Done():
		t.Fatal("the guest did not power off")
	}
}

// TestAgentInGuest boots the default kernel with the agent as its init
// and drives it through capsule's vsock device: the vsock listener, the
// init's own mounts (ptys before any sandbox) and the power-off, which
// nothing on this host can run.
func TestAgentInGuest(t *testing.T) {
	g := bootAgent(t)
	c, ctx := g.c, g.ctx
	env := []string{"PATH=/bin"}

	st, out, errout := run(t, c, ctx, agent.ProcessSpec{ID: "hello", Args: []string{"sh", "-c", "echo hello; echo oops >&2; exit 7"}, Env: env}, nil)
	if st.Code != 7 || out != "hello\n" || errout != "oops\n" {
		t.Errorf("hello: %v, stdout %q, stderr %q", st, out, errout)
	}
	st, out, _ = run(t, c, ctx, agent.ProcessSpec{ID: "tty", Args: []string{"sh", "-c", "tty; stty size"}, Env: env,
		Terminal: true, Rows: 30, Cols: 100}, nil)
	if lines := strings.Split(out, "\r\n"); st.Code != 0 || len(lines) < 2 || !strings.HasPrefix(lines[0], "/dev/pts/") || lines[1] != "30 100" {
		t.Errorf("tty: %v, output %q", st, out)
	}

	// A signal to the program's handler, once it is ready.
	w := newWatched()
	p, err := c.Start(ctx, agent.ProcessSpec{ID: "trap", Env: env,
		Args: []string{"sh", "-c", `trap 'echo got TERM; kill -KILL $!; exit 3' TERM; echo ready; while :; do sleep 100 & wait $!; done`}},
		agent.Stdio{Stdout: w})
	if err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, ctx, "ready\n")
	if err := p.Signal(ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Wait(ctx); err != nil || st.Code != 3 || w.String() != "ready\ngot TERM\n" {
		t.Errorf("trap: %v, %v, output %q", st, err, w.String())
	}

	// 4 MiB through stdin and stdout.
	data := make([]byte, 4<<20)
	rand.Read(data)
	h := sha256.New()
	p, err = c.Start(ctx, agent.ProcessSpec{ID: "cat", Args: []string{"cat"}, Env: env}, agent.Stdio{Stdin: bytes.NewReader(data), Stdout: h})
	if err != nil {
		t.Fatal(err)
	}
	st, err = p.Wait(ctx)
	want := sha256.Sum256(data)
	if err != nil || st.Code != 0 || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Errorf("cat of 4 MiB: %v, %v, sha256 %x want %x", st, err, h.Sum(nil), want)
	}

	// The main process: once it has exited and the host let go, the
	// guest powers off and capsule exits 0.
	g.powerOff(t, env)
}

// hasShares reports whether capsule has virtio-9p shares (--share).
func hasShares(t *testing.T, capsule string) bool {
	out, _ := exec.Command(capsule, "help", "run").Output()
	return bytes.Contains(out, []byte("--share"))
}

// TestAgentSandbox sets up a sandbox from 9p shares: a read-only root
// under a tmpfs overlay, a writable extra share, the kernel file systems
// and the hostname inside; what the program writes to the root stays in
// the guest, what it writes to the share reaches the host.
func TestAgentSandbox(t *testing.T) {
	if !hasShares(t, kvmtest.File(t, "../bin/capsule", "bin/capsule")) {
		t.Skip("bin/capsule has no --share (virtio-9p) yet")
	}
	root, data := t.TempDir(), t.TempDir()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("needs a static busybox: %v", err)
	}
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755)
	for _, a := range []string{"sh", "cat", "echo", "tty", "hostname", "ls", "id", "stat"} {
		os.Symlink("busybox", filepath.Join(root, "bin", a))
	}
	os.WriteFile(filepath.Join(root, "etc/motd"), []byte("from the host\n"), 0o644)
	for _, d := range []string{root, data} {
		os.Chmod(d, 0o755)
	}

	g := bootAgent(t, "--share", root+":root,ro", "--share", data+":data")
	c, ctx := g.c, g.ctx
	env := []string{"PATH=/bin"}
	err = c.Setup(ctx, agent.Sandbox{Hostname: "sandbox-test", RootTag: "root", RootReadOnly: true,
		Mounts: []agent.Mount{{Tag: "data", Path: "/data"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Setup(ctx, agent.Sandbox{RootTag: "root"}); err == nil {
		t.Error("a second setup was accepted")
	}
	script := `hostname; cat /etc/motd; echo changed > /etc/motd; cat /etc/motd; echo t > /tmp/t; cat /tmp/t
echo out > /data/out; ls /proc/1/exe >/dev/null && echo proc; ls /sys/kernel >/dev/null && echo sys
ls /dev/null /dev/pts/ptmx /dev/shm >/dev/null && echo dev; ls /init 2>/dev/null || echo no-initramfs`
	st, out, errout := run(t, c, ctx, agent.ProcessSpec{ID: "s", Args: []string{"sh", "-c", script}, Env: env}, nil)
	want := "sandbox-test\nfrom the host\nchanged\nt\nproc\nsys\ndev\nno-initramfs\n"
	if st.Code != 0 || out != want {
		t.Errorf("sandbox: %v, stdout %q, stderr %q; want %q", st, out, errout, want)
	}
	// A user and resource limits (through the shim, the agent's binary run
	// again from /proc/self/exe in the new root).
	st, out, errout = run(t, c, ctx, agent.ProcessSpec{ID: "u", Args: []string{"sh", "-c", "id -u; id -G; ulimit -n"}, Env: env,
		UID: 1000, GID: 1000, Groups: []uint32{5}, Rlimits: []agent.Rlimit{{Resource: "RLIMIT_NOFILE", Soft: 77, Hard: 77}}}, nil)
	if st.Code != 0 || out != "1000\n1000 5\n77\n" {
		t.Errorf("user and limits: %v, stdout %q, stderr %q", st, out, errout)
	}
	st, out, _ = run(t, c, ctx, agent.ProcessSpec{ID: "tty", Args: []string{"tty"}, Env: env, Terminal: true, Rows: 24, Cols: 80}, nil)
	if st.Code != 0 || !strings.HasPrefix(out, "/dev/pts/") {
		t.Errorf("tty in the sandbox: %v, %q", st, out)
	}
	g.powerOff(t, env)
	if b, _ := os.ReadFile(filepath.Join(root, "etc/motd")); string(b) != "from the host\n" {
		t.Errorf("the read-only root changed on the host: motd %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(data, "out")); string(b) != "out\n" {
		t.Errorf("the share's file on the host: %q, want out", b)
	}
}
