package rig

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// qemuHint is the install hint for a missing QEMU.
const qemuHint = "apt-get install qemu-system-x86"

// powerOffGrace is how long QEMU may take to exit after the exit status
// arrived before it is killed.
const powerOffGrace = 10 * time.Second

// tcgWarning marks QEMU's harmless warnings about EPYC features TCG lacks.
const tcgWarning = "TCG doesn't support requested feature"

// qemuArgs returns the arguments of the L1 guest's QEMU.
// heartbeat is the file that receives the guest's second serial port.
func qemuArgs(cfg Config, kernel, initrd, heartbeat string) []string {
	// loglevel=1: no kvm_amd chatter (unhandled MSRs) among test output.
	// idle=poll: an idle rig vCPU spins instead of halting. Rig guests
	// froze for good now and then with QEMU idle, every vCPU halted and
	// the wake-up never delivered (TCG with nested SVM); a vCPU that never
	// halts cannot miss its wake-up. It costs host CPU only while the rig
	// guest has nothing to do.
	cmdline := "console=ttyS0 quiet loglevel=1 panic=-1 idle=poll"
	if cfg.Verbose {
		cmdline = "console=ttyS0 panic=-1 idle=poll"
	}
	return []string{
		"-accel", "tcg", "-M", "q35", "-cpu", "EPYC",
		"-smp", strconv.Itoa(cfg.CPUs), "-m", cfg.Mem,
		"-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "stdio", "-serial", "file:" + heartbeat, "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", cmdline,
	}
}

// runQEMU runs QEMU in its own process group, with stdin from /dev/null,
// feeding its serial output to con and passing its stderr on (less the TCG
// warnings unless verbose). Ending ctx kills the whole group. It returns
// once QEMU has exited and both pipes are drained. A non-nil wd watches the
// guest's heartbeat and kills a frozen guest; the error is then *errFrozen.
func runQEMU(ctx context.Context, qemu string, args []string, con *console, stderr io.Writer, verbose bool, wd *watchdog) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return killGroup(cmd) }
	cmd.WaitDelay = 5 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("qemu stdout: %w", err)
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		return fmt.Errorf("qemu stderr: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", qemu, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { copyStderr(errPipe, stderr, verbose) })
	wdCtx, wdStop := context.WithCancel(ctx)
	defer wdStop()
	if wd != nil {
		wg.Go(func() { wd.watch(wdCtx, cmd.Process.Pid, cancel) })
	}
	var grace *time.Timer
	readLines(stdout, func(line string) {
		con.line(line, time.Now())
		if con.phase == phaseDone && grace == nil {
			grace = time.AfterFunc(powerOffGrace, cancel)
		}
	})
	// QEMU closed its stdout: it is exiting, or was killed.
	wdStop()
	wg.Wait()
	if grace != nil {
		grace.Stop()
	}
	err = cmd.Wait()
	if f := wd.froze(); f != nil && con.phase != phaseDone {
		return f
	}
	if err != nil && con.phase != phaseDone {
		return fmt.Errorf("qemu: %w", err)
	}
	return nil
}

// killGroup kills QEMU's process group.
func killGroup(cmd *exec.Cmd) error {
	err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// readLines calls fn for each line of r, without its "\n", as it arrives;
// a last line without "\n" is passed too.
func readLines(r io.Reader, fn func(string)) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			fn(strings.TrimSuffix(line, "\n"))
		}
		if err != nil {
			return
		}
	}
}

// copyStderr passes QEMU's stderr on, dropping the TCG warnings unless
// verbose.
func copyStderr(r io.Reader, w io.Writer, verbose bool) {
	readLines(r, func(line string) {
		if verbose || !strings.Contains(line, tcgWarning) {
			fmt.Fprintln(w, line)
		}
	})
}
