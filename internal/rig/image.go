package rig

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/capsule-vm/capsule/internal/cpio"
)

// baseFormat changes whenever the layout of the base archive changes.
const baseFormat = "capsule-rig-base-1"

const (
	etcPasswd = "root:x:0:0:root:/root:/bin/sh\n"
	etcGroup  = "root:x:0:\n"
)

// Image is a cached guest image: a kernel and the base initramfs archive
// that the per-run archive is appended to.
type Image struct {
	// Kernel is the bzImage; Base is the gzip-compressed base cpio archive.
	Kernel string
	Base   string
	// QEMU is the gzip-compressed archive of QEMU for the guest, or "" when
	// Config.QEMU is off.
	QEMU string
	// KernelID names the kernel package and version the image comes from.
	KernelID string

	// hostRoot are the module files the per-run archive adds when
	// Config.HostRoot is set; moduleTree is the host path of the kernel's
	// whole module tree, which the guest finds through the share.
	hostRoot   []baseInput
	moduleTree string
}

// Prepare returns the cached image for cfg, fetching the kernel and
// building the base archive (and the QEMU archive when cfg.QEMU is set)
// first if needed. Only the cache, kernel, QEMU and verbosity fields of cfg
// are used.
func Prepare(ctx context.Context, cfg Config) (Image, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Image{}, err
	}
	return prepare(ctx, cfg, &logger{w: cfg.Stderr, verbose: cfg.Verbose})
}

func prepare(ctx context.Context, cfg Config, log *logger) (Image, error) {
	busybox, err := staticBusybox()
	if err != nil {
		return Image{}, err
	}
	k, err := ensureKernel(ctx, cfg, log)
	if err != nil {
		return Image{}, err
	}
	inputs := baseInputs(busybox, k)
	key, err := hashInputs(inputs)
	if err != nil {
		return Image{}, err
	}
	img := Image{
		Kernel:   k.vmlinuz(),
		Base:     filepath.Join(cfg.CacheDir, "base-"+key+".cpio.gz"),
		KernelID: k.id,
	}
	if err := buildBase(ctx, cfg, img.Base, inputs, log); err != nil {
		return Image{}, err
	}
	if cfg.HostRoot {
		img.hostRoot = hostRootInputs(k)
		img.moduleTree = k.moduleTree()
	}
	if cfg.QEMU {
		if img.QEMU, err = prepareQEMU(ctx, cfg, log); err != nil {
			return Image{}, err
		}
	}
	return img, nil
}

// archives returns the cached archives of the initrd, in order.
func (img Image) archives() []string {
	if img.QEMU != "" {
		return []string{img.Base, img.QEMU}
	}
	return []string{img.Base}
}

// buildBase writes the base archive name unless it exists.
func buildBase(ctx context.Context, cfg Config, name string, inputs []baseInput, log *logger) error {
	if exists(name) {
		return nil
	}
	unlock, err := lockCache(ctx, cfg.CacheDir)
	if err != nil {
		return err
	}
	defer unlock()
	if exists(name) {
		return nil
	}
	err = writeFileAtomic(name, func(f *os.File) error { return writeBase(f, inputs) })
	if err != nil {
		return fmt.Errorf("build base image: %w", err)
	}
	log.verbosef("built %s", name)
	return nil
}

// baseInput is one host file of the base archive.
type baseInput struct {
	guest string // path in the guest
	host  string
	mode  os.FileMode
}

func baseInputs(busybox string, k kernel) []baseInput {
	in := []baseInput{{guest: "/bin/busybox", host: busybox, mode: 0o755}}
	for _, m := range guestModules {
		in = append(in, baseInput{guest: "/lib/modules/" + m.name + ".ko", host: k.module(m.name), mode: 0o644})
	}
	return in
}

// hashInputs keys the base archive: its format, /init and the contents of
// its host files.
func hashInputs(inputs []baseInput) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00", baseFormat, initScript, etcPasswd, etcGroup)
	for _, in := range inputs {
		fmt.Fprintf(h, "%s\x00%o\x00", in.guest, in.mode)
		if err := hashFile(h, in.host); err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func hashFile(w io.Writer, name string) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("hash image input: %w", err)
	}
	defer f.Close()
	if _, err := io.Copy(w, f); err != nil {
		return fmt.Errorf("hash image input %s: %w", name, err)
	}
	return nil
}

// writeBase writes the gzip-compressed base archive.
func writeBase(w io.Writer, inputs []baseInput) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	cw := cpio.NewWriter(zw)
	dirs := []struct {
		name string
		perm os.FileMode
	}{
		{"/bin", 0o755}, {"/dev", 0o755}, {"/etc", 0o755}, {"/lib", 0o755},
		{"/lib/modules", 0o755}, {"/proc", 0o555}, {"/sys", 0o555},
		{"/tmp", 0o777 | os.ModeSticky}, {"/root", 0o700},
	}
	for _, d := range dirs {
		cw.Dir(d.name, d.perm)
	}
	cw.CharDev("/dev/console", 0o600, 5, 1)
	cw.Symlink("/bin/sh", "busybox")
	cw.Bytes("/etc/passwd", 0o644, []byte(etcPasswd))
	cw.Bytes("/etc/group", 0o644, []byte(etcGroup))
	cw.Bytes("/init", 0o755, []byte(initScript))
	for _, in := range inputs {
		if err := copyIntoArchive(cw, in.guest, in.host, in.mode); err != nil {
			return err
		}
	}
	if err := cw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

// copyIntoArchive writes host file name as guest path with the given mode.
func copyIntoArchive(cw *cpio.Writer, guest, name string, mode os.FileMode) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	return cw.File(guest, mode, fi.Size(), fi.ModTime(), f)
}
