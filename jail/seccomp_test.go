package jail

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The filter is process-wide and permanent, so the checks run in a child:
// the test binary again, told by an environment variable to install the
// filter and try things.
const childEnv = "CAPSULE_JAIL_SECCOMP_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(seccompChild())
	}
	os.Exit(m.Run())
}

// seccompChild installs the filter, then reports one line per check on
// stdout: "ok NAME" or "bad NAME: why".
func seccompChild() int {
	if err := Seccomp(Rules{Ioctls: []uint64{unix.TCGETS}, SocketFamilies: []int{unix.AF_UNIX}}); err != nil {
		println("bad install:", err.Error())
		return 1
	}
	report := func(name string, err error, wantEPERM bool) {
		switch {
		case wantEPERM && errors.Is(err, unix.EPERM):
			os.Stdout.WriteString("ok " + name + "\n")
		case !wantEPERM && err == nil:
			os.Stdout.WriteString("ok " + name + "\n")
		default:
			os.Stdout.WriteString("bad " + name + ": " + errString(err) + "\n")
		}
	}
	// Refused after set-up.
	_, err := unix.Open("/etc/hostname", unix.O_RDONLY, 0)
	report("open", err, true)
	report("execve", unix.Exec("/bin/true", []string{"true"}, nil), true)
	report("mount", unix.Mount("none", "/tmp", "tmpfs", 0, ""), true)
	report("unshare", unix.Unshare(unix.CLONE_NEWNS), true)
	report("setuid", unix.Setresuid(1, 1, 1), true)
	_, err = unix.PtraceGetEventMsg(os.Getppid())
	report("ptrace", err, true)
	_, _, errno := unix.RawSyscall(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0)
	report("fork", errnoErr(errno), true)
	// Still allowed: a new OS thread (the filter is inherited), sockets,
	// eventfds.
	done := make(chan error)
	go func() {
		runtime.LockOSThread() // this goroutine's thread is never reused
		_, err := unix.Open("/etc/hostname", unix.O_RDONLY, 0)
		done <- err
	}()
	report("open on a new thread", <-done, true)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	report("socket of an allowed family", err, false)
	unix.Close(fd)
	_, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	report("socket of another family", err, true)
	_, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW, 0)
	report("netlink socket", err, true)
	// ioctl: only the requests allowed. TCGETS on a pipe fails with
	// ENOTTY (it ran); TIOCSTI is refused before it runs.
	pr, pw, _ := os.Pipe()
	_, err = unix.IoctlGetTermios(int(pr.Fd()), unix.TCGETS)
	if errors.Is(err, unix.ENOTTY) {
		err = nil
	}
	report("allowed ioctl", err, false)
	report("TIOCSTI", unix.IoctlSetPointerInt(int(pr.Fd()), unix.TIOCSTI, 'x'), true)
	pr.Close()
	pw.Close()
	report("unlink", unix.Unlink("/nonexistent"), true)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	report("eventfd", err, false)
	unix.Close(efd)
	return 0
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func errString(err error) string {
	if err == nil {
		return "succeeded"
	}
	return err.Error()
}

func TestSeccompRefusesWhatARunningVMMNeverDoes(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter is built for x86-64")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 15 {
		t.Fatalf("child reported %d checks, want 15:\n%s", len(lines), out)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "ok ") {
			t.Error(l)
		}
	}
}
