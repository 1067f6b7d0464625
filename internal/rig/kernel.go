package rig

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// kernelMeta is the Debian package whose dependency names the current
// cloud kernel.
const kernelMeta = "linux-image-cloud-amd64"

// resolveMaxAge is how long a resolved kernel package name is reused before
// apt-cache (slow without apt's binary cache) is asked again.
const resolveMaxAge = 24 * time.Hour

// guestModules are the kernel modules /init loads, in load order, with
// their paths below lib/modules/<version>.
var guestModules = []struct{ name, path string }{
	{"irqbypass", "kernel/virt/lib/irqbypass.ko"},
	{"kvm", "kernel/arch/x86/kvm/kvm.ko"},
	{"kvm-amd", "kernel/arch/x86/kvm/kvm-amd.ko"},
	// tun lets tests create TAP devices (capsule's --net tap).
	{"tun", "kernel/drivers/net/tun.ko"},
}

// StockGuestModules are modules of the same package that capsule's own
// test guests load when they boot this kernel (the rig guest does not):
// the pvpanic driver, which reports a guest kernel panic to the VMM. They
// are staged next to the rig's modules, in load order.
var StockGuestModules = []struct{ Name, Path string }{
	{"pvpanic", "kernel/drivers/misc/pvpanic/pvpanic.ko"},
	{"pvpanic-mmio", "kernel/drivers/misc/pvpanic/pvpanic-mmio.ko"},
}

// stagedModules are the names and paths of every module staged.
func stagedModules() []struct{ name, path string } {
	all := append([]struct{ name, path string }(nil), guestModules...)
	all = append(all, hostRootModules...)
	for _, m := range StockGuestModules {
		all = append(all, struct{ name, path string }{m.Name, m.Path})
	}
	return all
}

// kernel is a cached, unpacked kernel: <dir>/vmlinuz and <dir>/<module>.ko.
type kernel struct {
	dir string
	id  string // <package>_<version>
}

func (k kernel) vmlinuz() string           { return filepath.Join(k.dir, "vmlinuz") }
func (k kernel) module(name string) string { return filepath.Join(k.dir, name+".ko") }

// moduleTree returns the kernel's whole module tree,
// <dir>/lib/modules/<version> with the modules.dep, modules.alias and
// modules.symbols of busybox depmod, or "" when it has none.
func (k kernel) moduleTree() string {
	m, _ := filepath.Glob(filepath.Join(k.dir, "lib", "modules", "*", "modules.dep"))
	if len(m) != 1 {
		return ""
	}
	return filepath.Dir(m[0])
}

// complete reports whether the cached kernel has vmlinuz, every staged
// module and the module tree.
func (k kernel) complete() bool {
	if !exists(k.vmlinuz()) || k.moduleTree() == "" {
		return false
	}
	for _, m := range stagedModules() {
		if !exists(k.module(m.name)) {
			return false
		}
	}
	return true
}

// FetchKernel returns the kernel package the rig boots, unpacked in its
// cache, fetching it first (apt-get download and dpkg-deb -x, without
// installing it) if needed: dir is <cache>/kernel/<package>_<version> and
// holds vmlinuz and the guest's modules, and id is <package>_<version>. The
// package is cfg.Kernel, or the dependency of linux-image-cloud-amd64. Only
// the cache, kernel, verbosity and Stderr fields of cfg are used.
func FetchKernel(ctx context.Context, cfg Config) (dir, id string, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return "", "", err
	}
	k, err := ensureKernel(ctx, cfg, &logger{w: cfg.Stderr, verbose: cfg.Verbose})
	if err != nil {
		return "", "", err
	}
	return k.dir, k.id, nil
}

// ensureKernel returns the cached kernel, fetching it first if needed.
func ensureKernel(ctx context.Context, cfg Config, log *logger) (kernel, error) {
	kdir := filepath.Join(cfg.CacheDir, "kernel")
	pkg, err := resolveKernel(ctx, cfg, kdir, log)
	if err != nil {
		if k, ok := cachedKernel(kdir, ""); ok {
			log.verbosef("%v; using the cached %s", err, k.id)
			return k, nil
		}
		return kernel{}, err
	}
	if k, ok := cachedKernel(kdir, pkg); ok {
		return k, nil
	}
	unlock, err := lockCache(ctx, cfg.CacheDir)
	if err != nil {
		return kernel{}, err
	}
	defer unlock()
	if k, ok := cachedKernel(kdir, pkg); ok {
		return k, nil
	}
	return downloadKernel(ctx, kdir, pkg, log)
}

// cachedKernel finds the newest cached kernel of package pkg, or of any
// package when pkg is empty.
func cachedKernel(kdir, pkg string) (kernel, bool) {
	entries, err := os.ReadDir(kdir)
	if err != nil {
		return kernel{}, false
	}
	var best kernel
	var bestTime time.Time
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasPrefix(name, pkg) {
			continue
		}
		if pkg != "" && !strings.HasPrefix(name, pkg+"_") {
			continue
		}
		info, err := e.Info()
		if err != nil || (best.dir != "" && !info.ModTime().After(bestTime)) {
			continue
		}
		k := kernel{dir: filepath.Join(kdir, name), id: name}
		if !k.complete() {
			continue // staged by an older rig with fewer modules
		}
		best = k
		bestTime = info.ModTime()
	}
	return best, best.dir != ""
}

// resolveKernel names the kernel package to use: the pinned one, the one
// resolved less than resolveMaxAge ago, or the dependency of kernelMeta.
func resolveKernel(ctx context.Context, cfg Config, kdir string, log *logger) (string, error) {
	if cfg.Kernel != "" {
		return cfg.Kernel, nil
	}
	memo := filepath.Join(kdir, "resolved")
	if fi, err := os.Stat(memo); err == nil && time.Since(fi.ModTime()) < resolveMaxAge {
		if b, err := os.ReadFile(memo); err == nil && len(bytes.TrimSpace(b)) > 0 {
			return string(bytes.TrimSpace(b)), nil
		}
	}
	pkg, err := aptKernelDepends(ctx)
	if err == nil && pkg == "" {
		log.verbosef("apt-cache knows no %s; running apt-get update", kernelMeta)
		if out, uerr := runTool(ctx, "", "apt-get", "update"); uerr != nil {
			return "", fmt.Errorf("apt-get update: %w\n%s", uerr, tail(out, 10))
		}
		pkg, err = aptKernelDepends(ctx)
	}
	if err != nil {
		return "", err
	}
	if pkg == "" {
		return "", fmt.Errorf("apt-cache depends %s names no linux-image package (is this a Debian host with bookworm or later sources?)", kernelMeta)
	}
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		return "", fmt.Errorf("create kernel cache: %w", err)
	}
	err = writeFileAtomic(memo, func(f *os.File) error {
		_, err := f.WriteString(pkg + "\n")
		return err
	})
	if err != nil {
		return "", err
	}
	return pkg, nil
}

// aptKernelDepends returns the linux-image-* dependency of kernelMeta, or ""
// when apt-cache knows none.
func aptKernelDepends(ctx context.Context) (string, error) {
	out, err := runTool(ctx, "", "apt-cache", "depends", kernelMeta)
	if err != nil {
		if strings.Contains(string(out), "Unable to locate package") || strings.Contains(string(out), "No packages found") {
			return "", nil
		}
		return "", fmt.Errorf("apt-cache depends %s: %w\n%s", kernelMeta, err, tail(out, 10))
	}
	return parseKernelDepends(out), nil
}

// parseKernelDepends picks the first "Depends: linux-image-..." of
// apt-cache depends output.
func parseKernelDepends(out []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		i := strings.Index(line, "Depends: linux-image-")
		if i < 0 {
			continue
		}
		if f := strings.Fields(line[i+len("Depends:"):]); len(f) > 0 {
			return f[0]
		}
	}
	return ""
}

// downloadKernel fetches and unpacks pkg into <kdir>/<pkg>_<version>. The
// caller holds the cache lock.
func downloadKernel(ctx context.Context, kdir, pkg string, log *logger) (kernel, error) {
	log.always("fetching %s with apt-get download (first run only)", pkg)
	start := time.Now()
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		return kernel{}, fmt.Errorf("create kernel cache: %w", err)
	}
	tmp, err := os.MkdirTemp(kdir, ".fetch-")
	if err != nil {
		return kernel{}, fmt.Errorf("download %s: %w", pkg, err)
	}
	defer os.RemoveAll(tmp)
	deb, err := aptDownload(ctx, tmp, pkg)
	if err != nil {
		return kernel{}, err
	}
	tree := filepath.Join(tmp, "x")
	if out, err := runTool(ctx, "", "dpkg-deb", "-x", deb, tree); err != nil {
		return kernel{}, fmt.Errorf("dpkg-deb -x %s: %w\n%s", filepath.Base(deb), err, tail(out, 10))
	}
	staged := filepath.Join(tmp, "out")
	if err := stageKernel(ctx, tree, staged); err != nil {
		return kernel{}, fmt.Errorf("unpack %s: %w", pkg, err)
	}
	id := debID(filepath.Base(deb), pkg)
	k := kernel{dir: filepath.Join(kdir, id), id: id}
	if err := publishKernel(staged, k.dir); err != nil {
		return kernel{}, fmt.Errorf("publish kernel %s: %w", id, err)
	}
	log.verbosef("fetched %s in %.1fs", id, time.Since(start).Seconds())
	return k, nil
}

// publishKernel renames the staged directory to dir. When dir exists
// (staged by an older rig with fewer modules, and perhaps in use by a rig
// running now) it only moves the files dir lacks into it, each by an
// atomic rename, so that its files never go missing.
func publishKernel(staged, dir string) error {
	if _, err := os.Stat(dir); err != nil {
		return os.Rename(staged, dir)
	}
	entries, err := os.ReadDir(staged)
	if err != nil {
		return err
	}
	for _, e := range entries {
		dst := filepath.Join(dir, e.Name())
		if exists(dst) {
			continue
		}
		if err := os.Rename(filepath.Join(staged, e.Name()), dst); err != nil {
			return err
		}
	}
	return nil
}

// aptDownload runs apt-get download in dir and returns the .deb's path.
func aptDownload(ctx context.Context, dir, pkg string) (string, error) {
	args := []string{"download", "-q"}
	if os.Geteuid() == 0 {
		// apt's sandbox user could not write to our private directory.
		args = append(args, "-o", "APT::Sandbox::User=root")
	}
	out, err := runTool(ctx, dir, "apt-get", append(args, pkg)...)
	if err != nil {
		return "", fmt.Errorf("download %s: %w\n%s", pkg, err, tail(out, 10))
	}
	debs, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("download %s: apt-get download left %d matching .deb files", pkg, len(debs))
	}
	return debs[0], nil
}

// debID turns "<pkg>_<version>_<arch>.deb" into "<pkg>_<version>".
func debID(file, pkg string) string {
	s := strings.TrimSuffix(file, ".deb")
	if i := strings.LastIndex(s, "_"); i > len(pkg) {
		s = s[:i]
	}
	return strings.ReplaceAll(s, "%3a", "_")
}

// stageKernel moves vmlinuz and the package's module tree out of the
// unpacked package tree into dst (the tree to dst/lib/modules/<version>,
// where busybox depmod indexes it, for the host-root mode's modprobe) and
// links the staged modules as dst/<name>.ko.
func stageKernel(ctx context.Context, tree, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	vmlinuz, err := globOne(filepath.Join(tree, "boot", "vmlinuz-*"))
	if err != nil {
		return err
	}
	if err := os.Rename(vmlinuz, filepath.Join(dst, "vmlinuz")); err != nil {
		return err
	}
	modules, err := findModuleTree(tree)
	if err != nil {
		return err
	}
	version := filepath.Base(modules)
	if err := os.MkdirAll(filepath.Join(dst, "lib", "modules"), 0o755); err != nil {
		return err
	}
	if err := os.Rename(modules, filepath.Join(dst, "lib", "modules", version)); err != nil {
		return err
	}
	for _, m := range stagedModules() {
		src, err := findModule(dst, m.path)
		if err != nil {
			return err
		}
		if err := os.Link(src, filepath.Join(dst, m.name+".ko")); err != nil {
			return err
		}
	}
	busybox, err := staticBusybox()
	if err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, busybox, "depmod", "-b", dst, version).CombinedOutput(); err != nil {
		return fmt.Errorf("busybox depmod: %w\n%s", err, tail(out, 10))
	}
	return nil
}

// findModuleTree finds the one lib/modules/<version> (or below usr/) of
// the tree.
func findModuleTree(tree string) (string, error) {
	for _, prefix := range []string{"lib", "usr/lib"} {
		if m, _ := filepath.Glob(filepath.Join(tree, prefix, "modules", "*", "kernel")); len(m) == 1 {
			return filepath.Dir(m[0]), nil
		}
	}
	return "", errors.New("no lib/modules/<version>/kernel in the kernel package")
}

// findModule finds lib/modules/*/<rel> (or below usr/) in the tree.
func findModule(tree, rel string) (string, error) {
	for _, prefix := range []string{"lib", "usr/lib"} {
		pattern := filepath.Join(tree, prefix, "modules", "*", rel)
		if p, err := globOne(pattern); err == nil {
			return p, nil
		}
		if c, _ := filepath.Glob(pattern + ".*"); len(c) > 0 {
			return "", fmt.Errorf("module %s is compressed; only uncompressed .ko files are supported", filepath.Base(c[0]))
		}
	}
	return "", fmt.Errorf("module %s not found in the kernel package", filepath.Base(rel))
}

func globOne(pattern string) (string, error) {
	m, err := filepath.Glob(pattern)
	if err != nil {
		return "", err
	}
	if len(m) != 1 {
		return "", fmt.Errorf("want one match for %s, found %d", pattern, len(m))
	}
	return m[0], nil
}

// runTool runs a host program and returns its combined output.
func runTool(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	path, err := lookTool(name, toolHints[name])
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd.CombinedOutput()
}

var toolHints = map[string]string{
	"apt-get":   "the rig fetches Debian's " + kernelMeta + " kernel with apt, so it needs a Debian host",
	"apt-cache": "the rig resolves Debian's " + kernelMeta + " kernel with apt, so it needs a Debian host",
	"dpkg-deb":  "apt-get install dpkg",
}

// tail returns the last n lines of out.
func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
