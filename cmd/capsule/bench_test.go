package main

import (
	"strings"
	"testing"
	"time"
)

func TestSummarizeUsesNearestRankAndSkipsMissing(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	s := summarize(ms(5, 1, 0, 3, 2, 4, 10, 9, 8, 7, 6))
	if s.N != 10 || s.Min != time.Millisecond || s.Median != 5*time.Millisecond || s.P90 != 9*time.Millisecond {
		t.Fatalf("summary %+v", s)
	}
	if s := summarize(ms(0, 0)); s.N != 0 {
		t.Fatalf("all missing: %+v", s)
	}
	if s := summarize(ms(7)); s.Min != s.Median || s.Median != s.P90 {
		t.Fatalf("one sample: %+v", s)
	}
}

func TestQEMUFirstRunFromTrace(t *testing.T) {
	trace := []byte("qemu-system-x86_64: warning: something\n" +
		"1234@1764640000.000100:kvm_vcpu_ioctl cpu_index 0, type 0xae41, arg 0x1\n" +
		"1234@1764640000.012345:kvm_vcpu_ioctl cpu_index 0, type 0xae80, arg (nil)\n" +
		"1234@1764640000.013000:kvm_vcpu_ioctl cpu_index 0, type 0xae80, arg (nil)\n")
	got, ok := qemuFirstRun(trace)
	if !ok || got != time.Unix(1764640000, 12345000) {
		t.Fatalf("first KVM_RUN = %v, %v", got, ok)
	}
	if _, ok := qemuFirstRun([]byte("no trace here\n")); ok {
		t.Fatal("found a KVM_RUN in a trace without one")
	}
}

func TestBenchReportPrintsRatios(t *testing.T) {
	r := benchReport{Kernel: "k", CPUs: 1, MemoryMiB: 128, Runs: 2,
		Capsule: []sample{{FirstRun: 2 * time.Millisecond, Boot: 50 * time.Millisecond, Init: 80 * time.Millisecond, Overhead: 3 << 20}, {FirstRun: 2 * time.Millisecond, Boot: 50 * time.Millisecond, Init: 80 * time.Millisecond, Overhead: 3 << 20}},
		QEMU:    []sample{{FirstRun: 40 * time.Millisecond, Init: 100 * time.Millisecond}, {FirstRun: 40 * time.Millisecond, Init: 100 * time.Millisecond}},
	}
	var b strings.Builder
	r.print(&b)
	for _, want := range []string{"20.00× faster", "0.80× QEMU's time", "3.00 / 3.00 / 3.00 MiB", "(c) start → init marker"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}

func TestBenchRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{{"bench"}, {"bench", "--kernel", "x", "--runs", "0"}, {"bench", "--kernel", "x", "--against", "firecracker"}} {
		if status, _, stderr := runMain(args...); status == 0 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("%v: status %d stderr %q", args, status, stderr)
		}
	}
}
