package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/capsule-vm/capsule/vmm"
)

// QEMU's fastest configuration for a direct kernel boot: microvm without
// option ROMs, legacy PIT, PIC or RTC (measured fastest in the rig).
const qemuMachine = "microvm,x-option-roms=off,pit=off,pic=off,rtc=off"

// qemuIOMachine is QEMU's machine for the device workloads.
const qemuIOMachine = "microvm,x-option-roms=off,acpi=off"

type benchConfig struct {
	kernel, qemuKernel, initrd, cmdline, marker string
	cpus, memory, runs                          int
	against                                     string
	qemu, qemuMachine                           string
	timeout                                     time.Duration
	json                                        bool
	workload                                    string
	verboseBoot                                 bool
	lines                                       int
	// The fs workload: 9p mount options, the file's size, the files of
	// the metadata row, QEMU's virtiofsd.
	fsOptions      string
	fsMiB, fsFiles int
	virtiofsd      string
	// The run workload's root (default: a busybox root made for it).
	rootfs string
}

func cmdBench(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench", "bench --kernel K [--initrd I] [--runs N] [--against qemu] [--json]", `Boots a kernel N times and reports min, median and p90 of:
  (a) process start → first KVM_RUN          (capsule; QEMU from its kvm_vcpu_ioctl trace)
  (b) process start → the guest's boot marker (a write of 123 to port 0xf5)
  (c) process start → the init's marker line on the console, for capsule and,
      with --against qemu, for qemu-system-x86_64 in the same run, with the ratio
  (d) VMM memory overhead: capsule's RSS minus resident guest RAM
Runs alternate between capsule and QEMU so that both see the same host load.
The guest must print the marker line and then stop (the test initramfs does,
with capsule.exit=0 on its command line).
`, stdout, stderr)
	var c benchConfig
	fs.StringVar(&c.kernel, "kernel", "", "kernel to boot (required)")
	fs.StringVar(&c.initrd, "initrd", "", "initial ramdisk")
	fs.StringVar(&c.cmdline, "cmdline", "console=ttyS0 quiet reboot=k panic=-1 capsule.exit=0", "kernel command line")
	fs.StringVar(&c.marker, "marker", "capsule-init: up", "console line that marks the init running, for (c)")
	fs.IntVar(&c.cpus, "cpus", 1, "vCPUs")
	fs.IntVar(&c.memory, "memory", 128, "guest RAM in MiB")
	fs.IntVar(&c.runs, "runs", 10, "boots per VMM")
	fs.StringVar(&c.against, "against", "", `peer to compare with: "qemu" or empty`)
	fs.StringVar(&c.qemu, "qemu", "qemu-system-x86_64", "QEMU binary for --against qemu")
	fs.StringVar(&c.qemuKernel, "qemu-kernel", "", "kernel QEMU boots (default: --kernel)")
	fs.StringVar(&c.qemuMachine, "qemu-machine", qemuMachine, "QEMU -M value")
	fs.DurationVar(&c.timeout, "timeout", time.Minute, "limit for one boot")
	fs.BoolVar(&c.json, "json", false, "print the results as JSON")
	fs.StringVar(&c.workload, "workload", "boot", `what to measure: "boot" (the figures above), "disk" (virtio-blk
throughput and IOPS of capsule-io blkbench in the guest, on a fresh 80 MiB raw
image), "net" (TCP from the guest to the host over the user-mode network for
5 s, capsule-io tcpsend) or "console" (the rate at which the guest writes
--lines lines of 80 characters to its serial console, capsule-io conspeed)
or "fs" (a shared directory: sequential write and read of a --fs-mib file,
4 KiB random reads, create+stat+unlink of --fs-files files and tar x of a
3000-file tree, capsule-io fsbench; capsule's virtio-9p, and with --against
qemu QEMU's virtio-9p and virtiofsd, on a kernel with 9p and virtio-fs);
disk, net, console and fs need the test initramfs;
or "run" (capsule run --rootfs ROOT -- true end to end, in phases: VMM
start, kernel, agent ready, program, VM stop; on the default kernel and the
agent initramfs)`)
	fs.BoolVar(&c.verboseBoot, "verbose-boot", false, `drop "quiet" from --cmdline, so that the kernel prints its whole
boot log on the serial console`)
	fs.IntVar(&c.lines, "lines", 1000, "lines the guest writes in the console workload")
	fs.StringVar(&c.fsOptions, "fs-options", "msize=512000,cache=loose", `9p mount options of the fs workload, capsule's and QEMU's alike
(after trans=virtio,version=9p2000.L; empty: the kernel's defaults)`)
	fs.IntVar(&c.fsMiB, "fs-mib", 256, "size of the fs workload's file, MiB")
	fs.IntVar(&c.fsFiles, "fs-files", 10000, "files the fs workload creates, stats and unlinks")
	fs.StringVar(&c.rootfs, "rootfs", "", "root of the run workload (default: one made from /bin/busybox)")
	fs.StringVar(&c.virtiofsd, "virtiofsd", "/usr/lib/qemu/virtiofsd", "QEMU's virtiofsd, for the fs workload with --against qemu")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case c.kernel == "":
		return usageErrorf("--kernel is required")
	case c.runs < 1:
		return usageErrorf("--runs %d: must be at least 1", c.runs)
	case c.against != "" && c.against != "qemu":
		return usageErrorf("--against %q: only qemu is supported", c.against)
	case !slices.Contains([]string{"boot", "disk", "net", "console", "fs", "run"}, c.workload):
		return usageErrorf("--workload %q: want boot, disk, net, console, fs or run", c.workload)
	case c.workload == "run" && c.against != "":
		return usageErrorf("--workload run has no peer (--against)")
	case c.lines < 1 || c.lines > 1000000:
		return usageErrorf("--lines %d: want 1 to 1000000", c.lines)
	case c.fsMiB < 1 || c.fsMiB > 65536:
		return usageErrorf("--fs-mib %d: want 1 to 65536", c.fsMiB)
	case c.fsFiles < 1 || c.fsFiles > 1000000:
		return usageErrorf("--fs-files %d: want 1 to 1000000", c.fsFiles)
	case strings.ContainsAny(c.fsOptions, " \t\n"):
		return usageErrorf("--fs-options %q: no white space (it goes on the kernel command line)", c.fsOptions)
	}
	if c.verboseBoot {
		c.cmdline = withoutWord(c.cmdline, "quiet")
	}
	if c.qemuKernel == "" {
		c.qemuKernel = c.kernel
	}
	for _, f := range []struct{ flag, path string }{{"kernel", c.kernel}, {"initrd", c.initrd}, {"qemu-kernel", c.qemuKernel}} {
		if _, err := os.Stat(f.path); f.path != "" && err != nil {
			if pe, ok := errors.AsType[*os.PathError](err); ok {
				err = pe.Err // the flag names the path
			}
			return fmt.Errorf("--%s %s: %w", f.flag, f.path, err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if c.against == "qemu" {
		if c.qemu, err = exec.LookPath(c.qemu); err != nil {
			return fmt.Errorf("--against qemu: %w (apt-get install qemu-system-x86)", err)
		}
		if c.workload == "fs" {
			if c.virtiofsd, err = exec.LookPath(c.virtiofsd); err != nil {
				return fmt.Errorf("--virtiofsd: %w (apt-get install qemu-system-common)", err)
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if c.workload == "run" {
		if !fs.Changed("memory") {
			c.memory = 0 // capsule run's default
		}
		return benchRun(ctx, self, c, stdout, stderr)
	}
	if c.workload != "boot" {
		if !fs.Changed("qemu-machine") {
			// Without ACPI, microvm lists its virtio-mmio devices on the
			// kernel command line, as capsule does; their interrupts need
			// the PIC and I/O APIC it would otherwise leave out.
			c.qemuMachine = qemuIOMachine
		}
		if c.workload == "fs" {
			if !fs.Changed("memory") {
				c.memory = 512 // the guest's page cache holds the whole file
			}
			return benchFS(ctx, self, c, stdout, stderr)
		}
		return benchIO(ctx, self, c, c.workload, stdout, stderr)
	}
	rep := benchReport{Kernel: c.kernel, Initrd: c.initrd, Cmdline: c.cmdline, CPUs: c.cpus, MemoryMiB: c.memory,
		Runs: c.runs, Date: time.Now().UTC().Format("2006-01-02"), Host: hostDescription()}
	if c.against == "qemu" {
		rep.QEMUKernel, rep.QEMUMachine = c.qemuKernel, c.qemuMachine
	}
	rep.Capsule, rep.QEMU, err = alternate(c, stderr,
		func(int) (sample, error) { return benchCapsule(ctx, self, c) },
		func(int) (sample, error) { return benchQEMU(ctx, c) })
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(stdout, rep.withSummary())
	}
	rep.print(stdout)
	return nil
}

// alternate runs c.runs iterations of capsule, then QEMU when c.against
// asks for it, so that both see the same host load, and reports progress
// unless the output is JSON. The first error, naming the run, ends it.
func alternate[S any](c benchConfig, stderr io.Writer, capsule, qemu func(i int) (S, error)) (cs, qs []S, err error) {
	for i := range c.runs {
		s, err := capsule(i)
		if err != nil {
			return nil, nil, fmt.Errorf("capsule run %d: %w", i+1, err)
		}
		cs = append(cs, s)
		if c.against == "qemu" {
			q, err := qemu(i)
			if err != nil {
				return nil, nil, fmt.Errorf("qemu run %d: %w", i+1, err)
			}
			qs = append(qs, q)
		}
		if !c.json {
			fmt.Fprintf(stderr, "bench: run %d/%d done\n", i+1, c.runs)
		}
	}
	return cs, qs, nil
}

// withoutWord returns the command line without any argument equal to word.
func withoutWord(cmdline, word string) string {
	return strings.Join(slices.DeleteFunc(strings.Fields(cmdline), func(f string) bool { return f == word }), " ")
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func hostDescription() string {
	h := vmm.Probe()
	name, _ := os.Hostname()
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kind := "kvm: " + h.Kind.String()
	if h.Vendor != "" && h.Kind == vmm.KVMHardware {
		kind += " (kvm_" + h.Vendor + ")"
	}
	if os.Getenv("CAPSULE_RIG") == "1" {
		kind += ", nested rig (TCG L1)"
	}
	var parts []string
	for _, p := range []string{name, model, fmt.Sprintf("%d CPUs", runtime.NumCPU()), kind} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, ", ")
}

// sample is one boot's measurements; zero means not measured (QEMU has no
// boot marker, and capsule's overhead is not measured for QEMU), and JSON
// leaves it out.
type sample struct {
	FirstRun time.Duration `json:"first_run_ns,omitempty"`
	Boot     time.Duration `json:"boot_marker_ns,omitempty"`
	Init     time.Duration `json:"init_marker_ns,omitempty"`
	Overhead uint64        `json:"overhead_bytes,omitempty"`
	RSS      uint64        `json:"rss_bytes,omitempty"`
}

// processNote describes how a benchmarked process ended, for an error:
// its exit, the end of its stderr and the last console lines, each where
// there is one.
func processNote(waitErr error, stderr string, tail []string) string {
	note := "exit status 0"
	if waitErr != nil {
		note = waitErr.Error()
	}
	if stderr = strings.TrimSpace(stderr); stderr != "" {
		note += fmt.Sprintf("; stderr %q", stderr)
	}
	if len(tail) > 0 {
		note += fmt.Sprintf("; last lines %q", tail)
	}
	return note
}

// watchConsole reads r until EOF and sends the time since start when a
// line containing marker appears; it keeps the last lines for errors.
func watchConsole(r io.Reader, marker string, start time.Time, found chan<- time.Duration, tail *[]string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sent := false
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if !sent && strings.Contains(line, marker) {
			found <- time.Since(start)
			sent = true
		}
		*tail = append(*tail, line)
		if len(*tail) > 20 {
			*tail = (*tail)[1:]
		}
	}
	if !sent {
		found <- 0
	}
}

func benchCapsule(ctx context.Context, self string, c benchConfig) (sample, error) {
	args := []string{"run", "-q", "--kernel", c.kernel, "--cmdline", c.cmdline,
		"--cpus", strconv.Itoa(c.cpus), "--memory", strconv.Itoa(c.memory), "--timeout", c.timeout.String(), "--stats-fd", "3"}
	if c.initrd != "" {
		args = append(args, "--initrd", c.initrd)
	}
	cmd := exec.CommandContext(ctx, self, args...)
	statsR, statsW, err := os.Pipe()
	if err != nil {
		return sample{}, err
	}
	defer statsR.Close()
	cmd.ExtraFiles = []*os.File{statsW}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		statsW.Close()
		return sample{}, err
	}
	found := make(chan time.Duration, 1)
	var tail []string
	start := time.Now()
	if err := cmd.Start(); err != nil {
		statsW.Close()
		return sample{}, err
	}
	statsW.Close()
	go watchConsole(out, c.marker, start, found, &tail)
	var st runStats
	statsErr := json.NewDecoder(statsR).Decode(&st)
	init := <-found
	waitErr := cmd.Wait()
	if init == 0 {
		return sample{}, fmt.Errorf("no %q line on the console (%s)", c.marker, processNote(waitErr, stderr.String(), tail))
	}
	if statsErr != nil {
		return sample{}, fmt.Errorf("no statistics from capsule run: %v (%s)", statsErr, processNote(waitErr, stderr.String(), nil))
	}
	return sample{
		FirstRun: time.Duration(st.FirstRunNS), Boot: time.Duration(st.BootNS), Init: init,
		RSS: st.RSS, Overhead: max(st.RSS, st.GuestResident) - st.GuestResident,
	}, nil
}

// qemuTraceLine matches QEMU's log-backend trace of a vCPU ioctl:
// "PID@SECONDS.MICROS:kvm_vcpu_ioctl cpu_index 0, type 0xae80, arg (nil)".
var qemuTraceLine = regexp.MustCompile(`^\d+@(\d+)\.(\d+):kvm_vcpu_ioctl cpu_index \d+, type 0xae80\b`)

// qemuFirstRun finds the wall-clock time of QEMU's first KVM_RUN in its
// trace output.
func qemuFirstRun(trace []byte) (time.Time, bool) {
	for _, line := range strings.Split(string(trace), "\n") {
		if m := qemuTraceLine.FindStringSubmatch(line); m != nil {
			sec, err1 := strconv.ParseInt(m[1], 10, 64)
			us, err2 := strconv.ParseInt(m[2], 10, 64)
			if err1 == nil && err2 == nil {
				return time.Unix(sec, us*1000), true
			}
		}
	}
	return time.Time{}, false
}

// qemuArgs is QEMU's command line for a direct kernel boot in the
// configuration under test, with isa-debug-exit on the exit port.
func qemuArgs(c benchConfig) []string {
	args := []string{"-accel", "kvm", "-M", c.qemuMachine, "-cpu", "host",
		"-smp", strconv.Itoa(c.cpus), "-m", strconv.Itoa(c.memory) + "M",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", c.qemuKernel, "-append", c.cmdline,
		"-device", "isa-debug-exit,iobase=0xf4,iosize=0x01"}
	if c.initrd != "" {
		args = append(args, "-initrd", c.initrd)
	}
	return args
}

// benchQEMU boots QEMU once untraced for (c) and its RSS, then once with
// the kvm_vcpu_ioctl trace for (a), stopped at its first KVM_RUN: tracing
// every ioctl of a whole boot would slow QEMU down and skew (c).
func benchQEMU(ctx context.Context, c benchConfig) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.qemu, qemuArgs(c)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return sample{}, err
	}
	found := make(chan time.Duration, 1)
	var tail []string
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return sample{}, err
	}
	go watchConsole(out, c.marker, start, found, &tail)
	init := <-found
	var rss uint64
	if init > 0 {
		rss = processRSS(cmd.Process.Pid)
	}
	waitErr := cmd.Wait()
	if init == 0 {
		return sample{}, fmt.Errorf("no %q line on QEMU's console (%s)", c.marker, processNote(waitErr, lastBytes(stderr.Bytes(), 400), tail))
	}
	s := sample{Init: init, RSS: rss}
	s.FirstRun, err = qemuTimeToFirstRun(ctx, c)
	return s, err
}

// qemuTimeToFirstRun starts QEMU with the kvm_vcpu_ioctl trace and returns
// the time from its start to its first KVM_RUN, then kills it.
func qemuTimeToFirstRun(ctx context.Context, c benchConfig) (time.Duration, error) {
	args := append(qemuArgs(c), "-trace", "enable=kvm_vcpu_ioctl", "-msg", "timestamp=on")
	cmd := exec.CommandContext(ctx, c.qemu, args...)
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	var first time.Time
	var lines []byte
	sc := bufio.NewScanner(errPipe)
	for sc.Scan() {
		if t, ok := qemuFirstRun(sc.Bytes()); ok {
			first = t
			break
		}
		if len(lines) < 2000 {
			lines = append(append(lines, sc.Bytes()...), '\n')
		}
	}
	cmd.Process.Kill()
	go io.Copy(io.Discard, errPipe) // let Wait finish
	cmd.Wait()
	switch {
	case first.IsZero() && len(lines) == 0:
		return 0, errors.New("QEMU printed no KVM_RUN trace, nor anything else on stderr (is its trace backend \"log\"?)")
	case first.IsZero():
		return 0, fmt.Errorf("QEMU printed no KVM_RUN trace (is its trace backend \"log\"?): %q", lines)
	}
	return first.Sub(start), nil
}

func lastBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// processRSS reads VmRSS of a process, 0 if unknown.
func processRSS(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.Fields(v)[0], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// stat is min, median and p90 of a time.
type stat struct {
	N      int           `json:"n"`
	Min    time.Duration `json:"min_ns"`
	Median time.Duration `json:"median_ns"`
	P90    time.Duration `json:"p90_ns"`
}

// byteStat is min, median and p90 of a size.
type byteStat struct {
	N      int    `json:"n"`
	Min    uint64 `json:"min_bytes"`
	Median uint64 `json:"median_bytes"`
	P90    uint64 `json:"p90_bytes"`
}

func summarize(vals []time.Duration) stat {
	n, lo, med, p90 := quantiles(vals)
	return stat{N: n, Min: lo, Median: med, P90: p90}
}

func summarizeBytes(vals []uint64) byteStat {
	n, lo, med, p90 := quantiles(vals)
	return byteStat{N: n, Min: lo, Median: med, P90: p90}
}

// quantiles returns how many of vals are measured (not zero) and their
// min, median and p90, by nearest rank.
func quantiles[T time.Duration | uint64](vals []T) (n int, lo, med, p90 T) {
	var v []T
	for _, x := range vals {
		if x > 0 {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return 0, 0, 0, 0
	}
	slices.Sort(v)
	rank := func(p float64) T {
		i := int(p*float64(len(v))+0.999999) - 1
		return v[min(max(i, 0), len(v)-1)]
	}
	return len(v), v[0], rank(0.5), rank(0.9)
}

type benchReport struct {
	Kernel      string       `json:"kernel"`
	QEMUKernel  string       `json:"qemu_kernel,omitempty"`  // with --against qemu
	QEMUMachine string       `json:"qemu_machine,omitempty"` // with --against qemu
	Initrd      string       `json:"initrd,omitempty"`
	Cmdline     string       `json:"cmdline"`
	CPUs        int          `json:"cpus"`
	MemoryMiB   int          `json:"memory_mib"`
	Runs        int          `json:"runs"`
	Date        string       `json:"date"`
	Host        string       `json:"host"`
	Capsule     []sample     `json:"capsule"`
	QEMU        []sample     `json:"qemu,omitempty"`
	Summary     benchSummary `json:"summary"`
}

type benchSummary struct {
	CapsuleFirstRun stat     `json:"capsule_first_run"`
	CapsuleBoot     stat     `json:"capsule_boot_marker"`
	CapsuleInit     stat     `json:"capsule_init_marker"`
	CapsuleOverhead byteStat `json:"capsule_overhead"`
	// QEMU's figures and the ratios are there when QEMU ran.
	QEMUFirstRun    *stat     `json:"qemu_first_run,omitempty"`
	QEMUInit        *stat     `json:"qemu_init_marker,omitempty"`
	QEMURSS         *byteStat `json:"qemu_rss,omitempty"`
	InitRatio       float64   `json:"init_ratio_capsule_over_qemu,omitempty"`
	FirstRunSpeedup float64   `json:"first_run_speedup_qemu_over_capsule,omitempty"`
}

func pick[T any](s []sample, f func(sample) T) []T {
	out := make([]T, len(s))
	for i, x := range s {
		out[i] = f(x)
	}
	return out
}

func (r benchReport) withSummary() benchReport {
	s := &r.Summary
	s.CapsuleFirstRun = summarize(pick(r.Capsule, func(x sample) time.Duration { return x.FirstRun }))
	s.CapsuleBoot = summarize(pick(r.Capsule, func(x sample) time.Duration { return x.Boot }))
	s.CapsuleInit = summarize(pick(r.Capsule, func(x sample) time.Duration { return x.Init }))
	s.CapsuleOverhead = summarizeBytes(pick(r.Capsule, func(x sample) uint64 { return x.Overhead }))
	if len(r.QEMU) == 0 {
		return r
	}
	firstRun := summarize(pick(r.QEMU, func(x sample) time.Duration { return x.FirstRun }))
	init := summarize(pick(r.QEMU, func(x sample) time.Duration { return x.Init }))
	rss := summarizeBytes(pick(r.QEMU, func(x sample) uint64 { return x.RSS }))
	s.QEMUFirstRun, s.QEMUInit, s.QEMURSS = &firstRun, &init, &rss
	if init.Median > 0 && s.CapsuleInit.Median > 0 {
		s.InitRatio = float64(s.CapsuleInit.Median) / float64(init.Median)
	}
	if s.CapsuleFirstRun.Median > 0 && firstRun.Median > 0 {
		s.FirstRunSpeedup = float64(firstRun.Median) / float64(s.CapsuleFirstRun.Median)
	}
	return r
}

func fmtDur(s stat) string {
	if s.N == 0 {
		return "n/a"
	}
	f := func(d time.Duration) string { return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) }
	return f(s.Min) + " / " + f(s.Median) + " / " + f(s.P90) + " ms"
}

func fmtMiB(s byteStat) string {
	if s.N == 0 {
		return "n/a"
	}
	f := func(b uint64) string { return strconv.FormatFloat(float64(b)/(1<<20), 'f', 2, 64) }
	return f(s.Min) + " / " + f(s.Median) + " / " + f(s.P90) + " MiB"
}

// qemuColumn heads QEMU's column: "qemu (MACHINE)".
func qemuColumn(machine string) string {
	if machine == "" {
		return "qemu"
	}
	return "qemu (" + machine + ")"
}

func (r benchReport) print(w io.Writer) {
	r = r.withSummary()
	s := r.Summary
	fmt.Fprintf(w, "capsule bench, %s, %s\n", r.Date, r.Host)
	fmt.Fprintf(w, "kernel %s", r.Kernel)
	if r.Initrd != "" {
		fmt.Fprintf(w, ", initrd %s", r.Initrd)
	}
	fmt.Fprintf(w, ", %d vCPU, %d MiB, %d runs", r.CPUs, r.MemoryMiB, r.Runs)
	if r.QEMUKernel != "" && r.QEMUKernel != r.Kernel {
		fmt.Fprintf(w, ", QEMU boots %s", r.QEMUKernel)
	}
	fmt.Fprintf(w, "\n")
	if r.Cmdline != "" {
		fmt.Fprintf(w, "cmdline %s\n", r.Cmdline)
	}
	fmt.Fprintf(w, "\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(r.QEMU) == 0 {
		fmt.Fprintf(tw, "metric (min / median / p90)\tcapsule\n")
		fmt.Fprintf(tw, "(a) start → first KVM_RUN\t%s\n", fmtDur(s.CapsuleFirstRun))
		fmt.Fprintf(tw, "(b) start → boot marker\t%s\n", fmtDur(s.CapsuleBoot))
		fmt.Fprintf(tw, "(c) start → init marker\t%s\n", fmtDur(s.CapsuleInit))
		fmt.Fprintf(tw, "(d) VMM overhead (RSS − guest RAM)\t%s\n", fmtMiB(s.CapsuleOverhead))
		tw.Flush()
		return
	}
	fmt.Fprintf(tw, "metric (min / median / p90)\tcapsule\t%s\tratio (median)\n", qemuColumn(r.QEMUMachine))
	ratio := func(x float64, suffix string) string {
		if x == 0 {
			return "n/a"
		}
		return strconv.FormatFloat(x, 'f', 2, 64) + suffix
	}
	fmt.Fprintf(tw, "(a) start → first KVM_RUN\t%s\t%s\t%s\n", fmtDur(s.CapsuleFirstRun), fmtDur(*s.QEMUFirstRun), ratio(s.FirstRunSpeedup, "× faster"))
	fmt.Fprintf(tw, "(b) start → boot marker\t%s\t%s\t\n", fmtDur(s.CapsuleBoot), "n/a")
	fmt.Fprintf(tw, "(c) start → init marker\t%s\t%s\t%s\n", fmtDur(s.CapsuleInit), fmtDur(*s.QEMUInit), ratio(s.InitRatio, "× QEMU's time"))
	fmt.Fprintf(tw, "(d) VMM overhead (RSS − guest RAM)\t%s\t%s\t\n", fmtMiB(s.CapsuleOverhead), "RSS "+fmtMiB(*s.QEMURSS))
	tw.Flush()
}
