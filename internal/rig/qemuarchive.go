package rig

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/capsule-vm/capsule/internal/cpio"
)

// qemuFormat changes whenever the layout of the QEMU archive changes.
const qemuFormat = "capsule-rig-qemu-2"

// guestQEMU is where the QEMU archive puts qemu-system-x86_64: QEMU finds
// its firmware relative to its binary (../share/qemu, ../share/seabios).
const guestQEMU = "/usr/bin/qemu-system-x86_64"

// virtiofsd is QEMU's vhost-user file-system daemon (Debian's
// qemu-system-common), put at the same path in the guest when the host has
// it, with its libraries.
const virtiofsd = "/usr/lib/qemu/virtiofsd"

// qemuPackage is the Debian package whose version keys the QEMU archive.
const qemuPackage = "qemu-system-x86"

// qemuFirmware are the firmware files QEMU loads for -M microvm (qboot,
// linuxboot, pvh) and -M pc (SeaBIOS, kvmvapic), copied through symlinks.
var qemuFirmware = []string{
	"/usr/share/qemu/bios-microvm.bin",
	"/usr/share/qemu/qboot.rom",
	"/usr/share/qemu/linuxboot_dma.bin",
	"/usr/share/qemu/linuxboot.bin",
	"/usr/share/qemu/pvh.bin",
	"/usr/share/qemu/kvmvapic.bin",
	"/usr/share/seabios/bios-256k.bin",
}

// prepareQEMU returns the cached QEMU archive, building it first if needed:
// the host's qemu-system-x86_64 at /usr/bin, its shared libraries and
// dynamic loader at the paths ldd names, and qemuFirmware.
func prepareQEMU(ctx context.Context, cfg Config, log *logger) (string, error) {
	qemu, err := lookTool("qemu-system-x86_64", qemuHint)
	if err != nil {
		return "", err
	}
	inputs, err := qemuInputs(ctx, qemu)
	if err != nil {
		return "", fmt.Errorf("QEMU for the guest (%s): %w", EnvQEMU, err)
	}
	version := "unknown"
	if out, err := runTool(ctx, "", "dpkg-query", "-W", "-f=${Version}", qemuPackage); err == nil {
		version = strings.TrimSpace(string(out))
	}
	key, err := qemuKey(version, inputs)
	if err != nil {
		return "", err
	}
	name := filepath.Join(cfg.CacheDir, "qemu-"+key+".cpio.gz")
	if exists(name) {
		return name, nil
	}
	unlock, err := lockCache(ctx, cfg.CacheDir)
	if err != nil {
		return "", err
	}
	defer unlock()
	if exists(name) {
		return name, nil
	}
	start := time.Now()
	if err := writeFileAtomic(name, func(f *os.File) error { return writeQEMUArchive(f, inputs) }); err != nil {
		return "", fmt.Errorf("build QEMU archive: %w", err)
	}
	log.verbosef("built %s (%s %s, %d files) in %s", name, qemuPackage, version, len(inputs), secs(time.Since(start)))
	return name, nil
}

// qemuInputs lists the files of the QEMU archive.
func qemuInputs(ctx context.Context, qemu string) ([]baseInput, error) {
	in := []baseInput{{guest: guestQEMU, host: qemu, mode: 0o755}}
	bins := []string{qemu}
	if exists(virtiofsd) {
		in = append(in, baseInput{guest: virtiofsd, host: virtiofsd, mode: 0o755})
		bins = append(bins, virtiofsd)
	}
	seen := map[string]bool{}
	for _, bin := range bins {
		out, err := runTool(ctx, "", "ldd", bin)
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w\n%s", bin, err, tail(out, 10))
		}
		libs, err := parseLdd(out)
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w", bin, err)
		}
		for _, l := range libs {
			if !seen[l] {
				seen[l] = true
				in = append(in, baseInput{guest: l, host: l, mode: 0o755})
			}
		}
	}
	for _, f := range qemuFirmware {
		if !exists(f) {
			return nil, fmt.Errorf("firmware %s missing (apt-get install qemu-system-x86 seabios)", f)
		}
		in = append(in, baseInput{guest: f, host: f, mode: 0o644})
	}
	return in, nil
}

// parseLdd returns the absolute paths of ldd's output, the dynamic loader
// included, in order. It fails on a library ldd could not find.
func parseLdd(out []byte) ([]string, error) {
	var paths []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		name, target, arrow := strings.Cut(line, "=>")
		path := strings.TrimSpace(name)
		if arrow {
			path = strings.TrimSpace(target)
			if strings.HasPrefix(path, "not found") {
				return nil, fmt.Errorf("library %s not found", strings.TrimSpace(name))
			}
		}
		if i := strings.Index(path, " ("); i >= 0 {
			path = path[:i]
		}
		// linux-vdso.so.1 comes from the kernel; "statically linked" and
		// the like are not paths either.
		if !strings.HasPrefix(path, "/") || seen[path] {
			continue
		}
		seen[path] = true
		paths = append(paths, path)
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("no libraries in ldd's output %q", tail(out, 3))
	}
	return paths, nil
}

// qemuKey keys the QEMU archive: its format, the QEMU package version and
// each file's guest path, size and mtime.
func qemuKey(version string, inputs []baseInput) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", qemuFormat, version)
	for _, in := range inputs {
		fi, err := os.Stat(in.host)
		if err != nil {
			return "", fmt.Errorf("QEMU archive input: %w", err)
		}
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00%d\x00", in.guest, in.mode, fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// writeQEMUArchive writes the gzip-compressed QEMU archive: the parent
// directories, then the files, all sorted.
func writeQEMUArchive(w io.Writer, inputs []baseInput) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	cw := cpio.NewWriter(zw)
	dirs := map[string]bool{}
	for _, in := range inputs {
		for d := filepath.Dir(in.guest); d != "/" && d != "."; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	var names []string
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names)
	for _, d := range names {
		cw.Dir(d, 0o755)
	}
	sorted := append([]baseInput(nil), inputs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].guest < sorted[j].guest })
	for _, in := range sorted {
		if err := copyIntoArchive(cw, in.guest, in.host, in.mode); err != nil {
			return err
		}
	}
	if err := cw.Close(); err != nil {
		return err
	}
	return zw.Close()
}
