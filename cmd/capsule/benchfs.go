package main

import (
	"archive/tar"
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
	"text/tabwriter"
	"time"
)

// The file-system workload of capsule bench: the test initramfs mounts a
// host directory shared under fsTag and runs capsule-io fsbench on it
// (capsule.action=fsbench), under capsule (virtio-9p, --share) and, with
// --against qemu, under QEMU with the same kernel and initrd through its
// own virtio-9p (-fsdev local) and through virtiofsd (vhost-user-fs), in
// turn.

// fsTag is the mount tag of the benchmark's share.
const fsTag = "fsbench"

// The tree that the guest extracts with tar: treeFiles files of 0 to 8 KiB
// in treeDirs directories.
const (
	treeFiles = 3000
	treeDirs  = 60
)

// modernMMIO puts QEMU's virtio-mmio devices in the version 2 (virtio
// 1.0) layout, as capsule's are, rather than the legacy one QEMU gives by
// default, which virtiofsd refuses.
var modernMMIO = []string{"-global", "virtio-mmio.force-legacy=false"}

// Peers of the fs workload.
const (
	peerCapsule  = "capsule"
	peerQEMU9p   = "qemu-9p"
	peerVirtiofs = "qemu-virtiofs"
)

// fsSample is one run's figures.
type fsSample struct {
	SeqWriteMBps  float64 `json:"seq_write_mbps"`
	SeqReadMBps   float64 `json:"seq_read_mbps"`
	RandReadIOPS  float64 `json:"rand_read_4k_iops"`
	MetaFilesPerS float64 `json:"create_stat_unlink_files_per_s"`
	TarFilesPerS  float64 `json:"tar_x_files_per_s"`
	// The phases of the metadata row and tar's time, in seconds.
	CreateS float64 `json:"create_s"`
	StatS   float64 `json:"stat_s"`
	UnlinkS float64 `json:"unlink_s"`
	TarS    float64 `json:"tar_x_s"`
}

type fsReport struct {
	Workload string `json:"workload"`
	Machine  string `json:"qemu_machine,omitempty"` // with --against qemu
	Kernel   string `json:"kernel"`
	Initrd   string `json:"initrd,omitempty"`
	Cmdline  string `json:"cmdline"`
	// P9Options are the 9p mount options of capsule's and QEMU's 9p
	// (after trans=virtio,version=9p2000.L).
	P9Options string `json:"p9_mount_options"`
	MiB       int    `json:"file_mib"`
	Files     int    `json:"meta_files"`
	TreeFiles int    `json:"tar_files"`
	TreeBytes int64  `json:"tar_bytes"`
	Runs      int    `json:"runs"`
	Date      string `json:"date"`
	Host      string `json:"host"`

	Capsule  []fsSample `json:"capsule"`
	QEMU9p   []fsSample `json:"qemu_9p,omitempty"`
	Virtiofs []fsSample `json:"qemu_virtiofs,omitempty"`
	// Repeated counts each peer's runs that failed and were run again.
	Repeated map[string]int `json:"repeated_runs,omitempty"`
}

// fsbenchLine and fsbenchMeta are capsule-io fsbench's result lines.
var (
	fsbenchLine = regexp.MustCompile(`fsbench: seqwrite=([\d.]+) MB/s seqread=([\d.]+) MB/s randread=([\d.]+) IOPS meta=([\d.]+) files/s tar=([\d.]+) s`)
	fsbenchMeta = regexp.MustCompile(`fsbench: meta create=([\d.]+) s stat=([\d.]+) s unlink=([\d.]+) s`)
)

func (s fsSample) String() string {
	return fmt.Sprintf("write %.1f MB/s, read %.1f MB/s, %.0f IOPS, %.0f files/s (create %.2f s, stat %.2f s, unlink %.2f s), tar x %.2f s",
		s.SeqWriteMBps, s.SeqReadMBps, s.RandReadIOPS, s.MetaFilesPerS, s.CreateS, s.StatS, s.UnlinkS, s.TarS)
}

// parseFsbench reads capsule-io fsbench's results from the console.
func parseFsbench(console string) (fsSample, bool) {
	m, meta := fsbenchLine.FindStringSubmatch(console), fsbenchMeta.FindStringSubmatch(console)
	if m == nil || meta == nil {
		return fsSample{}, false
	}
	f := func(s string) float64 { v, _ := strconv.ParseFloat(s, 64); return v }
	s := fsSample{SeqWriteMBps: f(m[1]), SeqReadMBps: f(m[2]), RandReadIOPS: f(m[3]), MetaFilesPerS: f(m[4]), TarS: f(m[5]),
		CreateS: f(meta[1]), StatS: f(meta[2]), UnlinkS: f(meta[3])}
	if s.TarS > 0 {
		s.TarFilesPerS = treeFiles / s.TarS
	}
	return s, true
}

// writeTree writes the tar archive of the tree the guest extracts: the
// same bytes every time.
func writeTree(w io.Writer) (int64, error) {
	tw := tar.NewWriter(w)
	var total int64
	x := uint32(1)
	next := func() uint32 { x = x*1664525 + 1013904223; return x >> 8 }
	mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	data := bytes.Repeat([]byte("capsule fsbench tree\n"), 8192/21+1)
	for d := range treeDirs {
		dir := fmt.Sprintf("d%02d/", d)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: mtime}); err != nil {
			return 0, err
		}
		for f := range treeFiles / treeDirs {
			size := int64(next() % 8193)
			hdr := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("%sf%03d", dir, f), Mode: 0o644, Size: size, ModTime: mtime}
			if err := tw.WriteHeader(hdr); err != nil {
				return 0, err
			}
			if _, err := tw.Write(data[:size]); err != nil {
				return 0, err
			}
			total += size
		}
	}
	return total, tw.Close()
}

func benchFS(ctx context.Context, self string, c benchConfig, stdout, stderr io.Writer) error {
	rep := fsReport{Workload: "fs", Kernel: c.kernel, Initrd: c.initrd, Cmdline: c.cmdline, P9Options: c.fsOptions,
		MiB: c.fsMiB, Files: c.fsFiles, TreeFiles: treeFiles, Runs: c.runs,
		Date: time.Now().UTC().Format("2006-01-02"), Host: hostDescription()}
	peers := []string{peerCapsule}
	if c.against == "qemu" {
		rep.Machine = c.qemuMachine
		peers = append(peers, peerQEMU9p, peerVirtiofs)
	}
	tmp, err := os.MkdirTemp("", "capsule-bench-fs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	tree := filepath.Join(tmp, "tree.tar")
	f, err := os.Create(tree)
	if err != nil {
		return err
	}
	rep.TreeBytes, err = writeTree(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("tar tree: %w", err)
	}
	samples := map[string]*[]fsSample{peerCapsule: &rep.Capsule, peerQEMU9p: &rep.QEMU9p, peerVirtiofs: &rep.Virtiofs}
	for i := range c.runs {
		for _, peer := range peers {
			var s fsSample
			for attempt := 1; ; attempt++ {
				start := time.Now()
				if s, err = fsRun(ctx, self, c, peer, tree); err == nil {
					if !c.json {
						fmt.Fprintf(stderr, "bench: %s run %d: %.1f s: %s\n", peer, i+1, time.Since(start).Seconds(), s)
					}
					break
				}
				if ctx.Err() != nil || attempt == ioAttempts {
					return fmt.Errorf("%s run %d: %w", peer, i+1, err)
				}
				if rep.Repeated == nil {
					rep.Repeated = map[string]int{}
				}
				rep.Repeated[peer]++
				fmt.Fprintf(stderr, "bench: %s run %d failed, repeating it: %v\n", peer, i+1, err)
			}
			*samples[peer] = append(*samples[peer], s)
		}
		if !c.json {
			fmt.Fprintf(stderr, "bench: run %d/%d done\n", i+1, c.runs)
		}
	}
	if c.json {
		return writeJSON(stdout, rep)
	}
	rep.print(stdout)
	return nil
}

// fsRun boots the guest once under peer with a fresh share holding the
// tree and returns what capsule-io fsbench measured.
func fsRun(ctx context.Context, self string, c benchConfig, peer, tree string) (fsSample, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "capsule-bench-")
	if err != nil {
		return fsSample{}, err
	}
	defer os.RemoveAll(dir)
	share := filepath.Join(dir, "share")
	if err := os.Mkdir(share, 0o755); err != nil {
		return fsSample{}, err
	}
	if err := copyFile(tree, filepath.Join(share, "tree.tar")); err != nil {
		return fsSample{}, err
	}
	cmdline := c.cmdline + fmt.Sprintf(" capsule.action=fsbench capsule.mib=%d capsule.files=%d", c.fsMiB, c.fsFiles)
	if peer == peerVirtiofs {
		cmdline += " capsule.fs=virtiofs"
	} else {
		cmdline += " capsule.fs=9p"
		if c.fsOptions != "" {
			cmdline += " capsule.fsopts=" + c.fsOptions
		}
	}
	var cmd *exec.Cmd
	var daemonErr *bytes.Buffer // virtiofsd's stderr
	switch peer {
	case peerCapsule:
		args := []string{"run", "-q", "--kernel", c.kernel, "--cmdline", cmdline,
			"--cpus", strconv.Itoa(c.cpus), "--memory", strconv.Itoa(c.memory), "--share", share + ":" + fsTag}
		if c.initrd != "" {
			args = append(args, "--initrd", c.initrd)
		}
		cmd = exec.CommandContext(ctx, self, args...)
	case peerQEMU9p:
		qc := c
		qc.cmdline = cmdline
		cmd = exec.CommandContext(ctx, c.qemu, slices.Concat(qemuArgs(qc), modernMMIO, []string{
			"-fsdev", "local,id=fs0,path=" + share + ",security_model=passthrough",
			"-device", "virtio-9p-device,fsdev=fs0,mount_tag=" + fsTag})...)
	case peerVirtiofs:
		sock := filepath.Join(dir, "virtiofsd.sock")
		daemon, errOut, err := startVirtiofsd(ctx, c.virtiofsd, sock, share)
		if err != nil {
			return fsSample{}, err
		}
		defer stopDaemon(daemon)
		daemonErr = errOut
		qc := c
		qc.cmdline = cmdline
		// vhost-user needs guest memory the daemon can map.
		qc.qemuMachine += ",memory-backend=mem"
		cmd = exec.CommandContext(ctx, c.qemu, slices.Concat(qemuArgs(qc), modernMMIO, []string{
			"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", c.memory),
			"-chardev", "socket,id=vfs,path=" + sock,
			"-device", "vhost-user-fs-device,chardev=vfs,tag=" + fsTag})...)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.WaitDelay = 5 * time.Second // past the timeout, even if something holds the pipes
	runErr := cmd.Run()
	s, ok := parseFsbench(out.String())
	if !ok {
		note := processNote(runErr, lastBytes(errOut.Bytes(), 300), nil)
		if console := lastBytes(out.Bytes(), 600); console != "" {
			note += fmt.Sprintf("; console %q", console)
		}
		if daemonErr != nil && daemonErr.Len() > 0 {
			note += fmt.Sprintf("; virtiofsd %q", lastBytes(daemonErr.Bytes(), 300))
		}
		return fsSample{}, fmt.Errorf("%s: no fsbench result on the console (%s)", peer, note)
	}
	return s, nil
}

// startVirtiofsd starts QEMU's virtiofsd serving dir on a vhost-user
// socket at sock, which is listening when it returns (the daemon gets it
// as --fd), so that QEMU can connect at once.
func startVirtiofsd(ctx context.Context, virtiofsd, sock, dir string) (*exec.Cmd, *bytes.Buffer, error) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, nil, err
	}
	l.SetUnlinkOnClose(false) // the socket stays for QEMU; the run's directory goes
	defer l.Close()
	f, err := l.File()
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	// The default cache mode (auto) and thread pool (none), and chroot:
	// namespace sandboxing pivots its root, which an initramfs root (the
	// rig's) refuses.
	cmd := exec.CommandContext(ctx, virtiofsd, "--fd=3", "-o", "source="+dir, "-o", "sandbox=chroot")
	cmd.ExtraFiles = []*os.File{f}
	cmd.WaitDelay = time.Second
	errOut := &bytes.Buffer{}
	cmd.Stderr = errOut
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("virtiofsd: %w", err)
	}
	return cmd, errOut, nil
}

// stopDaemon waits a little for virtiofsd to leave (it does when QEMU
// disconnects), then kills it.
func stopDaemon(cmd *exec.Cmd) {
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		cmd.Process.Kill()
		<-done
	}
}

// copyFile copies the file src to a new file dst.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (r fsReport) print(w io.Writer) {
	fmt.Fprintf(w, "capsule bench --workload fs, %s, %s\n", r.Date, r.Host)
	fmt.Fprintf(w, "kernel %s", r.Kernel)
	if r.Initrd != "" {
		fmt.Fprintf(w, ", initrd %s", r.Initrd)
	}
	if len(r.QEMU9p) > 0 {
		fmt.Fprintf(w, ", %d runs each, in turn\n", r.Runs)
	} else {
		fmt.Fprintf(w, ", %d runs\n", r.Runs)
	}
	if r.Cmdline != "" {
		fmt.Fprintf(w, "cmdline %s\n", r.Cmdline)
	}
	opts := r.P9Options
	if opts == "" {
		opts = "the kernel's defaults"
	}
	fmt.Fprintf(w, "9p (capsule and QEMU): trans=virtio,version=9p2000.L,%s", opts)
	if len(r.Virtiofs) > 0 {
		fmt.Fprintf(w, "; virtiofs: virtiofsd's defaults (cache=auto, no thread pool)")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(r.QEMU9p) > 0 {
		fmt.Fprintf(tw, "metric (median; higher is better)\tcapsule 9p\tqemu 9p\tratio\tqemu virtiofs\tratio\n")
	} else {
		fmt.Fprintf(tw, "metric (median; higher is better)\tcapsule 9p\n")
	}
	num := func(v float64) string {
		if v == 0 {
			return "n/a"
		}
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	ratio := func(a, b float64) string {
		if a == 0 || b == 0 {
			return "n/a"
		}
		return strconv.FormatFloat(a/b, 'f', 2, 64) + "×"
	}
	row := func(name string, f func(fsSample) float64) {
		med := func(s []fsSample) float64 {
			var v []float64
			for _, x := range s {
				v = append(v, f(x))
			}
			return median(v)
		}
		c := med(r.Capsule)
		if len(r.QEMU9p) == 0 {
			fmt.Fprintf(tw, "%s\t%s\n", name, num(c))
			return
		}
		q, v := med(r.QEMU9p), med(r.Virtiofs)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", name, num(c), num(q), ratio(c, q), num(v), ratio(c, v))
	}
	row(fmt.Sprintf("sequential write, MB/s (%d MiB, 1 MiB writes, fsync)", r.MiB), func(s fsSample) float64 { return s.SeqWriteMBps })
	row(fmt.Sprintf("sequential read, MB/s (%d MiB, 1 MiB reads, cold)", r.MiB), func(s fsSample) float64 { return s.SeqReadMBps })
	row("random read, IOPS (4 KiB, one at a time, no readahead)", func(s fsSample) float64 { return s.RandReadIOPS })
	row(fmt.Sprintf("create+stat+unlink, files/s (%d files)", r.Files), func(s fsSample) float64 { return s.MetaFilesPerS })
	row(fmt.Sprintf("tar x, files/s (%d files, %.1f MB, then syncfs)", r.TreeFiles, float64(r.TreeBytes)/1e6), func(s fsSample) float64 { return s.TarFilesPerS })
	tw.Flush()
	if len(r.Repeated) > 0 {
		var parts []string
		for _, p := range []string{peerCapsule, peerQEMU9p, peerVirtiofs} {
			if n := r.Repeated[p]; n > 0 {
				parts = append(parts, fmt.Sprintf("%s %d", p, n))
			}
		}
		fmt.Fprintf(w, "\nruns repeated after a failure: %s\n", strings.Join(parts, ", "))
	}
}
