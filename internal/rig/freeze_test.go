package rig

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testWatchdog returns a watchdog on a file in a temporary directory that
// looks every 10 ms and calls 300 ms of silence a freeze.
func testWatchdog(t *testing.T) *watchdog {
	w := newWatchdog(filepath.Join(t.TempDir(), "heartbeat"))
	w.every, w.after = 10*time.Millisecond, 300*time.Millisecond
	return w
}

func TestWatchdogKillsFrozenGuest(t *testing.T) {
	w := testWatchdog(t)
	// Three heartbeats, then a guest that never ends.
	script := `printf '` + testTag + `: up\n'; for i in 1 2 3; do echo >> ` + w.path + `; sleep 0.05; done; exec sleep 60`
	start := time.Now()
	con, _, _, err := fakeQEMUWatched(t.Context(), t, script, false, w)
	var f *errFrozen
	if !errors.As(err, &f) {
		t.Fatalf("err %v, want a freeze", err)
	}
	if con.exited() {
		t.Error("a frozen guest reported an exit status")
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the freeze was noticed after %v", took)
	}
	if f.silent < w.after {
		t.Errorf("silent %v, less than %v", f.silent, w.after)
	}
	// sleep uses no CPU.
	if f.cpu < 0 || f.cpu >= 0.5 || !strings.Contains(f.Error(), "idle") {
		t.Errorf("cpu %.2f, message %q", f.cpu, f.Error())
	}
}

func TestWatchdogSparesLiveGuest(t *testing.T) {
	w := testWatchdog(t)
	script := `printf '` + testTag + `: up\n` + testTag + `: run\n'
for i in $(seq 1 40); do echo >> ` + w.path + `; sleep 0.02; done
printf '` + testTag + `: exit=7\n'`
	con, _, _, err := fakeQEMUWatched(t.Context(), t, script, false, w)
	if err != nil || con.exitCode != 7 {
		t.Fatalf("err %v, exit %d; want no error and exit 7", err, con.exitCode)
	}
}

func TestWatchdogDisarmedWithoutHeartbeat(t *testing.T) {
	w := testWatchdog(t)
	// No heartbeat file at all: only the run's own limits apply.
	script := `sleep 0.6; printf '` + testTag + `: exit=0\n'`
	con, _, _, err := fakeQEMUWatched(t.Context(), t, script, false, w)
	if err != nil || !con.exited() {
		t.Fatalf("err %v, exited %v", err, con.exited())
	}
}

func TestProcessCPUTime(t *testing.T) {
	d, err := processCPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d < 0 || d > time.Hour {
		t.Errorf("cpu time %v", d)
	}
	if _, err := processCPUTime(-1); err == nil {
		t.Error("no error for pid -1")
	}
}

func TestInitScriptHeartbeat(t *testing.T) {
	want := "sleep " + strings.TrimSuffix(heartbeatEvery.String(), "s") + "; done ) >/dev/ttyS1"
	if !strings.Contains(initScript, want) {
		t.Errorf("initScript lacks %q", want)
	}
}
