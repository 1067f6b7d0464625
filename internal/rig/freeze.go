package rig

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Freeze detection. TCG's emulation of nested SVM occasionally stops the
// whole L1 guest for good: no console output, no timer, QEMU spinning or
// idle, until the run's timeout (seen with two vCPUs about once in 25 kicks
// of a running L2 guest, and once in a CI run with one vCPU). /init
// therefore writes a heartbeat byte to the guest's second serial port every
// heartbeatEvery; QEMU appends it to a file in the run directory, and a
// watchdog that sees the file stop growing for freezeAfter kills QEMU, so
// that Run can report the freeze and start the test again in a fresh guest.
const (
	heartbeatEvery = 5 * time.Second // the "sleep 5" of initScript
	freezeAfter    = 60 * time.Second
	// maxAttempts bounds the runs of one test binary when guests freeze.
	// On 2026-12-07 fresh-clone runs saw up to four freezes in one
	// capsule.test run (three of them in TestDiskRateLimitsHold, one in
	// another test), so five attempts passed with none to spare. Since an
	// attempt skips the tests that already ended, a freeze costs about a
	// minute of silence plus the test it hit: eight attempts stay well
	// inside CI's time.
	maxAttempts = 8
)

// errFrozen is returned by runQEMU when the watchdog killed a frozen guest.
type errFrozen struct {
	silent time.Duration // how long the heartbeat had been missing
	cpu    float64       // QEMU's CPU use meanwhile, in CPUs (1.0 = one busy core)
}

func (e *errFrozen) Error() string {
	state := "idle, so blocked"
	if e.cpu >= 0.5 {
		state = "busy, so spinning"
	}
	return fmt.Sprintf("the nested guest froze: no heartbeat for %v while QEMU used %.2f CPUs (%s) "+
		"— a known hang of QEMU's TCG nested SVM, not of the test", e.silent.Round(time.Second), e.cpu, state)
}

// watchdog watches a heartbeat file.
type watchdog struct {
	path  string
	every time.Duration // how often to look
	after time.Duration // silence that counts as a freeze
	// cpuTime returns the CPU time used so far by process pid; replaceable
	// in tests.
	cpuTime func(pid int) (time.Duration, error)

	mu     sync.Mutex
	frozen *errFrozen
}

func newWatchdog(path string) *watchdog {
	return &watchdog{path: path, every: time.Second, after: freezeAfter, cpuTime: processCPUTime}
}

// watch polls the heartbeat file until ctx ends and calls kill once the
// file has stopped growing for w.after. It stays disarmed until the first
// heartbeat arrives, so that a guest without a second serial port is only
// bounded by the run's timeout.
func (w *watchdog) watch(ctx context.Context, pid int, kill func()) {
	t := time.NewTicker(w.every)
	defer t.Stop()
	var size int64
	var since time.Time
	var cpuSince time.Duration
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fi, err := os.Stat(w.path)
		if err != nil || fi.Size() == 0 {
			continue
		}
		now := time.Now()
		if fi.Size() != size {
			size, since = fi.Size(), now
			cpuSince, _ = w.cpuTime(pid)
			continue
		}
		if silent := now.Sub(since); silent >= w.after {
			f := &errFrozen{silent: silent, cpu: -1}
			if cpu, err := w.cpuTime(pid); err == nil {
				f.cpu = float64(cpu-cpuSince) / float64(silent)
			}
			w.mu.Lock()
			w.frozen = f
			w.mu.Unlock()
			kill()
			return
		}
	}
}

// froze returns the freeze the watchdog saw, or nil.
func (w *watchdog) froze() *errFrozen {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.frozen
}

// processCPUTime returns the user and system time of process pid from
// /proc/pid/stat.
func processCPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	// USER_HZ is 100 on every Linux architecture Go supports.
	return time.Duration(ticks) * (time.Second / 100), nil
}
