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

// FragmentPath is the minimal kernel's config fragment, relative to the
// module root.
const FragmentPath = "testdata/kernel/minimal.config"

const (
	kernelSourcePkg = "linux-source-6.1"
	kernelTarball   = "/usr/src/linux-source-6.1.tar.xz"
	// minimalRecipe changes whenever the build steps change.
	minimalRecipe = "capsule-images-minimal-kernel-1"
)

var kernelPackages = []string{kernelSourcePkg, "build-essential", "flex", "bison", "bc", "libelf-dev", "libssl-dev", "lz4", "xz-utils"}

// kernelFiles are the cached results of minimal-kernel: the two outputs,
// the final .config and the make log.
var kernelFiles = []string{MinimalBzImageFile, MinimalVmlinuxFile, "config", "build.log"}

func (b *builder) minimalKernel(ctx context.Context) (map[string]string, string, error) {
	frag, err := b.input(FragmentPath)
	if err != nil {
		return nil, "", err
	}
	opts, err := ParseFragment(frag)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %s: %w", MinimalKernel, FragmentPath, err)
	}
	if err := b.ensurePackages(ctx, MinimalKernel, kernelPackages); err != nil {
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
	key := Key([]byte(minimalRecipe), frag, []byte(srcVersion), []byte(gcc), []byte(ld))
	k := kernelBuild{
		b:          b,
		frag:       frag,
		opts:       opts,
		srcVersion: srcVersion,
		log:        filepath.Join(b.cache, MinimalKernel+"-"+key+".log"),
	}
	dir, hit, err := b.cached(ctx, MinimalKernel, key, kernelFiles, k.run)
	if err != nil {
		return nil, "", err
	}
	return map[string]string{
		MinimalBzImageFile: filepath.Join(dir, MinimalBzImageFile),
		MinimalVmlinuxFile: filepath.Join(dir, MinimalVmlinuxFile),
	}, how(hit), nil
}

// kernelBuild is one build of the minimal kernel.
type kernelBuild struct {
	b          *builder
	frag       []byte
	opts       []Option
	srcVersion string
	log        string // the make log while building
}

// run builds the kernel in scratch and writes kernelFiles to out. The log
// stays at k.log when the build fails.
func (k kernelBuild) run(ctx context.Context, out, scratch string) (err error) {
	b := k.b
	start := time.Now()
	logFile, err := os.Create(k.log)
	if err != nil {
		return err
	}
	defer logFile.Close()
	p := &progress{start: start, log: logFile, trim: scratch + string(filepath.Separator)}
	b.logf("%s: building from %s %s with make -j%d: takes minutes; a progress line every %s (log: %s)",
		MinimalKernel, kernelSourcePkg, k.srcVersion, b.Jobs, b.ProgressEvery, k.log)
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
				fmt.Fprintf(b.Stderr, "images: %s: last lines of %s:\n", MinimalKernel, k.log)
				for _, l := range strings.Split(tail(data, 30), "\n") {
					fmt.Fprintf(b.Stderr, "  | %s\n", l)
				}
			}
		}
		err = fmt.Errorf("%w\n(full log: %s)", err, k.log)
	}()

	src := filepath.Join(scratch, strings.TrimSuffix(filepath.Base(kernelTarball), ".tar.xz"))
	build := filepath.Join(scratch, "build")
	fragFile := filepath.Join(scratch, "minimal.config")
	if err := os.WriteFile(fragFile, k.frag, 0o644); err != nil {
		return err
	}
	if err := p.run(ctx, "unpack "+filepath.Base(kernelTarball), scratch, "tar", "-xf", kernelTarball); err != nil {
		return err
	}
	if err := p.run(ctx, "make tinyconfig", src, "make", "O="+build, "tinyconfig"); err != nil {
		return err
	}
	// -n merges onto allnoconfig rather than alldefconfig: a smaller kernel.
	merge := filepath.Join(src, "scripts", "kconfig", "merge_config.sh")
	if err := p.run(ctx, "merge "+FragmentPath, src, "bash", merge, "-n", "-O", build, filepath.Join(build, ".config"), fragFile); err != nil {
		return err
	}
	dotConfig, err := os.ReadFile(filepath.Join(build, ".config"))
	if err != nil {
		return err
	}
	if dropped := Dropped(k.opts, dotConfig); len(dropped) > 0 {
		showLog = false
		return fmt.Errorf("%s: %d option(s) of %s did not survive the merge:\n  %s",
			MinimalKernel, len(dropped), FragmentPath, strings.Join(dropped, "\n  "))
	}
	if err := os.WriteFile(filepath.Join(out, "config"), dotConfig, 0o644); err != nil {
		return err
	}
	if err := p.run(ctx, "make bzImage", src, "make", "O="+build, fmt.Sprintf("-j%d", b.Jobs), "bzImage"); err != nil {
		return err
	}
	if err := copyFile(filepath.Join(build, "arch", "x86", "boot", "bzImage"), filepath.Join(out, MinimalBzImageFile)); err != nil {
		return err
	}
	vmlinux := filepath.Join(out, MinimalVmlinuxFile)
	if err := p.run(ctx, "strip vmlinux", build, "strip", "--strip-all", "-o", vmlinux, filepath.Join(build, "vmlinux")); err != nil {
		return err
	}
	entry, err := PVHEntry(vmlinux)
	if err != nil {
		return fmt.Errorf("%s: stripped vmlinux: %w", MinimalKernel, err)
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
			return fmt.Errorf("%s: %s: %w", MinimalKernel, step, ctx.Err())
		}
		return fmt.Errorf("%s: %s: %w", MinimalKernel, step, err)
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
				line := fmt.Sprintf("%s: %s: %s", MinimalKernel, time.Since(start).Round(time.Second), step)
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
