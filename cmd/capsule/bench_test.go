package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"slices"
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
	r := benchReport{Kernel: "k", QEMUKernel: "k", QEMUMachine: "microvm", CPUs: 1, MemoryMiB: 128, Runs: 2,
		Capsule: []sample{{FirstRun: 2 * time.Millisecond, Boot: 50 * time.Millisecond, Init: 80 * time.Millisecond, Overhead: 3 << 20}, {FirstRun: 2 * time.Millisecond, Boot: 50 * time.Millisecond, Init: 80 * time.Millisecond, Overhead: 3 << 20}},
		QEMU:    []sample{{FirstRun: 40 * time.Millisecond, Init: 100 * time.Millisecond}, {FirstRun: 40 * time.Millisecond, Init: 100 * time.Millisecond}},
	}
	var b strings.Builder
	r.print(&b)
	for _, want := range []string{"qemu (microvm)", "20.00× faster", "0.80× QEMU's time", "3.00 / 3.00 / 3.00 MiB", "(c) start → init marker"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}

func TestBenchReportLeavesOutPeersThatDidNotRun(t *testing.T) {
	s := sample{FirstRun: 2 * time.Millisecond, Boot: 50 * time.Millisecond, Init: 80 * time.Millisecond, Overhead: 3 << 20, RSS: 131 << 20}
	r := benchReport{Kernel: "k", CPUs: 1, MemoryMiB: 128, Runs: 2, Capsule: []sample{s, s}}
	var b strings.Builder
	r.print(&b)
	out := b.String()
	for _, no := range []string{"qemu", "QEMU", "ratio", "n/a", "initrd", "()"} {
		if strings.Contains(out, no) {
			t.Errorf("report without QEMU or initrd mentions %q:\n%s", no, out)
		}
	}
	for _, want := range []string{"kernel k, 1 vCPU, 128 MiB, 2 runs", "80.0 / 80.0 / 80.0 ms", "3.00 / 3.00 / 3.00 MiB"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	var j strings.Builder
	if err := writeJSON(&j, r.withSummary()); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ToLower(j.String()), "qemu") || strings.Contains(j.String(), `"initrd"`) {
		t.Errorf("JSON without QEMU or initrd has their fields:\n%s", j.String())
	}
	for _, want := range []string{`"overhead_bytes": 3145728`, `"rss_bytes": 137363456`, `"capsule_overhead": {`, `"median_bytes": 3145728`} {
		if !strings.Contains(j.String(), want) {
			t.Errorf("JSON lacks %s:\n%s", want, j.String())
		}
	}
	if strings.Contains(j.String(), "bytes\": {") || strings.Contains(j.String(), "_ns\": 3145728") {
		t.Errorf("JSON holds bytes under a name that is not in bytes:\n%s", j.String())
	}
}

func TestBenchIOReportLeavesOutPeersThatDidNotRun(t *testing.T) {
	r := ioReport{Workload: "disk", Kernel: "k", Runs: 1, Capsule: []ioSample{{SeqWriteMBps: 100, SeqReadMBps: 200, RandReadIOPS: 900}}}
	var b strings.Builder
	r.print(&b)
	if out := b.String(); strings.Contains(out, "qemu") || strings.Contains(out, "ratio") || strings.Contains(out, "initrd") || !strings.Contains(out, "900.0") {
		t.Errorf("report without QEMU:\n%s", out)
	}
	var j strings.Builder
	if err := writeJSON(&j, r); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(j.String(), "qemu") {
		t.Errorf("JSON without QEMU has its fields:\n%s", j.String())
	}
	r.Machine, r.QEMU = "microvm", []ioSample{{SeqWriteMBps: 50, SeqReadMBps: 100, RandReadIOPS: 450}}
	b.Reset()
	r.print(&b)
	if out := b.String(); !strings.Contains(out, "qemu (microvm)") || !strings.Contains(out, "2.00×") {
		t.Errorf("report with QEMU:\n%s", out)
	}
}

func TestBenchRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{{"bench"}, {"bench", "--kernel", "x", "--runs", "0"}, {"bench", "--kernel", "x", "--against", "firecracker"},
		{"bench", "--kernel", "x", "--workload", "tty"}, {"bench", "--kernel", "x", "--workload", "console", "--lines", "0"},
		{"bench", "--kernel", "x", "--workload", "fs", "--fs-mib", "0"}, {"bench", "--kernel", "x", "--workload", "fs", "--fs-files", "0"},
		{"bench", "--kernel", "x", "--workload", "fs", "--fs-options", "cache=loose msize=1"}} {
		if status, _, stderr := runMain(args...); status == 0 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("%v: status %d stderr %q", args, status, stderr)
		}
	}
}

func TestVerboseBootDropsOnlyQuiet(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"console=ttyS0 quiet reboot=k panic=-1 capsule.exit=0", "console=ttyS0 reboot=k panic=-1 capsule.exit=0"},
		{"quiet", ""},
		{"console=ttyS0  quietly=1 quiet", "console=ttyS0 quietly=1"},
		{"console=ttyS0", "console=ttyS0"},
	} {
		if got := withoutWord(tc.in, "quiet"); got != tc.want {
			t.Errorf("withoutWord(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestConspeedCountsOnlyWholeLines(t *testing.T) {
	line := func(i int) string {
		s := fmt.Sprintf("conspeed %06d ", i)
		return s + strings.Repeat("x", 79-len(s))
	}
	console := "capsule-init: up\r\n" + line(0) + "\r\n" + line(1) + "\n" + line(2)[:40] + "\r\n" +
		line(3) + "\r\n" + "conspeed: 320 bytes in 0.010 s = 32000 chars/s\r\n"
	if n := conspeedLines([]byte(console)); n != 3 {
		t.Fatalf("whole lines %d, want 3 (one was cut short)", n)
	}
	if m := conspeedLine.FindStringSubmatch(console); m == nil || m[3] != "32000" {
		t.Fatalf("result line: %q", m)
	}
}

func TestBenchIOReportShowsTheConsoleRate(t *testing.T) {
	r := ioReport{Workload: "console", Kernel: "k", Cmdline: "console=ttyS0 quiet", Lines: 1000, Runs: 2, Machine: "microvm",
		Capsule: []ioSample{{ConsoleCPS: 30000}, {ConsoleCPS: 20000}}, QEMU: []ioSample{{ConsoleCPS: 10000}, {ConsoleCPS: 10000}}}
	var b strings.Builder
	r.print(&b)
	for _, want := range []string{"serial console output, chars/s (guest-measured, 1000 lines of 80)", "20000.0", "10000.0", "2.00×", "cmdline console=ttyS0 quiet"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
	var j strings.Builder
	if err := writeJSON(&j, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(j.String(), `"console_chars_per_s": 30000`) || !strings.Contains(j.String(), `"lines": 1000`) {
		t.Errorf("JSON:\n%s", j.String())
	}
}

func TestFsbenchResultLines(t *testing.T) {
	console := "capsule-init: up\r\nfsbench: meta create=1.500 s stat=0.250 s unlink=0.750 s\r\n" +
		"fsbench: seqwrite=40.5 MB/s seqread=120.0 MB/s randread=900 IOPS meta=4000 files/s tar=1.500 s\r\n"
	s, ok := parseFsbench(console)
	if !ok {
		t.Fatal("no result parsed")
	}
	want := fsSample{SeqWriteMBps: 40.5, SeqReadMBps: 120, RandReadIOPS: 900, MetaFilesPerS: 4000, TarS: 1.5,
		TarFilesPerS: treeFiles / 1.5, CreateS: 1.5, StatS: 0.25, UnlinkS: 0.75}
	if s != want {
		t.Fatalf("parsed %+v, want %+v", s, want)
	}
	if _, ok := parseFsbench("fsbench: seqwrite=40.5 MB/s seqread=120.0 MB/s randread=900 IOPS meta=4000 files/s tar=1.500 s\n"); ok {
		t.Fatal("parsed a result without the meta line")
	}
}

func TestFsbenchTreeIsTheSameEveryTime(t *testing.T) {
	var a, b bytes.Buffer
	na, err := writeTree(&a)
	if err != nil {
		t.Fatal(err)
	}
	nb, _ := writeTree(&b)
	if na != nb || !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two trees differ")
	}
	tr := tar.NewReader(&a)
	files, dirs := 0, 0
	var size int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			dirs++
		case tar.TypeReg:
			files++
			size += h.Size
		}
	}
	if files != treeFiles || dirs != treeDirs || size != na {
		t.Fatalf("%d files in %d directories, %d bytes (reported %d); want %d in %d", files, dirs, size, na, treeFiles, treeDirs)
	}
}

func TestBenchFSReportRatios(t *testing.T) {
	c := fsSample{SeqWriteMBps: 100, SeqReadMBps: 200, RandReadIOPS: 1000, MetaFilesPerS: 500, TarFilesPerS: 300}
	q := fsSample{SeqWriteMBps: 50, SeqReadMBps: 200, RandReadIOPS: 2000, MetaFilesPerS: 250, TarFilesPerS: 300}
	v := fsSample{SeqWriteMBps: 125, SeqReadMBps: 400, RandReadIOPS: 1000, MetaFilesPerS: 1000, TarFilesPerS: 600}
	r := fsReport{Workload: "fs", Kernel: "k", P9Options: "msize=512000,cache=loose", MiB: 256, Files: 10000, TreeFiles: 3000,
		TreeBytes: 12e6, Runs: 1, Machine: "microvm", Capsule: []fsSample{c}, QEMU9p: []fsSample{q}, Virtiofs: []fsSample{v},
		Repeated: map[string]int{peerVirtiofs: 2}}
	var b strings.Builder
	r.print(&b)
	out := b.String()
	for _, want := range []string{"trans=virtio,version=9p2000.L,msize=512000,cache=loose", "2.00×", "0.50×", "0.80×",
		"tar x, files/s (3000 files, 12.0 MB", "qemu virtiofs", "runs repeated after a failure: qemu-virtiofs 2"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	r.QEMU9p, r.Virtiofs, r.Repeated = nil, nil, nil
	b.Reset()
	r.print(&b)
	if out := b.String(); strings.Contains(out, "qemu") || strings.Contains(out, "ratio") || strings.Contains(out, "virtiofs") {
		t.Errorf("report without QEMU:\n%s", out)
	}
}

// TestBreakdownLine: what capsule run -v prints is what bench --workload
// run reads back, and a phase that was not reached reads as no line.
func TestBreakdownLine(t *testing.T) {
	ms := time.Millisecond
	line := breakdown{firstRun: 12 * ms, marker: 812 * ms, ready: 1112 * ms, exited: 1132 * ms, stopped: 1150 * ms}.String()
	want := "breakdown: vmm=12.0ms kernel=800.0ms agent=300.0ms program=20.0ms stop=18.0ms total=1150.0ms"
	if line != want {
		t.Fatalf("line %q, want %q", line, want)
	}
	got, ok := parseBreakdown([]byte("capsule: guest agent ready\ncapsule: " + line + "\n"))
	if !ok || !slices.Equal(got, []time.Duration{12 * ms, 800 * ms, 300 * ms, 20 * ms, 18 * ms, 1150 * ms}) {
		t.Fatalf("parsed %v, %v", got, ok)
	}
	noMarker := breakdown{firstRun: 12 * ms, ready: 1112 * ms, exited: 1132 * ms, stopped: 1150 * ms}.String()
	if !strings.Contains(noMarker, "kernel=? agent=?") {
		t.Errorf("without a marker: %q", noMarker)
	}
	if _, ok := parseBreakdown([]byte(noMarker)); ok {
		t.Errorf("a line with unknown phases parsed")
	}
}
