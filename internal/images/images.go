package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Targets, in the order "all" builds them.
const (
	Initramfs      = "initramfs"
	AgentInitramfs = "agent-initramfs"
	StockKernel    = "stock-kernel"
	MinimalKernel  = "minimal-kernel"
	DefaultKernel  = "default-kernel"
	All            = "all"
)

// steps are the targets "all" builds.
var steps = []string{Initramfs, AgentInitramfs, StockKernel, MinimalKernel, DefaultKernel}

// Output file names.
const (
	InitramfsFile      = "initramfs.cpio.gz"
	StockKernelFile    = "stock.bzImage"
	StockModulesFile   = "stock-modules.cpio" // the stock kernel's pvpanic modules, to append to an initramfs
	MinimalBzImageFile = "minimal.bzImage"
	MinimalVmlinuxFile = "minimal.vmlinux"
	DefaultBzImageFile = "default.bzImage"
	DefaultVmlinuxFile = "default.vmlinux"
	AgentInitramfsFile = "agent.cpio.gz"
)

// Outputs returns the files a target writes, or nil for an unknown target.
func Outputs(target string) []string {
	switch target {
	case Initramfs:
		return []string{InitramfsFile}
	case AgentInitramfs:
		return []string{AgentInitramfsFile}
	case StockKernel:
		return []string{StockKernelFile, StockModulesFile}
	case MinimalKernel:
		return []string{MinimalBzImageFile, MinimalVmlinuxFile}
	case DefaultKernel:
		return []string{DefaultBzImageFile, DefaultVmlinuxFile}
	case All:
		var all []string
		for _, s := range steps {
			all = append(all, Outputs(s)...)
		}
		return all
	}
	return nil
}

// Options configures Build.
type Options struct {
	// Root is the module root; the inputs are read from <Root>/testdata.
	Root string
	// CacheDir holds the results; empty means DefaultCacheDir().
	CacheDir string
	// Environ is the environment the stock kernel's rig options come from
	// (CAPSULE_RIG_CACHE, CAPSULE_RIG_KERNEL); nil means os.Environ().
	Environ []string
	// Jobs is make's -j; 0 means the number of CPUs.
	Jobs int
	// ProgressEvery is the interval of the kernel build's progress lines;
	// 0 means 10s.
	ProgressEvery time.Duration
	// Stderr receives progress messages; nil means os.Stderr.
	Stderr io.Writer
	// Agent is a static guest agent binary for agent-initramfs to pack;
	// empty means build <Root>/cmd/capsule-agent.
	Agent string
}

// builder is one Build call.
type builder struct {
	Options
	cache string
}

// Build makes target's outputs (see Outputs), from the cache when they are
// there. For a target with one output, out names the file to write; for
// the others it names the directory the files go to. Build returns the
// paths written. "all" leaves agent-initramfs out, and says so, while the
// tree has no cmd/capsule-agent and Options.Agent is empty.
func Build(ctx context.Context, opts Options, target, out string) ([]string, error) {
	names := Outputs(target)
	if names == nil {
		return nil, fmt.Errorf("unknown target %q (want %s or %s)", target, strings.Join(steps, ", "), All)
	}
	b, err := newBuilder(opts)
	if err != nil {
		return nil, err
	}
	dst := map[string]string{}
	if len(names) == 1 {
		dst[names[0]] = out
	} else {
		for _, n := range names {
			dst[n] = filepath.Join(out, n)
		}
	}
	todo := []string{target}
	if target == All {
		todo = steps
	}
	var written []string
	for _, step := range todo {
		if target == All && step == AgentInitramfs && !b.haveAgent() {
			b.logf("%s: skipped: no %s in %s yet (and no prebuilt agent given)", step, AgentPackage, b.Root)
			continue
		}
		start := time.Now()
		files, how, err := b.build(ctx, step)
		if err != nil {
			return written, err
		}
		for _, n := range Outputs(step) {
			if err := install(files[n], dst[n]); err != nil {
				return written, fmt.Errorf("%s: %w", step, err)
			}
			written = append(written, dst[n])
		}
		var outs []string
		for _, n := range Outputs(step) {
			outs = append(outs, dst[n]+" ("+size(files[n])+")")
		}
		b.logf("%s: %s in %s: %s", step, how, secs(time.Since(start)), strings.Join(outs, ", "))
	}
	return written, nil
}

func newBuilder(opts Options) (*builder, error) {
	if opts.Root == "" {
		return nil, errors.New("no module root given")
	}
	if opts.Stderr == nil {
		opts.Stderr = os.Stderr
	}
	if opts.Environ == nil {
		opts.Environ = os.Environ()
	}
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	if opts.ProgressEvery <= 0 {
		opts.ProgressEvery = 10 * time.Second
	}
	b := &builder{Options: opts, cache: opts.CacheDir}
	if b.cache == "" {
		var err error
		if b.cache, err = DefaultCacheDir(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(b.cache, 0o755); err != nil {
		return nil, fmt.Errorf("create cache directory: %w", err)
	}
	return b, nil
}

// build returns the cached files of one target, by output name, and how
// they came: "built", "cached" or, for the stock kernel, "ready".
func (b *builder) build(ctx context.Context, target string) (files map[string]string, how string, err error) {
	switch target {
	case Initramfs:
		return b.initramfs(ctx)
	case StockKernel:
		return b.stockKernel(ctx)
	case AgentInitramfs:
		return b.agentInitramfs(ctx)
	case MinimalKernel:
		return b.kernel(ctx, minimalSpec)
	case DefaultKernel:
		return b.kernel(ctx, defaultSpec)
	}
	return nil, "", fmt.Errorf("unknown target %q", target)
}

func (b *builder) logf(format string, args ...any) {
	fmt.Fprintf(b.Stderr, "images: "+format+"\n", args...)
}

// input reads a file of the module, by its slash-separated path.
func (b *builder) input(rel string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(b.Root, filepath.FromSlash(rel)))
	if err != nil {
		return nil, fmt.Errorf("read input: %w", err)
	}
	return data, nil
}

// command returns a host command that runs in its own process group, which
// ctx's end kills as a whole (make leaves compilers behind otherwise).
func command(ctx context.Context, dir string, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return err
	}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// output runs a host tool and returns its stdout; the error carries the
// tail of its stderr.
func output(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := command(ctx, "", nil, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(stderr.Bytes(), 10))
	}
	return out, nil
}

// firstLine returns the first line of a tool's output, to identify its
// version.
func firstLine(ctx context.Context, name string, args ...string) (string, error) {
	out, err := output(ctx, name, args...)
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line), nil
}

// ensurePackages installs the Debian packages of pkgs that are missing,
// with apt-get when running as root.
func (b *builder) ensurePackages(ctx context.Context, target string, pkgs []string) error {
	missing, err := missingPackages(ctx, pkgs)
	if err != nil {
		return err
	}
	if len(missing) == 0 {
		return nil
	}
	list := strings.Join(missing, " ")
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s needs the Debian packages %s: apt-get install %s (as root)", target, list, list)
	}
	b.logf("%s: installing %s with apt-get", target, list)
	start := time.Now()
	install := func() ([]byte, error) {
		args := append([]string{"install", "-y", "-q", "--no-install-recommends"}, missing...)
		cmd := command(ctx, "", []string{"DEBIAN_FRONTEND=noninteractive"}, "apt-get", args...)
		return cmd.CombinedOutput()
	}
	out, err := install()
	if err != nil {
		b.logf("%s: apt-get install failed; running apt-get update and retrying", target)
		if uout, uerr := command(ctx, "", nil, "apt-get", "update", "-q").CombinedOutput(); uerr != nil {
			return fmt.Errorf("apt-get update: %w\n%s", uerr, tail(uout, 10))
		}
		if out, err = install(); err != nil {
			return fmt.Errorf("apt-get install %s: %w\n%s", list, err, tail(out, 15))
		}
	}
	if still, err := missingPackages(ctx, pkgs); err != nil || len(still) > 0 {
		return fmt.Errorf("apt-get install %s left %v missing (%v)", list, still, err)
	}
	b.logf("%s: installed %s in %s", target, list, secs(time.Since(start)))
	return nil
}

// missingPackages returns the packages of pkgs that dpkg does not list as
// installed.
func missingPackages(ctx context.Context, pkgs []string) ([]string, error) {
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		return nil, fmt.Errorf("dpkg-query not found: the images are built from Debian packages, so this needs a Debian host")
	}
	args := append([]string{"-W", "-f=${db:Status-Abbrev} ${Package}\n"}, pkgs...)
	// dpkg-query fails for packages it has never heard of; the output
	// still lists the others.
	out, _ := command(ctx, "", nil, "dpkg-query", args...).Output()
	installed := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && len(f[0]) >= 2 && f[0][1] == 'i' {
			installed[strings.Split(f[1], ":")[0]] = true
		}
	}
	var missing []string
	for _, p := range pkgs {
		if !installed[p] && !slices.Contains(missing, p) {
			missing = append(missing, p)
		}
	}
	return missing, nil
}

// packageVersion returns the installed version of a Debian package.
func packageVersion(ctx context.Context, pkg string) (string, error) {
	out, err := output(ctx, "dpkg-query", "-W", "-f=${Version}", pkg)
	if err != nil {
		return "", err
	}
	v := strings.TrimSpace(string(out))
	if v == "" {
		return "", fmt.Errorf("dpkg-query: no version for %s", pkg)
	}
	return v, nil
}

// tail returns the last n lines of out.
func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func secs(d time.Duration) string {
	if d >= time.Minute {
		return d.Round(time.Second).String()
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}

// size formats a file's size.
func size(name string) string {
	fi, err := os.Stat(name)
	if err != nil {
		return "?"
	}
	n := fi.Size()
	if n >= 1<<20 {
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", (n+1023)>>10)
}
