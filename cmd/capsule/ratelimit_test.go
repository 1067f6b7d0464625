package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capsule-vm/capsule/internal/kvmtest"
)

// blkbench boots the guest's disk benchmark on a fresh 80 MiB image with
// the given --disk options and returns its sequential write MB/s and
// random-read IOPS as the guest measured them.
func blkbench(t *testing.T, opts string) (seqWrite, iops float64) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "bench.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 80<<20); err != nil {
		t.Fatal(err)
	}
	status, stdout, stderr := runLinux(t, "blkbench", "--disk", img+opts, "--timeout", "120s")
	i := strings.Index(stdout, "blkbench: ")
	if status != 0 || i < 0 {
		t.Fatalf("status %d, stderr %q\nconsole:\n%s", status, stderr, stdout)
	}
	var seqRead float64
	if _, err := fmt.Sscanf(stdout[i:], "blkbench: seqwrite=%f MB/s seqread=%f MB/s randread=%f IOPS", &seqWrite, &seqRead, &iops); err != nil {
		t.Fatalf("blkbench line: %v\n%s", err, stdout[i:])
	}
	t.Logf("--disk %s: seqwrite %.1f MB/s, seqread %.1f MB/s, randread %.0f IOPS", opts, seqWrite, seqRead, iops)
	return seqWrite, iops
}

// The disk's rate limits hold, as the guest measures them: requests per
// second on random 4 KiB reads, and bytes per second on sequential 1 MiB
// writes. The limits are set well below what the disk does without
// them in the rig (about 1000 IOPS and 100 MB/s).
func TestDiskRateLimitsHold(t *testing.T) {
	kvmtest.OpenHardware(t)
	_, iops := blkbench(t, ",iops=200")
	// Over the 2 s random phase the bucket's one-second burst (refilled
	// while the sequential phases ran) adds up to half again: at most 300.
	if iops > 300*1.1 || iops < 200*0.5 {
		t.Errorf("random reads at iops=200: %.0f IOPS", iops)
	}
	write, _ := blkbench(t, ",bw=8M")
	// 64 MiB at 8 MiB/s after an 8 MiB burst: about 9.1 MB/s at most.
	if mb := float64(8<<20) / 1e6; write > mb*1.25 || write < mb*0.5 {
		t.Errorf("sequential writes at bw=8M: %.1f MB/s, want about %.1f", write, mb)
	}
}

// The network's rate limit holds as a host sink measures it: the guest
// sends TCP for 5 s over the user network to the host's loopback
// (capsule-io tcpsend) with bw=64K on its interface, well below the
// 0.3-0.4 MB/s a one-vCPU rig reaches without a limit.
func TestNetRateLimitHolds(t *testing.T) {
	kvmtest.OpenHardware(t)
	sink, err := newTCPSink()
	if err != nil {
		t.Fatal(err)
	}
	defer sink.close()
	status, stdout, stderr := runLinux(t, fmt.Sprintf("netbench capsule.peer=10.0.2.2:%d", sink.port()),
		"--net", "user,hostloopback=on,bw=64K", "--timeout", "120s")
	if status != 0 {
		t.Fatalf("status %d, stderr %q\nconsole:\n%s", status, stderr, stdout)
	}
	mbps, ok := sink.result()
	if !ok {
		t.Fatalf("the sink got nothing\nconsole:\n%s", stdout)
	}
	t.Logf("TCP over the user network with bw=64K: %.3f MB/s at the host's sink", mbps)
	// 64 KiB/s is 0.066 MB/s; the first second's burst adds a fifth over
	// 5 s.
	if limit := float64(64<<10) / 1e6; mbps > limit*1.3 || mbps < limit*0.4 {
		t.Errorf("TCP at bw=64K: %.3f MB/s, want about %.3f", mbps, limit)
	}
}
