package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capsule-vm/capsule/internal/kvmtest"
	"github.com/capsule-vm/capsule/vmm"
)

// jailDir makes a directory to hold jails: owned by root, writable by
// nobody else.
func jailDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if kvmtest.Required() {
			t.Fatal("the jail tests need root")
		}
		t.Skip("a jail needs root")
	}
	d := t.TempDir()
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// childOf finds the process whose parent is pid.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			return c
		}
	}
	t.Fatalf("no child of %d", pid)
	return 0
}

// statusField returns a field of /proc/PID/status.
func statusField(t *testing.T, pid int, key string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return ""
}

func TestJailedVMMIsConfined(t *testing.T) {
	kvmtest.Open(t)
	dir := jailDir(t)
	img := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := capsuleCmd(t, binary(t), "run", "--jail", dir, "--jail-id", "t1", "--jail-user", "65534:65534",
		"--kernel", "../../testdata/guests/spin.elf", "--disk", img, "--vsock", "9,/tmp/ignored/v.sock", "--rng")
	stderr := startSpinning(t, cmd)
	vmm := childOf(t, cmd.Process.Pid)
	for key, want := range map[string]string{
		"Uid":        "65534 65534 65534 65534",
		"Gid":        "65534 65534 65534 65534",
		"Groups":     "",
		"CapEff":     "0000000000000000",
		"CapPrm":     "0000000000000000",
		"NoNewPrivs": "1",
		"Seccomp":    "2",
		"NSpid":      fmt.Sprintf("%d 1", vmm), // PID 1 of its own PID namespace
	} {
		if got := statusField(t, vmm, key); got != want {
			t.Errorf("jailed VMM %s: %q, want %q", key, got, want)
		}
	}
	for _, ns := range []string{"mnt", "pid", "ipc", "uts", "net"} {
		mine, _ := os.Readlink("/proc/self/ns/" + ns)
		its, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", vmm, ns))
		if err != nil || its == mine {
			t.Errorf("jailed VMM shares the %s namespace (%s, %v)", ns, its, err)
		}
	}
	// Its root holds the VM's files and nothing else of the host.
	root := filepath.Join(dir, "t1", "root")
	if st, err := os.Stat(filepath.Join(root, "v.sock")); err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Errorf("vsock socket in the jail: %v", err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/etc", vmm)); err == nil {
		t.Error("the jailed VMM sees the host's /etc")
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/kernel", vmm)); err != nil {
		t.Errorf("the jailed VMM has no /kernel: %v", err)
	}
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/root/proc", vmm)); err != nil || len(ents) != 0 {
		t.Errorf("the jailed VMM still has /proc mounted after set-up (%d entries, %v)", len(ents), err)
	}
	// A second VM asking for the same jail is refused and takes nothing
	// of the first's.
	status, _, stderr2 := runMain("run", "--jail", dir, "--jail-id", "t1", "--kernel", "../../testdata/guests/hello.elf")
	if status != 1 || !strings.Contains(stderr2, "exists already") {
		t.Errorf("second VM in jail t1: status %d, %q", status, stderr2)
	}
	if _, err := os.Stat(filepath.Join(root, "v.sock")); err != nil {
		t.Errorf("the second VM's failure removed the first's jail: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if s := exitStatus(t, cmd.Wait()); s != 128+int(syscall.SIGTERM) {
		t.Fatalf("exit status %d, want 143 (stderr %q)", s, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "t1")); !os.IsNotExist(err) {
		t.Errorf("jail left behind: %v", err)
	}
	if err := syscall.Kill(vmm, 0); err == nil {
		t.Error("jailed VMM still running")
	}
}

func TestJailStatusAndErrors(t *testing.T) {
	kvmtest.Open(t)
	dir := jailDir(t)
	status, _, stderr := runMain("run", "--jail", "/nonexistent-jails", "--kernel", "../../testdata/guests/hello.elf")
	if status != 1 || !strings.Contains(stderr, "jail directory /nonexistent-jails") {
		t.Errorf("missing jail directory: status %d, %q", status, stderr)
	}
	open := t.TempDir()
	os.Chmod(open, 0o777)
	status, _, stderr = runMain("run", "--jail", open, "--kernel", "../../testdata/guests/hello.elf")
	if status != 1 || !strings.Contains(stderr, "must not be writable") {
		t.Errorf("world-writable jail directory: status %d, %q", status, stderr)
	}
	status, _, stderr = runMain("run", "--jail", dir, "--jail-user", "0", "--kernel", "../../testdata/guests/hello.elf")
	if status != 2 || !strings.Contains(stderr, "--jail-user") {
		t.Errorf("root as the jail user: status %d, %q", status, stderr)
	}
	cmd := capsuleCmd(t, binary(t), "run", "--jail", dir, "--kernel", "../../testdata/guests/hello.elf", "--cmdline", "exit=7")
	out, err := cmd.CombinedOutput()
	if s := exitStatus(t, err); s != 7 || !strings.Contains(string(out), "Hello from a capsule unikernel") {
		t.Fatalf("jailed hello: status %d, output %q", s, out)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("jail directory not emptied: %v", ents)
	}
}

// Without a jail, a VMM started as root keeps root's user but none of its
// capabilities once the VM is set up, and runs under the seccomp filter.
func TestRunningVMMHoldsNoPrivileges(t *testing.T) {
	kvmtest.Open(t)
	if os.Geteuid() != 0 {
		t.Skip("checks what a VMM started as root gives up")
	}
	cmd := capsuleCmd(t, binary(t), "run", "--kernel", "../../testdata/guests/spin.elf", "--cpus", "2")
	startSpinning(t, cmd)
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	pid := cmd.Process.Pid
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
		if err != nil {
			continue // the thread ended
		}
		for _, want := range []string{"CapEff:\t0000000000000000", "CapPrm:\t0000000000000000", "Seccomp:\t2", "NoNewPrivs:\t1"} {
			if !strings.Contains(string(b), want) {
				t.Errorf("thread %d lacks %q", tid, want)
			}
		}
	}
}

// A jailed VMM whose parent is killed (so no one would ever clean up
// after it or pass it a signal) stops by itself.
func TestJailedVMMStopsWhenItsParentDies(t *testing.T) {
	kvmtest.Open(t)
	dir := jailDir(t)
	t.Cleanup(func() { os.RemoveAll(filepath.Join(dir, "orphan")) }) // the parent could not
	cmd := capsuleCmd(t, binary(t), "run", "--jail", dir, "--jail-id", "orphan", "--kernel", "../../testdata/guests/spin.elf")
	startSpinning(t, cmd)
	vmm := childOf(t, cmd.Process.Pid)
	pidfd, err := unix.PidfdOpen(vmm, 0)
	if err != nil {
		t.Skipf("pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	cmd.Process.Kill()
	cmd.Wait()
	// The VMM's pidfd becomes readable when it exits.
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 10000); err != nil || n != 1 {
		syscall.Kill(vmm, syscall.SIGKILL)
		t.Fatalf("the jailed VMM still runs 10 s after its parent was killed (poll %d, %v)", n, err)
	}
}

// A shared directory needs the file system calls and, run as root, the
// file capabilities; with --jail it is refused for now.
func TestShareRulesAndJail(t *testing.T) {
	cfg := vmm.Config{Kernel: "k", Devices: []vmm.Device{vmm.RNG{}, vmm.Share{HostDir: "/srv", Tag: "t"}}}
	if !seccompRules(cfg).Files {
		t.Error("the seccomp rules of a VM with a share do not allow its file system calls")
	}
	if caps := shareCapabilities(cfg); len(caps) != 4 {
		t.Errorf("capabilities kept for a share: %v", caps)
	}
	plain := vmm.Config{Kernel: "k", Devices: []vmm.Device{vmm.RNG{}}}
	if seccompRules(plain).Files || shareCapabilities(plain) != nil {
		t.Error("a VM without a share gets a share's rules")
	}
	jf := jailFlags{dir: "/jails", user: "65534:65534"}
	if _, _, err := jf.spec(cfg); err == nil || !strings.Contains(err.Error(), "--share does not work with --jail") {
		t.Errorf("jail with a share: %v", err)
	}
}
