package rig

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Run runs cfg.Binary in the nested guest, streaming its output to
// cfg.Stdout, and returns its exit status. An error means that the test did
// not run to completion in the guest (missing tools, kernel panic, timeout,
// interruption); the exit code is then 1. Ending ctx kills the guest.
func Run(ctx context.Context, cfg Config) (exitCode int, err error) {
	start := time.Now()
	cfg, err = cfg.withDefaults()
	if err != nil {
		return 1, err
	}
	if err := checkBinary(cfg.Binary, cfg.HostRoot); err != nil {
		return 1, err
	}
	qemu, err := lookTool("qemu-system-x86_64", qemuHint)
	if err != nil {
		return 1, err
	}
	log := &logger{w: cfg.Stderr, verbose: cfg.Verbose}
	runCtx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	img, err := prepare(runCtx, cfg, log)
	if err != nil {
		return 1, runError(ctx, runCtx, cfg, err)
	}
	tmp, err := os.MkdirTemp("", "kvmrig-")
	if err != nil {
		return 1, fmt.Errorf("create run directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	tag, err := newTag()
	if err != nil {
		return 1, err
	}
	// Only go test's verbose output names the tests that ended.
	var done *results
	if isVerboseTest(cfg.Args) {
		done = newResults()
	}
	for attempt := 1; ; attempt++ {
		// Each attempt skips the tests an earlier one finished.
		acfg := cfg
		acfg.Args = done.skipArgs(cfg.Args)
		initrd := filepath.Join(tmp, fmt.Sprintf("initrd-%d", attempt))
		if err := buildInitrd(initrd, img, acfg, tag); err != nil {
			return 1, err
		}
		t := timings{start: start, qemu: time.Now()}
		con := newConsole(tag, cfg.Stdout, cfg.Verbose)
		con.results = done
		heartbeat := filepath.Join(tmp, fmt.Sprintf("heartbeat-%d", attempt))
		wd := newWatchdog(heartbeat)
		qerr := runAttempt(runCtx, cfg, qemu, qemuArgs(cfg, img.Kernel, initrd, heartbeat), tmp, attempt, con, wd)
		t.end = time.Now()
		os.Remove(initrd)
		if con.exited() {
			t.report(log, cfg, con, img)
			if con.exitCode == 0 && attempt > 1 && len(done.failed) > 0 {
				log.always("tests that failed before the guest froze: %s", strings.Join(done.failed, ", "))
				return 1, nil
			}
			return con.exitCode, nil
		}
		var frozen *errFrozen
		if errors.As(qerr, &frozen) && attempt < maxAttempts && runCtx.Err() == nil {
			// The test's output so far has been passed on; say loudly
			// that what follows is a second run of the same test.
			log.always("%v; running %s again in a fresh guest (attempt %d of %d)%s",
				frozen, filepath.Base(cfg.Binary), attempt+1, maxAttempts, done.skipping())
			continue
		}
		return 1, failure(ctx, runCtx, cfg, con, qerr)
	}
}

// runAttempt runs QEMU with args once, with the host's root served to it
// when cfg.HostRoot is set; see runQEMU.
func runAttempt(ctx context.Context, cfg Config, qemu string, args []string, tmp string, attempt int, con *console, wd *watchdog) error {
	if !cfg.HostRoot {
		return runQEMU(ctx, qemu, args, con, cfg.Stderr, cfg.Verbose, wd)
	}
	// A guest whose share went away would hang: virtiofsd's exit ends
	// QEMU too.
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv, err := startHostRoot(tmp, attempt, cfg.Verbose, cfg.Stderr, cancel)
	if err != nil {
		return err
	}
	qerr := runQEMU(ctx, qemu, append(args, srv.qemuArgs(cfg.Mem)...), con, cfg.Stderr, cfg.Verbose, wd)
	ferr := srv.exitError()
	srv.stop()
	switch {
	case ferr != nil && !con.exited():
		return ferr
	case errors.Is(qerr, context.Canceled) && parent.Err() == nil:
		// virtiofsd left when QEMU did, and its exit ended QEMU's
		// context as QEMU was exiting: the console tells why.
		return nil
	}
	return qerr
}

// isVerboseTest reports whether args run a go test binary verbosely
// (-test.v, as go test -v passes it).
func isVerboseTest(args []string) bool {
	for _, a := range args {
		if a == "-test.v" || a == "-test.v=true" || a == "-test.v=test2json" {
			return true
		}
	}
	return false
}

// checkBinary checks that the test binary can run in the guest.
// In the host-root mode, dynamically linked ones can run too.
func checkBinary(binary string, hostRoot bool) error {
	if binary == "" {
		return errors.New("no test binary given")
	}
	if strings.Contains(binary, "=") {
		return fmt.Errorf("test binary path %s contains '='", binary)
	}
	err := checkStatic(binary, "test binary")
	if errors.Is(err, errDynamic) && hostRoot {
		// The host's root has the C library.
		return nil
	}
	if errors.Is(err, errDynamic) {
		return fmt.Errorf("%w: build the test with CGO_ENABLED=0", err)
	}
	return err
}

// buildInitrd writes the initrd of this run.
func buildInitrd(name string, img Image, cfg Config, tag string) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create initrd: %w", err)
	}
	script := runScript(tag, cfg, img.moduleTree)
	if err := writeInitrd(f, img.archives(), img.hostRoot, cfg, script); err != nil {
		f.Close()
		return fmt.Errorf("build initrd: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("build initrd: %w", err)
	}
	return nil
}

// runError explains why a run ended early: interruption, timeout or err.
func runError(parent, runCtx context.Context, cfg Config, err error) error {
	switch {
	case parent.Err() != nil:
		return fmt.Errorf("interrupted: %w", parent.Err())
	case errors.Is(runCtx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("timed out after %v (%s): %w", cfg.Timeout, EnvTimeout, err)
	}
	return err
}

// failure reports a run whose exit status never arrived, with the last
// console lines unless they were shown already.
func failure(parent, runCtx context.Context, cfg Config, con *console, qerr error) error {
	var err error
	switch {
	case parent.Err() != nil:
		return fmt.Errorf("interrupted: %w", parent.Err())
	case errors.Is(runCtx.Err(), context.DeadlineExceeded):
		err = fmt.Errorf("timed out after %v (%s); the guest was killed", cfg.Timeout, EnvTimeout)
	case con.setupErr != "":
		err = fmt.Errorf("guest setup failed: %s", con.setupErr)
	case qerr != nil:
		err = qerr
	case len(con.tail) == 0:
		err = fmt.Errorf("the guest stopped before its /init ran, printing nothing (rerun with %s=1)", EnvVerbose)
	default:
		err = errors.New("the guest stopped without reporting the test's exit status (kernel panic?)")
	}
	if !cfg.Verbose && len(con.tail) > 0 {
		fmt.Fprintf(cfg.Stderr, "kvmrig: last %d console lines:\n", len(con.tail))
		for _, l := range con.tail {
			fmt.Fprintf(cfg.Stderr, "  | %s\n", l)
		}
	}
	return err
}

// timings are the moments of a run.
type timings struct {
	start, qemu, end time.Time
}

// report prints the closing summary line, and the details when verbose.
func (t timings) report(log *logger, cfg Config, con *console, img Image) {
	boot := "?"
	if !con.upAt.IsZero() {
		boot = secs(con.upAt.Sub(t.qemu))
	}
	log.always("%s: ran in nested kvm_amd guest, exit %d, boot %s, total %s",
		filepath.Base(cfg.Binary), con.exitCode, boot, secs(t.end.Sub(t.start)))
	if !cfg.Verbose || con.upAt.IsZero() || con.runAt.IsZero() {
		return
	}
	log.verbosef("kernel %s; prepare %s, L1 boot %s, modules %s, test %s, power off %s",
		img.KernelID, secs(t.qemu.Sub(t.start)), secs(con.upAt.Sub(t.qemu)),
		secs(con.runAt.Sub(con.upAt)), secs(con.doneAt.Sub(con.runAt)), secs(t.end.Sub(con.doneAt)))
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }
