package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// The run workload of capsule bench: capsule run --rootfs ROOT -- true,
// end to end, --runs times, each broken into the phases capsule run -v
// reports on its breakdown line (see breakdown in sandbox.go), and the
// wall time seen from outside, process start to exit.

// breakdownLine is capsule run -v's breakdown line.
var breakdownLine = regexp.MustCompile(`breakdown: vmm=([\d.]+)ms kernel=([\d.]+)ms agent=([\d.]+)ms program=([\d.]+)ms stop=([\d.]+)ms total=([\d.]+)ms`)

// runPhases names the breakdown's phases, in order, as the report does.
var runPhases = []string{
	"VMM start (process start → first KVM_RUN)",
	"kernel (→ the agent, PID 1, marks its start)",
	"agent ready (root mounted, agent answering)",
	"program (start request → exit status)",
	"VM stop (→ every vCPU stopped)",
	"total inside capsule",
	"wall time (fork → exit, seen by the caller)",
}

type runReport struct {
	Workload string `json:"workload"`
	Kernel   string `json:"kernel"`
	Initrd   string `json:"initrd"`
	RootFS   string `json:"rootfs"`
	Command  string `json:"command"`
	CPUs     int    `json:"cpus"`
	Runs     int    `json:"runs"`
	Date     string `json:"date"`
	Host     string `json:"host"`
	// Samples holds, for each run, the phases in runPhases' order.
	Samples [][]time.Duration `json:"samples_ns"`
	Summary []stat            `json:"summary"`
	// Repeated counts the runs that failed and were run again.
	Repeated int `json:"repeated_runs,omitempty"`
}

// parseBreakdown reads the phases and the total from capsule run -v's
// stderr.
func parseBreakdown(stderr []byte) ([]time.Duration, bool) {
	m := breakdownLine.FindSubmatch(stderr)
	if m == nil {
		return nil, false
	}
	var out []time.Duration
	for _, s := range m[1:] {
		v, err := strconv.ParseFloat(string(s), 64)
		if err != nil {
			return nil, false
		}
		out = append(out, time.Duration(v*float64(time.Millisecond)))
	}
	return out, true
}

// benchRootFS makes a root with a static busybox as every program
// (/bin/true among them), in a new directory under the temporary one.
func benchRootFS() (string, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", fmt.Errorf("no --rootfs, and no static busybox to build one from: %w (apt-get install busybox-static)", err)
	}
	dir, err := os.MkdirTemp("", "capsule-bench-root-")
	if err != nil {
		return "", err
	}
	err = os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "bin/busybox"), bb, 0o755)
	}
	for _, a := range []string{"sh", "true"} {
		if err == nil {
			err = os.Symlink("busybox", filepath.Join(dir, "bin", a))
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

func benchRun(ctx context.Context, self string, c benchConfig, stdout, stderr io.Writer) error {
	root := c.rootfs
	if root == "" {
		var err error
		if root, err = benchRootFS(); err != nil {
			return err
		}
		defer os.RemoveAll(root)
	}
	args := []string{"run", "-v", "--kernel", c.kernel, "--cpus", strconv.Itoa(c.cpus), "--timeout", c.timeout.String()}
	if c.initrd != "" {
		args = append(args, "--initrd", c.initrd)
	}
	if c.memory > 0 {
		args = append(args, "--memory", strconv.Itoa(c.memory))
	}
	args = append(args, "--rootfs", root, "--", "true")
	rep := runReport{Workload: "run", Kernel: c.kernel, Initrd: c.initrd, RootFS: c.rootfs, Command: "capsule " + strings.Join(args, " "),
		CPUs: c.cpus, Runs: c.runs, Date: time.Now().UTC().Format("2006-01-02"), Host: hostDescription()}
	for i := range c.runs {
		var phases []time.Duration
		for attempt := 1; ; attempt++ {
			var err error
			if phases, err = runOnce(ctx, self, args); err == nil {
				break
			}
			if ctx.Err() != nil || attempt == ioAttempts {
				return fmt.Errorf("run %d: %w", i+1, err)
			}
			rep.Repeated++
			fmt.Fprintf(stderr, "bench: run %d failed, repeating it: %v\n", i+1, err)
		}
		rep.Samples = append(rep.Samples, phases)
		if !c.json {
			fmt.Fprintf(stderr, "bench: run %d/%d done\n", i+1, c.runs)
		}
	}
	for p := range runPhases {
		col := make([]time.Duration, len(rep.Samples))
		for i, s := range rep.Samples {
			col[i] = s[p]
		}
		rep.Summary = append(rep.Summary, summarize(col))
	}
	if c.json {
		return writeJSON(stdout, rep)
	}
	rep.print(stdout)
	return nil
}

// runOnce runs capsule with args and returns the breakdown's phases and
// the wall time, fork to exit.
func runOnce(ctx context.Context, self string, args []string) ([]time.Duration, error) {
	var errb bytes.Buffer
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Stderr = &errb
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	phases, ok := parseBreakdown(errb.Bytes())
	if err == nil && !ok {
		err = errors.New("no breakdown line on its stderr")
	}
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, lastBytes(errb.Bytes(), 2048))
	}
	return append(phases, wall), nil
}

func (r runReport) print(w io.Writer) {
	fmt.Fprintf(w, "capsule bench --workload run, %s, %s\n", r.Date, r.Host)
	fmt.Fprintf(w, "%s\n%d runs, %d vCPU(s)\n", r.Command, r.Runs, r.CPUs)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tmin\tmedian\tp90\t")
	for i, p := range runPhases {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", p, ms(r.Summary[i].Min), ms(r.Summary[i].Median), ms(r.Summary[i].P90))
	}
	tw.Flush()
	if r.Repeated > 0 {
		fmt.Fprintf(w, "runs repeated after a failure: %d\n", r.Repeated)
	}
}
