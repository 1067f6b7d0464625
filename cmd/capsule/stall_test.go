package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsule-vm/capsule/internal/kvmtest"
)

// A guest printing forever to a stdout nobody reads must not keep capsule
// from honouring --timeout: the console is written from a bounded buffer,
// and the stop waits a bounded time for it.
func TestTimeoutHoldsWithAStalledConsoleReader(t *testing.T) {
	kvmtest.Open(t)
	flood := kvmtest.File(t, "../../testdata/guests/flood.elf", "all")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close() // never read
	// The smallest pipe buffer, so that the guest fills it at once.
	if _, err := unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, 4096); err != nil {
		t.Logf("F_SETPIPE_SZ: %v (the default pipe buffer fills later)", err)
	}
	cmd := capsuleCmd(t, binary(t), "run", "--kernel", flood, "--timeout", "1s")
	cmd.Stdout = w
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	err = cmd.Wait()
	took := time.Since(start)
	if s := exitStatus(t, err); s != statusTimeout {
		t.Fatalf("exit status %d, want %d (stderr %q)", s, statusTimeout, stderr.String())
	}
	if took > 3*time.Second {
		t.Fatalf("capsule took %v to exit after --timeout 1s with its stdout stalled", took)
	}
	if !strings.Contains(stderr.String(), "bytes of console output dropped: the reader did not keep up") {
		t.Fatalf("stderr %q does not report the lost console output", stderr.String())
	}
	t.Logf("on %s: exited 124 after %v; stderr %q", kvmtest.Where(), took, stderr.String())
}
