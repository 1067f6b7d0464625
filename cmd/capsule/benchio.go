package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Device workloads of capsule bench: the test initramfs runs the
// measurement in the guest (capsule.action=blkbench, netbench or console) under
// capsule and under QEMU with the same kernel, initrd and virtio-mmio
// devices, alternating.

// ioSample is one run's figures; zero means not measured.
type ioSample struct {
	SeqWriteMBps float64 `json:"seq_write_mbps,omitempty"`
	SeqReadMBps  float64 `json:"seq_read_mbps,omitempty"`
	RandReadIOPS float64 `json:"rand_read_4k_iops,omitempty"`
	TCPMBps      float64 `json:"tcp_guest_to_host_mbps,omitempty"`
	// ConsoleCPS is the guest's serial console output rate, in
	// characters a second, as the guest measured it.
	ConsoleCPS float64 `json:"console_chars_per_s,omitempty"`
}

type ioReport struct {
	Workload string     `json:"workload"`
	Machine  string     `json:"qemu_machine,omitempty"` // with --against qemu
	Kernel   string     `json:"kernel"`
	Initrd   string     `json:"initrd,omitempty"`
	Cmdline  string     `json:"cmdline"`         // before the workload's own arguments
	Lines    int        `json:"lines,omitempty"` // console: lines the guest writes
	Runs     int        `json:"runs"`
	Date     string     `json:"date"`
	Host     string     `json:"host"`
	Capsule  []ioSample `json:"capsule"`
	QEMU     []ioSample `json:"qemu,omitempty"`
	// Repeated counts the runs of each VMM that failed (a hung guest
	// killed at --timeout, say) and were run again.
	Repeated map[string]int `json:"repeated_runs,omitempty"`
}

// ioAttempts bounds the tries of one run. Repeating a failed run keeps a
// rare hang of the nested rig (TCG's nested SVM can lose a cross-CPU kick
// of a running L2 guest, which both VMMs depend on) from ending the whole
// benchmark; the report says how many runs were repeated.
const ioAttempts = 3

// blkbenchLine is capsule-io blkbench's result line.
var blkbenchLine = regexp.MustCompile(`blkbench: seqwrite=([\d.]+) MB/s seqread=([\d.]+) MB/s randread=([\d.]+) IOPS`)

// conspeedLine is capsule-io conspeed's result line.
var conspeedLine = regexp.MustCompile(`conspeed: (\d+) bytes in ([\d.]+) s = ([\d.]+) chars/s`)

// conspeedLines counts the lines of capsule-io conspeed's output that
// reached the host whole: "conspeed NNNNNN " and 63 more characters. A
// rate is only valid when none was lost.
func conspeedLines(console []byte) int {
	n := 0
	for line := range strings.Lines(string(console)) {
		line = strings.TrimRight(line, "\r\n")
		if len(line) == 79 && strings.HasPrefix(line, "conspeed ") && !strings.HasPrefix(line, "conspeed: ") {
			n++
		}
	}
	return n
}

func benchIO(ctx context.Context, self string, c benchConfig, workload string, stdout, stderr io.Writer) error {
	rep := ioReport{Workload: workload, Kernel: c.kernel, Initrd: c.initrd, Cmdline: c.cmdline, Runs: c.runs,
		Date: time.Now().UTC().Format("2006-01-02"), Host: hostDescription()}
	if c.against == "qemu" {
		rep.Machine = c.qemuMachine
	}
	if workload == "console" {
		rep.Lines = c.lines
	}
	run := func(i int, qemu bool) (ioSample, error) {
		who := "capsule"
		if qemu {
			who = "qemu"
		}
		var err error
		for attempt := 1; attempt <= ioAttempts; attempt++ {
			var s ioSample
			if s, err = ioRun(ctx, self, c, workload, qemu); err == nil {
				return s, nil
			}
			if ctx.Err() != nil {
				break
			}
			if rep.Repeated == nil {
				rep.Repeated = map[string]int{}
			}
			rep.Repeated[who]++
			fmt.Fprintf(stderr, "bench: %s run %d failed, repeating it: %v\n", who, i+1, err)
		}
		return ioSample{}, err
	}
	var err error
	rep.Capsule, rep.QEMU, err = alternate(c, stderr,
		func(i int) (ioSample, error) { return run(i, false) },
		func(i int) (ioSample, error) { return run(i, true) })
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(stdout, rep)
	}
	rep.print(stdout)
	return nil
}

// ioRun boots the guest once under capsule (or QEMU) with the workload's
// device and returns what it measured.
func ioRun(ctx context.Context, self string, c benchConfig, workload string, qemu bool) (ioSample, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "capsule-bench-")
	if err != nil {
		return ioSample{}, err
	}
	defer os.RemoveAll(dir)
	cmdline := c.cmdline
	var capsuleArgs, qemuDev []string
	var sink *tcpSink
	switch workload {
	case "disk":
		img := filepath.Join(dir, "disk.img")
		if err := os.WriteFile(img, nil, 0o644); err != nil {
			return ioSample{}, err
		}
		if err := os.Truncate(img, 80<<20); err != nil {
			return ioSample{}, err
		}
		cmdline += " capsule.action=blkbench"
		capsuleArgs = []string{"--disk", img}
		qemuDev = []string{"-drive", "id=d0,file=" + img + ",format=raw,if=none", "-device", "virtio-blk-device,drive=d0"}
	case "net":
		if sink, err = newTCPSink(); err != nil {
			return ioSample{}, err
		}
		defer sink.close()
		cmdline += fmt.Sprintf(" capsule.action=netbench capsule.peer=10.0.2.2:%d", sink.port())
		capsuleArgs = []string{"--net", "user,hostloopback=on"} // the sink is on host loopback
		qemuDev = []string{"-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0"}
	case "console":
		cmdline += fmt.Sprintf(" capsule.action=console capsule.lines=%d", c.lines)
	}
	var cmd *exec.Cmd
	if qemu {
		qc := c
		qc.cmdline = cmdline
		cmd = exec.CommandContext(ctx, c.qemu, append(qemuArgs(qc), qemuDev...)...)
	} else {
		args := append([]string{"run", "-q", "--kernel", c.kernel, "--cmdline", cmdline,
			"--cpus", strconv.Itoa(c.cpus), "--memory", strconv.Itoa(c.memory)}, capsuleArgs...)
		if c.initrd != "" {
			args = append(args, "--initrd", c.initrd)
		}
		cmd = exec.CommandContext(ctx, self, args...)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	runErr := cmd.Run()
	who := "capsule"
	if qemu {
		who = "QEMU"
	}
	fail := func(what string) (ioSample, error) {
		note := processNote(runErr, lastBytes(errOut.Bytes(), 300), nil)
		if console := lastBytes(out.Bytes(), 600); console != "" {
			note += fmt.Sprintf("; console %q", console)
		}
		return ioSample{}, fmt.Errorf("%s: %s (%s)", who, what, note)
	}
	switch workload {
	case "disk":
		m := blkbenchLine.FindStringSubmatch(out.String())
		if m == nil {
			return fail("no blkbench result on the console")
		}
		var v [3]float64
		for i := range v {
			v[i], _ = strconv.ParseFloat(m[i+1], 64)
		}
		return ioSample{SeqWriteMBps: v[0], SeqReadMBps: v[1], RandReadIOPS: v[2]}, nil
	case "console":
		m := conspeedLine.FindStringSubmatch(out.String())
		if m == nil {
			return fail("no conspeed result on the console")
		}
		if n := conspeedLines(out.Bytes()); n != c.lines {
			return fail(fmt.Sprintf("%d of the guest's %d console lines arrived whole", n, c.lines))
		}
		cps, _ := strconv.ParseFloat(m[3], 64)
		return ioSample{ConsoleCPS: cps}, nil
	default:
		mbps, ok := sink.result()
		if !ok || !strings.Contains(out.String(), "netbench: sent") {
			return fail("the guest did not send its 5 s of TCP")
		}
		return ioSample{TCPMBps: mbps}, nil
	}
}

// tcpSink takes one connection on 127.0.0.1 (the guest's 10.0.2.2) and
// measures the rate from its first byte to its end.
type tcpSink struct {
	l     net.Listener
	wg    sync.WaitGroup
	bytes int64
	dur   time.Duration
}

func newTCPSink() (*tcpSink, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &tcpSink{l: l}
	s.wg.Go(func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1<<20)
		var start time.Time
		for {
			n, err := c.Read(buf)
			if n > 0 && start.IsZero() {
				start = time.Now()
			}
			s.bytes += int64(n)
			if err != nil {
				break
			}
		}
		if !start.IsZero() {
			s.dur = time.Since(start)
		}
	})
	return s, nil
}

func (s *tcpSink) port() int { return s.l.Addr().(*net.TCPAddr).Port }

func (s *tcpSink) close() {
	s.l.Close()
	s.wg.Wait()
}

// result is the rate in MB/s; it waits for the connection to end.
func (s *tcpSink) result() (float64, bool) {
	s.close()
	if s.dur <= 0 || s.bytes == 0 {
		return 0, false
	}
	return float64(s.bytes) / 1e6 / s.dur.Seconds(), true
}

func median(v []float64) float64 {
	var x []float64
	for _, f := range v {
		if f > 0 {
			x = append(x, f)
		}
	}
	if len(x) == 0 {
		return 0
	}
	slices.Sort(x)
	return x[(len(x)-1)/2]
}

func (r ioReport) print(w io.Writer) {
	fmt.Fprintf(w, "capsule bench --workload %s, %s, %s\n", r.Workload, r.Date, r.Host)
	fmt.Fprintf(w, "kernel %s", r.Kernel)
	if r.Initrd != "" {
		fmt.Fprintf(w, ", initrd %s", r.Initrd)
	}
	if len(r.QEMU) > 0 {
		fmt.Fprintf(w, ", %d runs each, alternating\n", r.Runs)
	} else {
		fmt.Fprintf(w, ", %d runs\n", r.Runs)
	}
	if r.Cmdline != "" {
		fmt.Fprintf(w, "cmdline %s\n", r.Cmdline)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(r.QEMU) > 0 {
		fmt.Fprintf(tw, "metric (median; higher is better)\tcapsule\t%s\tratio capsule/qemu\n", qemuColumn(r.Machine))
	} else {
		fmt.Fprintf(tw, "metric (median; higher is better)\tcapsule\n")
	}
	row := func(name string, f func(ioSample) float64) {
		var cv, qv []float64
		for _, s := range r.Capsule {
			cv = append(cv, f(s))
		}
		for _, s := range r.QEMU {
			qv = append(qv, f(s))
		}
		c, q := median(cv), median(qv)
		if len(r.QEMU) == 0 {
			fmt.Fprintf(tw, "%s\t%s\n", name, strconv.FormatFloat(c, 'f', 1, 64))
			return
		}
		qs, ratio := "n/a", "n/a"
		if q > 0 {
			qs = strconv.FormatFloat(q, 'f', 1, 64)
			ratio = strconv.FormatFloat(c/q, 'f', 2, 64) + "×"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", name, strconv.FormatFloat(c, 'f', 1, 64), qs, ratio)
	}
	switch r.Workload {
	case "disk":
		row("virtio-blk sequential write, MB/s (1 MiB, O_DIRECT)", func(s ioSample) float64 { return s.SeqWriteMBps })
		row("virtio-blk sequential read, MB/s (1 MiB, O_DIRECT)", func(s ioSample) float64 { return s.SeqReadMBps })
		row("virtio-blk random read, IOPS (4 KiB, queue depth 1)", func(s ioSample) float64 { return s.RandReadIOPS })
	case "console":
		row(fmt.Sprintf("serial console output, chars/s (guest-measured, %d lines of 80)", r.Lines), func(s ioSample) float64 { return s.ConsoleCPS })
	default:
		row("virtio-net TCP guest → host, MB/s (user-mode network)", func(s ioSample) float64 { return s.TCPMBps })
	}
	tw.Flush()
	if len(r.Repeated) > 0 {
		fmt.Fprintf(w, "\nruns repeated after a failure: capsule %d", r.Repeated["capsule"])
		if len(r.QEMU) > 0 {
			fmt.Fprintf(w, ", qemu %d", r.Repeated["qemu"])
		}
		fmt.Fprintln(w)
	}
}
