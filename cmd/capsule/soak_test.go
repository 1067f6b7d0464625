package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capsule-vm/capsule/internal/kvmtest"
)

// soakEnv asks for the soak test: the number of verbose boots of each
// kernel. make soak sets it and runs the test in the nested rig.
const soakEnv = "CAPSULE_SOAK"

// soakCmdline is a verbose boot (no quiet: the kernel prints its whole log
// on the serial console, as Firecracker's usual arguments do) that exits 0
// through the exit port once the init is up.
const soakCmdline = "console=ttyS0 reboot=k panic=-1 capsule.exit=0"

// TestSoakVerboseBoots boots each Linux kernel verbosely CAPSULE_SOAK
// times and requires every boot to reach the init and exit 0. It is long
// (minutes in the rig), so it runs only when asked, outside make test. A
// failed boot is reported with capsule's stderr (the vCPU's registers on a
// triple fault, where KVM keeps them) and the last console lines.
func TestSoakVerboseBoots(t *testing.T) {
	env := os.Getenv(soakEnv)
	if env == "" {
		t.Skipf("set %s=N (make soak) to boot each kernel verbosely N times", soakEnv)
	}
	n, err := strconv.Atoi(env)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a number of boots, at least 1", soakEnv, env)
	}
	kvmtest.OpenHardware(t)
	bin := binary(t)
	initrd := image(t, "initramfs.cpio.gz")
	for _, name := range []string{"minimal.bzImage", "minimal.vmlinux", "stock.bzImage"} {
		t.Run(name, func(t *testing.T) {
			kernel := image(t, name)
			var times []time.Duration
			failed := 0
			for i := range n {
				d, err := soakBoot(t, bin, kernel, initrd)
				if err != nil {
					failed++
					t.Errorf("%s boot %d/%d failed: %v", name, i+1, n, err)
					continue
				}
				// One line a boot, streamed by go test -v: when the whole
				// rig freezes, the log shows how far the soak got.
				t.Logf("%s boot %d/%d: init up after %.0f ms", name, i+1, n, float64(d.Microseconds())/1000)
				times = append(times, d)
			}
			slices.Sort(times)
			med := time.Duration(0)
			if len(times) > 0 {
				med = times[(len(times)-1)/2]
			}
			t.Logf("soak %s: %d/%d verbose boots reached the init and exited 0 (median %.0f ms to the init's line)",
				name, n-failed, n, float64(med.Microseconds())/1000)
		})
	}
}

// soakBoot boots kernel once and returns the time from start to the
// init's "capsule-init: up" line, or an error describing the failure.
func soakBoot(t *testing.T, bin, kernel, initrd string) (time.Duration, error) {
	t.Helper()
	cmd := capsuleCmd(t, bin, "run", "--kernel", kernel, "--initrd", initrd, "--cmdline", soakCmdline,
		"--memory", "256", "--timeout", "120s")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var tail []string
	var up time.Duration
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if up == 0 && strings.Contains(line, "capsule-init: up") {
			up = time.Since(start)
		}
		tail = append(tail, line)
		if len(tail) > 20 {
			tail = tail[1:]
		}
	}
	status := exitStatus(t, cmd.Wait())
	if up > 0 && status == 0 {
		return up, nil
	}
	what := fmt.Sprintf("exit status %d", status)
	if up == 0 {
		what += ", no \"capsule-init: up\" line"
	}
	return 0, fmt.Errorf("%s after %.1f s\ncapsule's stderr:\n%s\nlast %d console lines:\n%s",
		what, time.Since(start).Seconds(), strings.TrimSpace(stderr.String()), len(tail), strings.Join(tail, "\n"))
}
