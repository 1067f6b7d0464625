package rig

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeQEMU runs script with /bin/sh in place of QEMU.
func fakeQEMU(ctx context.Context, t *testing.T, script string, verbose bool) (*console, string, string, error) {
	t.Helper()
	return fakeQEMUWatched(ctx, t, script, verbose, nil)
}

// fakeQEMUWatched is fakeQEMU with a watchdog.
func fakeQEMUWatched(ctx context.Context, t *testing.T, script string, verbose bool, wd *watchdog) (*console, string, string, error) {
	t.Helper()
	var stdout, stderr strings.Builder
	con := newConsole(testTag, &stdout, verbose)
	err := runQEMU(ctx, "/bin/sh", []string{"-c", script}, con, &stderr, verbose, wd)
	return con, stdout.String(), stderr.String(), err
}

func TestRunQEMUStreamsAndFilters(t *testing.T) {
	script := `
echo "qemu-system-x86_64: warning: TCG doesn't support requested feature: CPUID.07H:EBX.rdseed [bit 18]" >&2
echo "qemu-system-x86_64: something else" >&2
printf 'kernel noise\r\n'
printf '` + testTag + `: up\r\n` + testTag + `: run\r\n'
printf 'test output\r\nno newline'
printf '` + testTag + `: exit=42\r\n'
printf 'reboot: Power down\r\n'
`
	con, out, errOut, err := fakeQEMU(t.Context(), t, script, false)
	if err != nil {
		t.Fatal(err)
	}
	if con.exitCode != 42 {
		t.Errorf("exit code %d, want 42", con.exitCode)
	}
	if out != "test output\nno newline\n" {
		t.Errorf("stdout %q", out)
	}
	if errOut != "qemu-system-x86_64: something else\n" {
		t.Errorf("stderr %q", errOut)
	}
}

func TestRunQEMUKillsGroupOnCancel(t *testing.T) {
	pidFile := t.TempDir() + "/pid"
	// A background child in the same process group must die too.
	script := `sleep 60 & echo $! > ` + pidFile + `; printf '` + testTag + `: up\n'; wait`
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	con, _, _, err := fakeQEMU(ctx, t, script, false)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v after the deadline", took)
	}
	if err == nil || con.exited() {
		t.Errorf("err %v, exited %v; want an error and no exit status", err, con.exited())
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(3 * time.Second); alive(pid); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("background child %d still runs", pid)
			syscall.Kill(pid, syscall.SIGKILL)
			break
		}
	}
}

// alive reports whether pid runs and is not a zombie waiting to be reaped.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}

func TestRunQEMUNoExitStatus(t *testing.T) {
	con, _, _, err := fakeQEMU(t.Context(), t, `printf 'Kernel panic - not syncing\n'`, false)
	if err != nil {
		t.Fatal(err)
	}
	if con.exited() || len(con.tail) != 1 {
		t.Errorf("exited %v, tail %q", con.exited(), con.tail)
	}
}
