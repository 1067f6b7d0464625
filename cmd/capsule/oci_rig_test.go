package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/capsule-vm/capsule/internal/kvmtest"
)

// The OCI tests wait for monitors as conmon and containerd's shim do:
// this process is a subreaper, so a monitor that create leaves behind
// becomes its child when create exits.
var subreaperOnce sync.Once

func becomeSubreaper(t *testing.T) {
	subreaperOnce.Do(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", err)
		}
	})
}

// ociRig is a --root and a json --log for bin/capsule oci.
type ociRig struct {
	t         *testing.T
	bin       string
	root, log string
}

func newOCIRig(t *testing.T) *ociRig {
	kvmtest.OpenHardware(t)
	becomeSubreaper(t)
	// The rig's copy of the checkout has no go.mod for capsule to find
	// its images by: they are named.
	t.Setenv("CAPSULE_KERNEL", image(t, "default.vmlinux"))
	t.Setenv("CAPSULE_INITRD", image(t, "agent.cpio.gz"))
	return &ociRig{t: t, bin: binary(t), root: ociRoot(t), log: filepath.Join(t.TempDir(), "log.json")}
}

// in is r for the subtest t.
func (r *ociRig) in(t *testing.T) *ociRig {
	c := *r
	c.t = t
	return &c
}

// run runs capsule oci ARGS with stdio (nil: /dev/null for stdin, a
// buffer for stdout and stderr) and returns its status, stdout and
// stderr (what went to buffers).
func (r *ociRig) run(stdin, stdout, stderr *os.File, args ...string) (int, string, string) {
	r.t.Helper()
	cmd := capsuleCmd(r.t, r.bin, append([]string{"oci", "--root", r.root, "--log", r.log, "--log-format", "json"}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if stdin != nil {
		cmd.Stdin = stdin
	}
	if stdout != nil {
		cmd.Stdout = stdout
	}
	if stderr != nil {
		cmd.Stderr = stderr
	}
	return exitStatus(r.t, cmd.Run()), o.String(), e.String()
}

// ok runs capsule oci ARGS, which must succeed, and returns its stdout.
func (r *ociRig) ok(args ...string) string {
	r.t.Helper()
	status, stdout, stderr := r.run(nil, nil, nil, args...)
	if status != 0 {
		r.t.Fatalf("capsule oci %s: status %d, stderr %q", strings.Join(args, " "), status, stderr)
	}
	return stdout
}

// state is the container's status and pid, as capsule oci state says.
func (r *ociRig) state(id string) (string, int) {
	r.t.Helper()
	var st struct {
		Status string `json:"status"`
		Pid    int    `json:"pid"`
	}
	out := r.ok("state", id)
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		r.t.Fatalf("state %q: %v", out, err)
	}
	return st.Status, st.Pid
}

// pipes is a container's stdio: the ends create gets, and ours.
type pipes struct {
	stdinR, stdoutW, stderrW *os.File // create's
	stdinW, stdoutR, stderrR *os.File // the test's
}

func newPipes(t *testing.T) *pipes {
	var p pipes
	var err error
	for _, pair := range [][2]**os.File{{&p.stdinR, &p.stdinW}, {&p.stdoutR, &p.stdoutW}, {&p.stderrR, &p.stderrW}} {
		if *pair[0], *pair[1], err = os.Pipe(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { (*pair[0]).Close(); (*pair[1]).Close() })
	}
	return &p
}

// create creates container id from bundle with the pipes as its stdio
// and returns the pid of its pid file; the test's copies of create's ends
// are closed, so the output pipes reach end of file once the monitor has
// ended.
func (r *ociRig) create(id, bundle string, p *pipes) int {
	r.t.Helper()
	pidFile := filepath.Join(r.t.TempDir(), "pid")
	var e bytes.Buffer
	cmd := capsuleCmd(r.t, r.bin, "oci", "--root", r.root, "--log", r.log, "--log-format", "json",
		"create", "--bundle", bundle, "--pid-file", pidFile, id)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = p.stdinR, p.stdoutW, p.stderrW
	err := cmd.Run()
	p.stdinR.Close()
	p.stdoutW.Close()
	p.stderrW.Close()
	if status := exitStatus(r.t, err); status != 0 {
		out, _ := io.ReadAll(p.stderrR)
		log, _ := os.ReadFile(r.log)
		r.t.Fatalf("create %s: status %d, stderr %q %q; log:\n%s", id, status, e.String(), out, log)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		r.t.Fatal(err)
	}
	pid, err := strconv.Atoi(string(b))
	if err != nil {
		r.t.Fatalf("pid file %q: %v", b, err)
	}
	return pid
}

// wait waits for the monitor pid (this process's child, as a subreaper).
func waitMonitor(t *testing.T, pid int) syscall.WaitStatus {
	t.Helper()
	done := make(chan syscall.WaitStatus, 1)
	errs := make(chan error, 1)
	go func() {
		var ws syscall.WaitStatus
		for {
			_, err := syscall.Wait4(pid, &ws, 0, nil)
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				errs <- err
				return
			}
			done <- ws
			return
		}
	}()
	select {
	case ws := <-done:
		return ws
	case err := <-errs:
		t.Fatalf("wait4 %d: %v", pid, err)
	case <-time.After(2 * time.Minute):
		syscall.Kill(pid, syscall.SIGQUIT)
		t.Fatalf("monitor %d did not end", pid)
	}
	return 0
}

func TestOCIContainerLifecycle(t *testing.T) {
	r := newOCIRig(t)
	root := busyboxRoot(t)
	vol := t.TempDir()
	os.Chmod(vol, 0o755) // for the guest's uid 1000
	os.WriteFile(filepath.Join(vol, "in.txt"), []byte("from-host\n"), 0o644)
	limit := int64(200 << 20)
	spec := ociSpecOf("sh", "-c", `read line; echo "got $line"; hostname; cat /data/in.txt; id -u; echo oops >&2
busybox grep MemTotal /proc/meminfo; exit 7`)
	spec.Hostname = "ocitest"
	spec.Process.User = specs.User{UID: 1000, GID: 1000}
	spec.Mounts = []specs.Mount{{Destination: "/data", Type: "bind", Source: vol, Options: []string{"rbind", "ro"}}}
	spec.Linux = &specs.Linux{Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}}
	hooks := t.TempDir()
	hook := func(name string) []specs.Hook {
		return []specs.Hook{{Path: "/bin/busybox", Args: []string{"busybox", "sh", "-c", "cat > " + filepath.Join(hooks, name)}}}
	}
	spec.Hooks = &specs.Hooks{CreateRuntime: hook("createRuntime"), Poststart: hook("poststart")}
	bundle := writeOCIBundle(t, spec, root)
	hookState := func(name string) specs.State {
		var st specs.State
		b, err := os.ReadFile(filepath.Join(hooks, name))
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		if err != nil {
			t.Fatalf("%s hook: %s (%v)", name, b, err)
		}
		return st
	}

	p := newPipes(t)
	pid := r.create("life", bundle, p)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("the pid file's pid %d: %v", pid, err)
	}
	if status, statePid := r.state("life"); status != "created" || statePid != pid {
		t.Fatalf("after create: %s, pid %d; want created, %d", status, statePid, pid)
	}
	if st := hookState("createRuntime"); st.ID != "life" || st.Status != specs.StateCreating || st.Pid != pid {
		t.Fatalf("createRuntime hook's state: %+v", st)
	}
	// The monitor, a VMM, is confined as capsule run's is: a seccomp
	// filter, and (run as root) no capability but the shares' four.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), "\nSeccomp:\t2\n") ||
		(os.Geteuid() == 0 && !strings.Contains(string(status), "\nCapEff:\t000000000000000f\n")) {
		t.Fatalf("the monitor is not confined:\n%s", status)
	}
	// A second create of the id is refused, and leaves the first be.
	if status, _, stderr := r.run(nil, nil, nil, "create", "--bundle", bundle, "life"); status != 1 ||
		strings.TrimSpace(stderr) != "container with given ID already exists" {
		t.Fatalf("second create: %d %q", status, stderr)
	}
	r.ok("start", "life")
	if status, _ := r.state("life"); status != "running" { // it waits for its stdin
		t.Fatalf("after start: %s", status)
	}
	if st := hookState("poststart"); st.ID != "life" || st.Status != specs.StateRunning || st.Pid != pid {
		t.Fatalf("poststart hook's state: %+v", st)
	}
	if status, _, stderr := r.run(nil, nil, nil, "start", "life"); status != 1 || !strings.Contains(stderr, "already running") {
		t.Fatalf("second start: %d %q", status, stderr)
	}
	io.WriteString(p.stdinW, "x\n")
	p.stdinW.Close()
	var stderr []byte
	errDone := make(chan struct{})
	go func() { stderr, _ = io.ReadAll(p.stderrR); close(errDone) }()
	stdout, _ := io.ReadAll(p.stdoutR)
	<-errDone
	ws := waitMonitor(t, pid)
	lines := strings.Split(string(stdout), "\n")
	if len(lines) < 5 || lines[0] != "got x" || lines[1] != "ocitest" || lines[2] != "from-host" || lines[3] != "1000" ||
		!strings.HasPrefix(lines[4], "MemTotal:") || string(stderr) != "oops\n" {
		t.Fatalf("stdout %q, stderr %q", stdout, stderr)
	}
	// About 200 MiB of guest RAM, less the kernel's own.
	if kb, _ := strconv.Atoi(strings.Fields(lines[4])[1]); kb < 150<<10 || kb > 200<<10 {
		t.Fatalf("MemTotal %d kB with a 200 MiB limit", kb)
	}
	if !ws.Exited() || ws.ExitStatus() != 7 {
		t.Fatalf("monitor: %v; want exit status 7", ws)
	}
	if status, statePid := r.state("life"); status != "stopped" || statePid != 0 {
		t.Fatalf("after the end: %s, pid %d", status, statePid)
	}
	if status, _, stderr := r.run(nil, nil, nil, "kill", "life"); status != 1 || strings.TrimSpace(stderr) != "container not running" {
		t.Fatalf("kill of a stopped container: %d %q", status, stderr)
	}
	r.ok("delete", "life")
	if left := rootEntries(t, r.root); len(left) != 0 {
		t.Fatalf("left in --root: %q", left)
	}
}

func TestOCIKillAndDelete(t *testing.T) {
	r := newOCIRig(t)
	root := busyboxRoot(t)
	bundle := writeOCIBundle(t, ociSpecOf("sleep", "1000"), root)

	t.Run("kill SIGTERM", func(t *testing.T) {
		r := r.in(t)
		p := newPipes(t)
		pid := r.create("term", bundle, p)
		r.ok("start", "term")
		if out := r.ok("ps", "--format", "json", "term"); out != fmt.Sprintf("[%d]\n", pid) {
			t.Fatalf("ps --format json: %q; want the monitor, %d", out, pid)
		}
		// exec: a further process, its output and status.
		status, stdout, stderr := r.run(nil, nil, nil, "exec", "term", "sh", "-c", "echo in-exec; echo e >&2; exit 5")
		if status != 5 || stdout != "in-exec\n" || stderr != "e\n" {
			t.Fatalf("exec: status %d, stdout %q, stderr %q", status, stdout, stderr)
		}
		// exec --detach: the pid file's pid stands for the process.
		devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer devNull.Close()
		pidFile := filepath.Join(t.TempDir(), "exec.pid")
		if status, _, _ := r.run(devNull, devNull, devNull, "exec", "--detach", "--pid-file", pidFile, "term", "sh", "-c", "exit 6"); status != 0 {
			log, _ := os.ReadFile(r.log)
			t.Fatalf("exec --detach: status %d; log:\n%s", status, log)
		}
		b, _ := os.ReadFile(pidFile)
		execPid, err := strconv.Atoi(string(b))
		if err != nil {
			t.Fatalf("exec pid file %q", b)
		}
		if ws := waitMonitor(t, execPid); !ws.Exited() || ws.ExitStatus() != 6 {
			t.Fatalf("detached exec: %v; want exit status 6", ws)
		}
		if status, _, stderr := r.run(nil, nil, nil, "delete", "term"); status != 1 || !strings.Contains(stderr, "that is not stopped: running") {
			t.Fatalf("delete of a running container: %d %q", status, stderr)
		}
		r.ok("kill", "term")
		if ws := waitMonitor(t, pid); !ws.Exited() || ws.ExitStatus() != 143 {
			t.Fatalf("monitor: %v; want exit status 143", ws)
		}
		if status, _ := r.state("term"); status != "stopped" {
			t.Fatalf("after kill: %s", status)
		}
		r.ok("delete", "term")
	})
	t.Run("kill of a created container", func(t *testing.T) {
		r := r.in(t)
		p := newPipes(t)
		pid := r.create("created", bundle, p)
		r.ok("kill", "created", "KILL")
		if ws := waitMonitor(t, pid); !ws.Exited() || ws.ExitStatus() != 137 {
			t.Fatalf("monitor: %v; want exit status 137", ws)
		}
		r.ok("delete", "created")
	})
	t.Run("delete --force after the monitor was SIGKILLed", func(t *testing.T) {
		r := r.in(t)
		p := newPipes(t)
		pid := r.create("sigkill", bundle, p)
		r.ok("start", "sigkill")
		syscall.Kill(pid, syscall.SIGKILL)
		if ws := waitMonitor(t, pid); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("monitor: %v", ws)
		}
		if status, statePid := r.state("sigkill"); status != "stopped" || statePid != 0 {
			t.Fatalf("after SIGKILL: %s, pid %d", status, statePid)
		}
		r.ok("delete", "--force", "sigkill")
	})
	t.Run("delete --force of a running container", func(t *testing.T) {
		r := r.in(t)
		p := newPipes(t)
		pid := r.create("force", bundle, p)
		r.ok("start", "force")
		r.ok("delete", "--force", "force")
		if ws := waitMonitor(t, pid); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("monitor: %v", ws)
		}
	})
	if left := rootEntries(t, r.root); len(left) != 0 {
		t.Fatalf("left in --root: %q", left)
	}
}
