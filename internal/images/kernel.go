package images

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Config fragments of the kernels, relative to the module root.
const (
	// FragmentPath is the minimal kernel's fragment.
	FragmentPath = "testdata/kernel/minimal.config"
	// DefaultFragmentPath is what the default kernel adds to the minimal
	// kernel's fragment.
	DefaultFragmentPath = "testdata/kernel/default.config"
)

const (
	kernelSourcePkg = "linux-source-6.1"
	kernelTarball   = "/usr/src/linux-source-6.1.tar.xz"
	// The recipes change whenever the build steps change.
	minimalRecipe = "capsule-images-minimal-kernel-1"
	defaultRecipe = "capsule-images-default-kernel-1"
)

var kernelPackages = []string{kernelSourcePkg, "build-essential", "flex", "bison", "bc", "libelf-dev", "libssl-dev", "lz4", "xz-utils"}

// kernelSpec is one kernel target: the fragments merged, in order, onto
// make tinyconfig (a later fragment's line wins over an earlier one's),
// and the names of its bzImage and stripped PVH vmlinux.
type kernelSpec struct {
	target    string
	recipe    string
	fragments []string
	bzImage   string
	vmlinux   string
}

var (
	minimalSpec = kernelSpec{MinimalKernel, minimalRecipe, []string{FragmentPath}, MinimalBzImageFile, MinimalVmlinuxFile}
	defaultSpec = kernelSpec{DefaultKernel, defaultRecipe, []string{FragmentPath, DefaultFragmentPath}, DefaultBzImageFile, DefaultVmlinuxFile}
)

// files are the cached results of a kernel target: the two outputs, the
// final .config and the make log.
func (s kernelSpec) files() []string {
	return []string{s.bzImage, s.vmlinux, "config", "build.log"}
}

// fragment is one config fragment of a kernel build.
type fragment struct {
	path string // relative to the module root
	data []byte
}

func (b *builder) kernel(ctx context.Context, spec kernelSpec) (map[string]string, string, error) {
	var frags []fragment
	var opts [][]Option
	for _, path := range spec.fragments {
		data, err := b.input(path)
		if err != nil {
			return nil, "", err
		}
		o, err := ParseFragment(data)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %s: %w", spec.target, path, err)
		}
		for i := range o {
			o[i].File = path
		}
		frags = append(frags, fragment{path, data})
		opts = append(opts, o)
	}
	if err := b.ensurePackages(ctx, spec.target, kernelPackages); err != nil {
		return nil, "", err
	}
	srcVersion, err := packageVersion(ctx, kernelSourcePkg)
	if err != nil {
		return nil, "", err
	}
	gcc, err := firstLine(ctx, "gcc", "--version")
	if err != nil {
		return nil, "", err
	}
	ld, err := firstLine(ctx, "ld", "--version")
	if err != nil {
		return nil, "", err
	}
	// The minimal kernel's key is recipe, fragment, source, gcc, ld: the
	// same as before there were two kernels, so its cache stays valid.
	parts := [][]byte{[]byte(spec.recipe)}
	for _, f := range frags {
		parts = append(parts, f.data)
	}
	key := Key(append(parts, []byte(srcVersion), []byte(gcc), []byte(ld))...)
	k := kernelBuild{
		b:          b,
		spec:       spec,
		frags:      frags,
		opts:       MergeFragments(opts...),
		srcVersion: srcVersion,
		log:        filepath.Join(b.cache, spec.target+"-"+key+".log"),
	}
	dir, hit, err := b.cached(ctx, spec.target, key, spec.files(), k.run)
	if err != nil {
		return nil, "", err
	}
	return map[string]string{
		spec.bzImage: filepath.Join(dir, spec.bzImage),
		spec.vmlinux: filepath.Join(dir, spec.vmlinux),
	}, how(hit), nil
}

// kernelBuild is one build of a kernel.
type kernelBuild struct {
	b          *builder
	spec       kernelSpec
	frags      []fragment
	opts       []Option // the fragments merged
	srcVersion string
	log        string // the make log while building
}

// run builds the kernel in scratch and writes spec.files() to out. The log
// stays at k.log when the build fails.
func (k kernelBuild) run(ctx context.Context, out, scratch string) (err error) {
	b := k.b
	start := time.Now()
	logFile, err := os.Create(k.log)
	if err != nil {
		return err
	}
	defer logFile.Close()
	target := k.spec.target
	p := &progress{target: target, start: start, log: logFile, trim: scratch + string(filepath.Separator)}
	b.logf("%s: building from %s %s with make -j%d: takes minutes; a progress line every %s (log: %s)",
		target, kernelSourcePkg, k.srcVersion, b.Jobs, b.ProgressEvery, k.log)
	stop := p.report(b, start)
	showLog := true // the log adds nothing to a list of dropped options
	defer func() {
		stop()
		if err == nil {
			return
		}
		if showLog {
			logFile.Sync()
			if data, rerr := os.ReadFile(k.log); rerr == nil {
				fmt.Fprintf(b.Stderr, "images: %s: last lines of %s:\n", target, k.log)
				for _, l := range strings.Split(tail(data, 30), "\n") {
					fmt.Fprintf(b.Stderr, "  | %s\n", l)
				}
			}
		}
		err = fmt.Errorf("%w\n(full log: %s)", err, k.log)
	}()

	src := filepath.Join(scratch, strings.TrimSuffix(filepath.Base(kernelTarball), ".tar.xz"))
	build := filepath.Join(scratch, "build")
	var fragFiles, fragPaths []string
	for _, f := range k.frags {
		name := filepath.Join(scratch, filepath.Base(f.path))
		if err := os.WriteFile(name, f.data, 0o644); err != nil {
			return err
		}
		fragFiles = append(fragFiles, name)
		fragPaths = append(fragPaths, f.path)
	}
	fragList := strings.Join(fragPaths, " and ")
	if err := p.run(ctx, "unpack "+filepath.Base(kernelTarball), scratch, "tar", "-xf", kernelTarball); err != nil {
		return err
	}
	if err := p.run(ctx, "make tinyconfig", src, "make", "O="+build, "tinyconfig"); err != nil {
		return err
	}
	// -n merges onto allnoconfig rather than alldefconfig: a smaller kernel.
	merge := filepath.Join(src, "scripts", "kconfig", "merge_config.sh")
	args := append([]string{merge, "-n", "-O", build, filepath.Join(build, ".config")}, fragFiles...)
	if err := p.run(ctx, "merge "+fragList, src, "bash", args...); err != nil {
		return err
	}
	dotConfig, err := os.ReadFile(filepath.Join(build, ".config"))
	if err != nil {
		return err
	}
	if dropped := Dropped(k.opts, dotConfig); len(dropped) > 0 {
		showLog = false
		return fmt.Errorf("%s: %d option(s) of %s did not survive the merge:\n  %s",
			target, len(dropped), fragList, strings.Join(dropped, "\n  "))
	}
	if err := os.WriteFile(filepath.Join(out, "config"), dotConfig, 0o644); err != nil {
		return err
	}
	if err := p.run(ctx, "make bzImage", src, "make", "O="+build, fmt.Sprintf("-j%d", b.Jobs), "bzImage"); err != nil {
		return err
	}
	if err := copyFile(filepath.Join(build, "arch", "x86", "boot", "bzImage"), filepath.Join(out, k.spec.bzImage)); err != nil {
		return err
	}
	vmlinux := filepath.Join(out, k.spec.vmlinux)
	if err := p.run(ctx, "strip vmlinux", build, "strip", "--strip-all", "-o", vmlinux, filepath.Join(build, "vmlinux")); err != nil {
		return err
	}
	entry, err := PVHEntry(vmlinux)
	if err != nil {
		return fmt.Errorf("%s: stripped vmlinux: %w", target, err)
	}
	fmt.Fprintf(p, "### done in %s: PVH entry %#x\n", secs(time.Since(start)), entry)
	if err := logFile.Close(); err != nil {
		return err
	}
	return os.Rename(k.log, filepath.Join(out, "build.log"))
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// progress collects a build's output into its log and remembers the step
// and the last kbuild line ("  CC      kernel/fork.o") for the progress
// lines.
type progress struct {
	target  string // the image target, for errors and progress lines
	start   time.Time
	mu      sync.Mutex
	log     io.Writer
	trim    string // prefix left out of the progress lines
	step    string
	last    string
	partial []byte
}

// kbuildLine matches kbuild's short command lines.
var kbuildLine = regexp.MustCompile(`^\s+([A-Z][A-Z0-9_]*(\s\[[A-Z]\])?)\s+(\S.*)$`)

func (p *progress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		if m := kbuildLine.FindSubmatch(p.partial[:i]); m != nil {
			p.last = string(m[1]) + " " + strings.ReplaceAll(string(m[3]), p.trim, "")
		}
		p.partial = p.partial[i+1:]
	}
	return p.log.Write(b)
}

// run runs one step of the build with its output going to the log.
func (p *progress) run(ctx context.Context, step, dir, name string, args ...string) error {
	p.mu.Lock()
	p.step, p.last = step, ""
	p.mu.Unlock()
	fmt.Fprintf(p, "### %s (at %s)\n$ cd %s && %s %s\n", step, secs(time.Since(p.start)), dir, name, strings.Join(args, " "))
	cmd := command(ctx, dir, nil, name, args...)
	cmd.Stdout, cmd.Stderr = p, p
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %s: %w", p.target, step, ctx.Err())
		}
		return fmt.Errorf("%s: %s: %w", p.target, step, err)
	}
	return nil
}

// report prints a progress line every b.ProgressEvery until the returned
// function is called.
func (p *progress) report(b *builder, start time.Time) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(b.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				p.mu.Lock()
				step, last := p.step, p.last
				p.mu.Unlock()
				line := fmt.Sprintf("%s: %s: %s", p.target, time.Since(start).Round(time.Second), step)
				if last != "" {
					line += ": " + last
				}
				b.logf("%s", line)
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// Xen ELF note type of the 32-bit PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY).
const xenElfnotePhys32Entry = 18

// PVHEntry returns the PVH entry point of a vmlinux: the desc of its
// "Xen" ELF note of type XEN_ELFNOTE_PHYS32_ENTRY.
func PVHEntry(vmlinux string) (uint64, error) {
	f, err := elf.Open(vmlinux)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return 0, fmt.Errorf("%s is for %v, not x86-64", vmlinux, f.Machine)
	}
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(prog.Open())
		if err != nil {
			return 0, fmt.Errorf("%s: read notes: %w", vmlinux, err)
		}
		if entry, ok := findNote(data, f.ByteOrder, "Xen", xenElfnotePhys32Entry); ok {
			switch len(entry) {
			case 4:
				return uint64(f.ByteOrder.Uint32(entry)), nil
			case 8:
				return f.ByteOrder.Uint64(entry), nil
			}
			return 0, fmt.Errorf("%s: PVH note of %d bytes", vmlinux, len(entry))
		}
	}
	return 0, errors.New(vmlinux + " has no Xen PHYS32_ENTRY (PVH) note: build with CONFIG_PVH=y")
}

// findNote returns the desc of the note called name with type typ in a
// PT_NOTE segment.
func findNote(data []byte, order binary.ByteOrder, name string, typ uint32) ([]byte, bool) {
	align := func(n uint32) uint32 { return (n + 3) &^ 3 }
	for len(data) >= 12 {
		namesz, descsz, t := order.Uint32(data), order.Uint32(data[4:]), order.Uint32(data[8:])
		data = data[12:]
		if uint64(align(namesz))+uint64(align(descsz)) > uint64(len(data)) {
			return nil, false
		}
		n := strings.TrimRight(string(data[:namesz]), "\x00")
		desc := data[align(namesz) : align(namesz)+descsz]
		if n == name && t == typ {
			return desc, true
		}
		data = data[align(namesz)+align(descsz):]
	}
	return nil, false
}
