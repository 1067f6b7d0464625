package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/capsule-vm/capsule/bootloader"
	"github.com/capsule-vm/capsule/jail"
	"github.com/capsule-vm/capsule/vmm"
	"golang.org/x/sys/unix"
)

// Exit statuses of capsule run besides the guest's own.
const (
	statusError   = 1   // capsule could not start or run the VM
	statusTimeout = 124 // --timeout reached, as timeout(1)
)

// errConsoleStop is the context cause when the user types Ctrl-A x.
var errConsoleStop = errors.New("stopped from the console (Ctrl-A x)")

// errParentGone is the context cause when a jailed VMM's parent ends.
var errParentGone = errors.New("the jail's parent process ended")

// errTimeout is the context cause when --timeout expires.
var errTimeout = errors.New("--timeout reached")

// signalError is the context cause when SIGINT or SIGTERM arrives.
type signalError struct{ sig syscall.Signal }

func (e signalError) Error() string { return "stopped by " + unix.SignalName(e.sig) }

func cmdRun(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", "run --kernel PATH [flags]\n       capsule run --rootfs DIR | --image ARCHIVE [flags] [--] CMD [ARGS...]", `Boots a kernel in a new micro-VM. The guest's serial console (COM1) is
connected to this terminal: output goes to stdout, and what you type goes to
the guest. On a terminal, type Ctrl-A x to stop the VM (Ctrl-A Ctrl-A sends
a Ctrl-A to the guest).

capsule exits with the status the guest writes to I/O port 0xf4, with
(v << 1) | 1 when it writes v to QEMU's isa-debug-exit port 0x501, with 0
when the guest reboots or powers off, 124 when --timeout expires, 125 when
the guest triple-faults, 126 when a vCPU cannot go on, 122 when the guest
reports a panic (pvpanic, port 0x505), 128+N after signal N, 1 when capsule
itself fails, and 2 when it is invoked wrongly (an unknown flag, a bad
value, a stray argument, no --kernel). A summary with the boot time (the
guest's write of 123 to I/O port 0xf5) goes to stderr.
`+sandboxHelp, stdout, stderr)
	var cfg vmm.Config
	var timeout time.Duration
	var quiet bool
	fs.StringVar(&cfg.Kernel, "kernel", "", "kernel to boot: Linux bzImage, ELF vmlinux (PVH or 64-bit entry), Multiboot, or an ELF64 unikernel (required)")
	fs.StringVar(&cfg.Initrd, "initrd", "", "initial ramdisk to load (Linux kernels)")
	fs.StringVar(&cfg.Cmdline, "cmdline", "", "kernel command line")
	fs.IntVar(&cfg.CPUs, "cpus", vmm.DefaultCPUs, "number of vCPUs")
	fs.IntVar(&cfg.MemoryMiB, "memory", vmm.DefaultMemoryMiB, "guest RAM in MiB")
	var devs deviceFlags
	devs.add(fs)
	fs.DurationVar(&timeout, "timeout", 0, "stop the VM after this long (e.g. 10s) and exit 124; 0 means never")
	fs.BoolVarP(&quiet, "quiet", "q", false, "do not print the summary line on stderr")
	var verbose bool
	fs.BoolVarP(&verbose, "verbose", "v", false, "print start-up phases, the kernel format and, at the end, the vCPU exits\n"+
		"capsule handled (by port, MMIO page and kind) on stderr")
	seccompOn := true
	fs.BoolVar(&seccompOn, "seccomp", true, "once the VM is set up, confine capsule to the system calls a running VMM makes\n"+
		"(a seccomp filter on every thread: opening files, running programs, mounting and the\n"+
		"like then fail); --seccomp=false leaves it off, for debugging")
	var jf jailFlags
	jf.add(fs)
	var statsFD int
	var sf sandboxFlags
	sf.add(fs)
	// The first argument that is not a flag starts the command of
	// --rootfs/--image: its own flags are not capsule's.
	fs.SetInterspersed(false)
	fs.IntVar(&statsFD, "stats-fd", 0, "write run statistics as JSON to this file descriptor (used by capsule bench)")
	fs.MarkHidden("stats-fd")
	if err := fs.Parse(args); err != nil {
		return flagError(fs, err)
	}
	if !sf.active() && fs.NArg() > 0 {
		return usageErrorf("unexpected argument %q (a command runs with --rootfs or --image)", fs.Arg(0))
	}
	if err := vmm.CheckCPUs(cfg.CPUs); err != nil {
		return usageErrorf("--cpus %d: %w", cfg.CPUs, err)
	}
	if err := vmm.CheckMemory(cfg.MemoryMiB); err != nil {
		return usageErrorf("--memory %d: %w", cfg.MemoryMiB, err)
	}
	if timeout < 0 {
		return usageErrorf("--timeout %v: must not be negative", timeout)
	}
	var err error
	if cfg.Devices, err = devs.Devices(); err != nil {
		return usageError{err}
	}
	if sf.active() {
		if jf.set() {
			return usageErrorf("--jail does not work with --rootfs or --image yet")
		}
		return runSandbox(&sf, cfg, fs.Args(), timeout, verbose, seccompOn, stdout, stderr)
	}
	if cfg.Kernel == "" {
		return usageErrorf("--kernel is required")
	}
	cfg.Console = stdout
	cfg.Log = stderr
	var js jail.Spec
	switch {
	case jf.set() && !jf.child:
		return runJailed(&jf, cfg, args, stderr)
	case jf.child:
		if js, cfg, err = jf.spec(cfg); err != nil {
			return err
		}
		if err := jail.Enter(js); err != nil {
			return err
		}
	}

	vm, err := vmm.New(cfg)
	if errors.Is(err, vmm.ErrNoKVM) {
		return fmt.Errorf("%w (capsule probe says more; make demo boots through the nested rig)", err)
	}
	if err != nil {
		return err
	}
	defer vm.Close()
	switch {
	case jf.child:
		if err := jail.Sealed(); err != nil {
			return err
		}
		if err := jail.Drop(js.UID, js.GID); err != nil {
			return err
		}
	case os.Geteuid() == 0:
		// Everything is open: root's powers are no longer needed, but
		// for the file ones of shared directories.
		if err := jail.DropCapabilities(shareCapabilities(cfg)...); err != nil {
			return err
		}
	}
	if verbose {
		info := vm.Info()
		fmt.Fprintf(stderr, "capsule: %s\n", describeKernel(cfg.Kernel, info))
		for _, p := range vm.Phases() {
			fmt.Fprintf(stderr, "capsule: %8s  %s\n", ms(p.At), p.Name)
		}
	}

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	if timeout > 0 {
		t := time.AfterFunc(timeout, func() { cancel(errTimeout) })
		defer t.Stop()
	}
	if jf.child {
		watchParent(func() { cancel(errParentGone) })
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			cancel(signalError{s.(syscall.Signal)})
		case <-ctx.Done():
		}
	}()

	con, err := startConsole(os.Stdin, vm.Receive, func() { cancel(errConsoleStop) })
	if err != nil {
		return err
	}
	defer con.stop() // on every path, a panic included; stop runs once
	if seccompOn {
		if err := jail.Seccomp(seccompRules(cfg)); err != nil {
			return err
		}
	}
	res, runErr := vm.Run(ctx)
	con.stop() // restores the terminal before anything is printed
	if runErr != nil {
		return runErr
	}
	status, msg := outcome(res, context.Cause(ctx), timeout)
	if statsFD > 0 {
		if err := writeStats(statsFD, vm, res, status); err != nil {
			return err
		}
	}
	if res.Detail != "" {
		fmt.Fprintf(stderr, "capsule: %s\n", res.Detail)
	}
	if verbose {
		fmt.Fprintf(stderr, "capsule: vCPU exits to capsule: %v\n", vm.ExitStats())
	}
	if !quiet || msg != "" {
		fmt.Fprintf(stderr, "capsule: %s\n", summary(res, status, msg))
	}
	if status != 0 {
		return exitError{status}
	}
	return nil
}

// describeKernel is the -v line about the loaded kernel.
func describeKernel(path string, info bootloader.Info) string {
	s := fmt.Sprintf("%s %s", info.Format, path)
	if info.Version != "" {
		s += " (" + info.Version + ")"
	}
	if info.InitrdSize > 0 {
		s += fmt.Sprintf(", initrd at %#x (%d bytes)", info.InitrdAddr, info.InitrdSize)
	} else {
		s += ", no initrd"
	}
	return s
}

// outcome maps how the VM ended to capsule's exit status and a note.
func outcome(res vmm.Result, cause error, timeout time.Duration) (int, string) {
	if res.Reason != vmm.ReasonCanceled {
		return res.Status, ""
	}
	var se signalError
	switch {
	case errors.Is(cause, errTimeout):
		return statusTimeout, fmt.Sprintf("--timeout %v reached, VM stopped", timeout)
	case errors.As(cause, &se):
		return 128 + int(se.sig), fmt.Sprintf("%v, VM stopped", se)
	case errors.Is(cause, errConsoleStop):
		return 0, cause.Error()
	}
	if cause == nil {
		return statusError, "VM stopped"
	}
	return statusError, cause.Error()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func summary(res vmm.Result, status int, msg string) string {
	s := fmt.Sprintf("exit status %d (%s)", status, res.Reason)
	if msg != "" {
		s = msg + "; " + s
	}
	if res.Boot > 0 {
		s += "; boot " + ms(res.Boot)
	} else {
		s += "; no boot marker"
	}
	if res.FirstRun > 0 {
		s += ", first KVM_RUN " + ms(res.FirstRun)
	}
	return s + " after process start"
}

// runStats is what capsule run --stats-fd reports to capsule bench.
type runStats struct {
	Status        int    `json:"status"`
	FirstRunNS    int64  `json:"first_run_ns"`
	BootNS        int64  `json:"boot_ns"`
	RSS           uint64 `json:"rss_bytes"`
	GuestResident uint64 `json:"guest_resident_bytes"`
}

func writeStats(fd int, vm *vmm.VM, res vmm.Result, status int) error {
	u, err := vm.MemoryUsage()
	if err != nil {
		return fmt.Errorf("--stats-fd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "stats")
	if f == nil {
		return fmt.Errorf("--stats-fd %d: not a file descriptor", fd)
	}
	defer f.Close()
	st := runStats{Status: status, FirstRunNS: int64(res.FirstRun), BootNS: int64(res.Boot), RSS: u.RSS, GuestResident: u.GuestResident}
	if err := json.NewEncoder(f).Encode(st); err != nil {
		return fmt.Errorf("--stats-fd %d: %w", fd, err)
	}
	return nil
}
