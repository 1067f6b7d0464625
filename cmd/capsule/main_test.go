package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capsule-vm/capsule/internal/kvmtest"
)

func runMain(args ...string) (status int, stdout, stderr string) {
	var o, e bytes.Buffer
	status = mainStatus(args, &o, &e)
	return status, o.String(), e.String()
}

func TestUserErrorsAreOneLine(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"kernel that is not an ELF", []string{"run", "--kernel", "../../testdata/guests/hello.S"}, "hello.S: not a Linux bzImage, ELF or Multiboot kernel"},
		{"missing kernel", []string{"run", "--kernel", "/nonexistent"}, "/nonexistent"},
		{"no kernel flag", []string{"run"}, "--kernel is required"},
		{"bad vCPU count", []string{"run", "--kernel", "x", "--cpus", "0"}, "--cpus 0"},
		{"stray argument", []string{"run", "--kernel", "x", "extra"}, "unexpected argument"},
		{"unknown flag", []string{"run", "--bogus"}, "unknown flag: --bogus"},
		{"missing disk", []string{"run", "--kernel", "../../testdata/guests/hello.S", "--disk", "/nonexistent.img"}, "disk /nonexistent.img: no such file"},
		{"bad disk option", []string{"run", "--kernel", "x", "--disk", "a.img,rx"}, `unknown option "rx"`},
		{"invalid MAC", []string{"run", "--kernel", "x", "--net", "user,mac=02:zz:00:00:00:01"}, "invalid MAC address"},
		{"unknown net option", []string{"run", "--kernel", "x", "--net", "user,bogus=1"}, `unknown option "bogus"`},
		{"host port in use", []string{"run", "--kernel", "../../testdata/guests/hello.S", "--net", fmt.Sprintf("user,hostfwd=tcp::%d-:80", busyPort)}, "is in use"},
		{"bad vsock CID", []string{"run", "--kernel", "x", "--vsock", "2,/tmp/v.sock"}, "0-2 are reserved"},
		{"two vsock devices", []string{"run", "--kernel", "x", "--vsock", "3,/tmp/a", "--vsock", "4,/tmp/b"}, "one vsock device"},
		{"disk given twice", []string{"run", "--kernel", "x", "--disk", "a.img,ro", "--disk", "a.img"}, "given twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, _, stderr := runMain(tc.args...)
			if status == 0 {
				t.Fatal("exit status 0")
			}
			if !strings.Contains(stderr, tc.want) {
				t.Fatalf("stderr %q does not mention %q", stderr, tc.want)
			}
			if strings.Contains(stderr, "goroutine") || strings.Contains(stderr, "panic") {
				t.Fatalf("stderr has a stack trace: %q", stderr)
			}
			if strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Fatalf("stderr is not one line: %q", stderr)
			}
		})
	}
}

func TestHelpExplainsEveryFlag(t *testing.T) {
	status, stdout, _ := runMain("run", "--help")
	if status != 0 {
		t.Fatalf("--help exit status %d", status)
	}
	for _, f := range []string{"--kernel", "--initrd", "--cmdline", "--cpus", "--memory", "--timeout", "--disk", "--net", "hostfwd", "tap:NAME", "--vsock", "CONNECT", "--rng", "Ctrl-A x", "0xf4", "2 when it is invoked wrongly"} {
		if !strings.Contains(stdout, f) {
			t.Errorf("run --help does not mention %s", f)
		}
	}
	if status, out, _ := runMain("version"); status != 0 || !strings.HasPrefix(out, "capsule ") {
		t.Fatalf("version: %d %q", status, out)
	}
	if status, out, _ := runMain("--help"); status != 0 || !strings.Contains(out, "probe") {
		t.Fatalf("--help: %d %q", status, out)
	}
}

func TestVersionFlagPrintsTheVersion(t *testing.T) {
	_, want, _ := runMain("version")
	if !strings.HasPrefix(want, "capsule "+version+" (go") {
		t.Fatalf("capsule version printed %q", want)
	}
	status, got, stderr := runMain("--version")
	if status != 0 || got != want || stderr != "" {
		t.Fatalf("capsule --version: status %d, stdout %q, stderr %q; want 0 and %q", status, got, stderr, want)
	}
}

func TestHelpGoesToStdoutWithStatus0(t *testing.T) {
	for _, c := range commands {
		t.Run("help "+c.name+" prints what "+c.name+" --help prints", func(t *testing.T) {
			status, want, stderr := runMain(c.name, "--help")
			if status != 0 || stderr != "" || !strings.HasPrefix(want, "Usage: capsule "+c.name) || strings.HasSuffix(want, "Flags:\n") {
				t.Fatalf("%s --help: status %d, stdout %q, stderr %q", c.name, status, want, stderr)
			}
			for _, h := range []string{"-h", "--help"} {
				if status, got, _ := runMain(c.name, h); status != 0 || got != want {
					t.Fatalf("%s %s: status %d, stdout differs from --help:\n%s", c.name, h, status, got)
				}
			}
			if status, got, stderr := runMain("help", c.name); status != 0 || got != want || stderr != "" {
				t.Fatalf("help %s: status %d stderr %q stdout:\n%s\nwant:\n%s", c.name, status, stderr, got, want)
			}
		})
	}
	t.Run("help alone lists the commands", func(t *testing.T) {
		_, want, _ := runMain("--help")
		for _, args := range [][]string{{"help"}, {"-h"}, {"help", "help"}} {
			if status, got, stderr := runMain(args...); status != 0 || got != want || stderr != "" || !strings.Contains(got, "probe") {
				t.Fatalf("%v: status %d stdout %q stderr %q", args, status, got, stderr)
			}
		}
	})
	t.Run("no arguments print the commands on stderr with status 2", func(t *testing.T) {
		if status, stdout, stderr := runMain(); status != 2 || stdout != "" || !strings.Contains(stderr, "Commands:") {
			t.Fatalf("status %d stdout %q stderr %q", status, stdout, stderr)
		}
	})
}

func TestMistypedNamesGetASuggestion(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // "" for no suggestion
	}{
		{[]string{"rnu"}, `capsule: unknown command "rnu"; did you mean "run"?`},
		{[]string{"bnech"}, `did you mean "bench"?`},
		{[]string{"ver"}, `did you mean "version"?`},
		{[]string{"prob", "--help"}, `did you mean "probe"?`},
		{[]string{"hepl"}, `did you mean "help"?`},
		{[]string{"help", "rnu"}, `capsule help: unknown command "rnu"; did you mean "run"?`},
		{[]string{"xyzzy"}, ""},
		{[]string{"bench", "--kernal", "k"}, "capsule bench: unknown flag: --kernal; did you mean --kernel?"},
		{[]string{"bench", "--kernel=k", "--run", "3"}, "did you mean --runs?"},
		{[]string{"bench", "-kernel", "k"}, "did you mean --kernel?"},
		{[]string{"bench", "--stats", "3"}, ""}, // hidden flags are not suggested
		{[]string{"probe", "--verbose"}, ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			status, stdout, stderr := runMain(tc.args...)
			if status != 2 || stdout != "" || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Fatalf("status %d stdout %q stderr %q; want 2 and one line on stderr", status, stdout, stderr)
			}
			if tc.want == "" && strings.Contains(stderr, "did you mean") {
				t.Fatalf("stderr %q suggests something", stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Fatalf("stderr %q does not say %q", stderr, tc.want)
			}
		})
	}
}

func TestEditDistanceCountsSwapsAsOneEdit(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"run", "run", 0}, {"rnu", "run", 1}, {"kernal", "kernel", 1}, {"kerenl", "kernel", 1},
		{"", "run", 3}, {"cpu", "cpus", 1}, {"memroy", "memory", 1}, {"ca", "abc", 3}, {"bench", "probe", 5},
	} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestUsageErrorsExit2AndOtherErrorsExit1(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		status int
		want   string
	}{
		{[]string{"bench", "--kernel", "k", "extra"}, 2, `capsule bench: unexpected argument "extra" (run 'capsule bench --help')`},
		{[]string{"probe", "extra"}, 2, `capsule probe: unexpected argument "extra" (run 'capsule probe --help')`},
		{[]string{"version", "extra"}, 2, `capsule version: unexpected argument "extra" (run 'capsule version --help')`},
		{[]string{"--version", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"help", "run", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"help", "nosuch"}, 2, `capsule help: unknown command "nosuch" (run 'capsule help')`},
		{[]string{"--kernel", "k"}, 2, "flags come after the command"},
		{[]string{"run", "--bogus"}, 2, "capsule run: unknown flag: --bogus (run 'capsule run --help')"},
		{[]string{"run", "--cpus", "two"}, 2, `capsule run: --cpus "two": must be an integer (run 'capsule run --help')`},
		{[]string{"run", "--kernel"}, 2, "flag needs an argument: --kernel"},
		{[]string{"probe", "---x"}, 2, "bad flag syntax: ---x"},
		{[]string{"version", "--bogus"}, 2, "capsule version: unknown flag: --bogus"},
		{[]string{"bench"}, 2, "capsule bench: --kernel is required (run 'capsule bench --help')"},
		{[]string{"bench", "--kernel", "k", "--runs", "0"}, 2, "--runs 0: must be at least 1"},
		{[]string{"bench", "--kernel", "k", "--against", "firecracker"}, 2, `--against "firecracker": only qemu is supported`},
		{[]string{"bench", "--kernel", "k", "--workload", "cpu"}, 2, `--workload "cpu": want boot, disk, net, console, fs or run`},
		{[]string{"bench", "--kernel", "k", "--timeout", "10"}, 2, `--timeout "10": must be a duration`},
		{[]string{"bench", "--kernel", "/nonexistent"}, 1, "capsule bench: --kernel /nonexistent: no such file or directory"},
		{[]string{"run", "--kernel", "/nonexistent"}, 1, "/nonexistent"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			status, _, stderr := runMain(tc.args...)
			if status != tc.status || !strings.Contains(stderr, tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Fatalf("status %d stderr %q; want %d and one line with %q", status, stderr, tc.status, tc.want)
			}
			if tc.status == 1 && strings.Contains(stderr, "--help") {
				t.Fatalf("stderr %q points to --help for an error that is not one of usage", stderr)
			}
		})
	}
}

// binary returns bin/capsule as built by make.
func binary(t *testing.T) string {
	return kvmtest.File(t, "../../bin/capsule", "bin/capsule")
}

// capsuleCmd runs bin with args, bounded in time: a capsule that hangs is
// sent SIGQUIT, so that the Go runtime prints where each goroutine stood,
// and the test fails with that dump instead of hanging.
func capsuleCmd(t *testing.T, bin string, args ...string) *exec.Cmd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

func exitStatus(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if err == nil {
		return 0
	}
	if !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return ee.ExitCode()
}

func TestProbeNamesTheKind(t *testing.T) {
	out, err := capsuleCmd(t, binary(t), "probe").Output()
	status := exitStatus(t, err)
	first := strings.SplitN(string(out), "\n", 2)[0]
	if !strings.HasPrefix(first, "kvm: ") {
		t.Fatalf("first line %q", first)
	}
	if kvmtest.Required() && (!strings.HasPrefix(first, "kvm: hardware") || status != 0) {
		t.Fatalf("in the rig probe says %q (status %d), want kvm: hardware", first, status)
	}
	if strings.HasPrefix(first, "kvm: none") != (status == 1) {
		t.Fatalf("probe %q exit status %d", first, status)
	}
	t.Logf("on %s: %s", kvmtest.Where(), first)
}

func TestRunHelloExitsWithGuestStatus(t *testing.T) {
	kvmtest.Open(t)
	cmd := capsuleCmd(t, binary(t), "run", "--kernel", "../../testdata/guests/hello.elf", "--cmdline", "exit=3")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if s := exitStatus(t, err); s != 3 {
		t.Fatalf("exit status %d, want 3 (stderr %q)", s, stderr.String())
	}
	if !strings.Contains(string(out), "Hello from a capsule unikernel") {
		t.Fatalf("stdout %q", out)
	}
	if !strings.Contains(stderr.String(), "boot ") {
		t.Fatalf("stderr %q lacks the boot time", stderr.String())
	}
	t.Logf("on %s: %s", kvmtest.Where(), strings.TrimSpace(stderr.String()))
}

func TestRunStatuses(t *testing.T) {
	kvmtest.Open(t)
	bin := binary(t)
	for _, tc := range []struct {
		name   string
		args   []string
		status int
		stderr string
	}{
		{"timeout exits 124", []string{"--kernel", "../../testdata/guests/spin.elf", "--timeout", "300ms"}, 124, "--timeout 300ms reached"},
		{"triple fault exits 125", []string{"--kernel", "../../testdata/guests/fault.elf"}, 125, "guest triple-faulted"},
		{"i8042 reset exits 0", []string{"--kernel", "../../testdata/guests/reboot.elf"}, 0, "(reset)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := capsuleCmd(t, bin, append([]string{"run"}, tc.args...)...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			if s := exitStatus(t, err); s != tc.status || !strings.Contains(stderr.String(), tc.stderr) {
				t.Fatalf("exit status %d stderr %q; want %d and %q", s, stderr.String(), tc.status, tc.stderr)
			}
		})
	}
}

func TestSIGTERMStopsTheVMAndLeavesNothing(t *testing.T) {
	kvmtest.Open(t)
	cmd := capsuleCmd(t, binary(t), "run", "--kernel", "../../testdata/guests/spin.elf", "--cpus", "2")
	stderr := startSpinning(t, cmd)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if s := exitStatus(t, cmd.Wait()); s != 128+int(syscall.SIGTERM) {
		t.Fatalf("exit status %d, want %d (stderr %q)", s, 128+int(syscall.SIGTERM), stderr.String())
	}
	if !strings.Contains(stderr.String(), "stopped by SIGTERM") {
		t.Fatalf("stderr %q does not name the signal", stderr.String())
	}
	if err := syscall.Kill(cmd.Process.Pid, 0); err == nil {
		t.Fatal("capsule process still exists after Wait")
	}
}

// startSpinning starts cmd, a capsule run of the spin guest, and returns
// once the guest has printed its first line; the console is drained from
// then on, so that the VMM never waits for it. It returns capsule's
// stderr as it grows.
func startSpinning(t *testing.T, cmd *exec.Cmd) *bytes.Buffer {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(stdout)
	if line, err := r.ReadString('\n'); err != nil || line != "spinning\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("first line %q, %v (stderr %q)", line, err, stderr.String())
	}
	go io.Copy(io.Discard, r)
	return &stderr
}
