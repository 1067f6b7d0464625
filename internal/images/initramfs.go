package images

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/capsule-vm/capsule/internal/cpio"
	"github.com/capsule-vm/capsule/internal/rig"
)

// Inputs of the initramfs, relative to the module root.
const (
	InitScriptPath = "testdata/initramfs/init"
	CapsuleIOPath  = "testdata/initramfs/capsule-io.c"
)

// initramfsRecipe changes whenever the archive's layout or the helper's
// build command changes.
const initramfsRecipe = "capsule-images-initramfs-1"

var initramfsPackages = []string{"gcc", "libc6-dev", "busybox-static"}

// Applets are the busybox applets linked in /bin: those /init uses, and a
// few for looking around by hand.
var Applets = []string{"cat", "chmod", "dd", "dmesg", "grep", "ip", "ls", "mkdir", "mount", "nc", "ping", "poweroff",
	"reboot", "sh", "sleep", "tar", "udhcpc", "umount", "uname", "wc", "wget"}

func (b *builder) initramfs(ctx context.Context) (map[string]string, string, error) {
	if err := b.ensurePackages(ctx, Initramfs, initramfsPackages); err != nil {
		return nil, "", err
	}
	initScript, err := b.input(InitScriptPath)
	if err != nil {
		return nil, "", err
	}
	helperSrc, err := b.input(CapsuleIOPath)
	if err != nil {
		return nil, "", err
	}
	bbPath, err := rig.StaticBusybox()
	if err != nil {
		return nil, "", err
	}
	busybox, err := os.ReadFile(bbPath)
	if err != nil {
		return nil, "", err
	}
	toolchain, err := staticToolchain(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", Initramfs, err)
	}
	bbSum := sha256.Sum256(busybox)
	key := Key([]byte(initramfsRecipe), initScript, helperSrc, bbSum[:], toolchain, []byte(strings.Join(Applets, " ")))
	dir, hit, err := b.cached(ctx, Initramfs, key, []string{InitramfsFile}, func(ctx context.Context, out, scratch string) error {
		helper, err := compileHelper(ctx, helperSrc, scratch)
		if err != nil {
			return err
		}
		f, err := os.Create(filepath.Join(out, InitramfsFile))
		if err != nil {
			return err
		}
		if err := writeInitramfs(f, initScript, busybox, helper); err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", Initramfs, err)
		}
		return f.Close()
	})
	if err != nil {
		return nil, "", err
	}
	return map[string]string{InitramfsFile: filepath.Join(dir, InitramfsFile)}, how(hit), nil
}

func how(hit bool) string {
	if hit {
		return "cached"
	}
	return "built"
}

// staticToolchain identifies what builds the static helper: gcc's version
// line and a hash of the static C library.
func staticToolchain(ctx context.Context) ([]byte, error) {
	gcc, err := firstLine(ctx, "gcc", "--version")
	if err != nil {
		return nil, err
	}
	out, err := output(ctx, "gcc", "-print-file-name=libc.a")
	if err != nil {
		return nil, err
	}
	libc := strings.TrimSpace(string(out))
	f, err := os.Open(libc)
	if err != nil {
		return nil, fmt.Errorf("static C library (apt-get install libc6-dev): %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, "%s\x00%x", gcc, h.Sum(nil)), nil
}

// compileHelper builds capsule-io from src with gcc -static -Os in dir and
// returns the binary.
func compileHelper(ctx context.Context, src []byte, dir string) ([]byte, error) {
	c := filepath.Join(dir, "capsule-io.c")
	bin := filepath.Join(dir, "capsule-io")
	if err := os.WriteFile(c, src, 0o644); err != nil {
		return nil, err
	}
	cmd := command(ctx, dir, nil, "gcc", "-static", "-Os", "-s", "-Wall", "-Werror", "-o", bin, c)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("gcc capsule-io.c: %w\n%s", err, tail(out, 20))
	}
	f, err := elf.Open(bin)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("gcc -static gave a dynamically linked capsule-io")
		}
	}
	return os.ReadFile(bin)
}

// entry is one file of the initramfs.
type entry struct {
	name   string
	mode   fs.FileMode // type and permissions
	data   []byte      // contents, or a symbolic link's target
	rdev   [2]uint32   // major, minor of a device node
	isChar bool
}

// initramfsEntries lists the archive's entries, sorted by name (which puts
// every directory before its contents).
func initramfsEntries(initScript, busybox, helper []byte) []entry {
	es := []entry{
		{name: "bin", mode: fs.ModeDir | 0o755},
		{name: "bin/busybox", mode: 0o755, data: busybox},
		{name: "bin/capsule-io", mode: 0o755, data: helper},
		{name: "dev", mode: fs.ModeDir | 0o755},
		{name: "dev/console", mode: 0o600, rdev: [2]uint32{5, 1}, isChar: true},
		{name: "dev/null", mode: 0o666, rdev: [2]uint32{1, 3}, isChar: true},
		{name: "init", mode: 0o755, data: initScript},
		{name: "proc", mode: fs.ModeDir | 0o555},
		{name: "sys", mode: fs.ModeDir | 0o555},
		{name: "tmp", mode: fs.ModeDir | fs.ModeSticky | 0o777},
	}
	for _, a := range Applets {
		es = append(es, entry{name: "bin/" + a, mode: fs.ModeSymlink | 0o777, data: []byte("busybox")})
	}
	sort.Slice(es, func(i, j int) bool { return es[i].name < es[j].name })
	return es
}

// writeInitramfs writes the test initramfs, gzip-compressed.
func writeInitramfs(w io.Writer, initScript, busybox, helper []byte) error {
	return writeArchive(w, initramfsEntries(initScript, busybox, helper))
}

// writeArchive writes entries, in order, as a gzip-compressed newc archive
// (a directory must come before its contents). The same entries give the
// same bytes: mtimes are 0, and the gzip header carries no time or name.
func writeArchive(w io.Writer, entries []entry) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	cw := cpio.NewWriter(zw)
	for _, e := range entries {
		switch {
		case e.mode.IsDir():
			err = cw.Dir(e.name, e.mode)
		case e.mode&fs.ModeSymlink != 0:
			err = cw.Symlink(e.name, string(e.data))
		case e.isChar:
			err = cw.CharDev(e.name, e.mode, e.rdev[0], e.rdev[1])
		default:
			err = cw.Bytes(e.name, e.mode, e.data)
		}
		if err != nil {
			return err
		}
	}
	if err := cw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

// ListInitramfs reads a gzip-compressed (or plain) newc archive, such as
// the one Initramfs builds, and returns its entries.
func ListInitramfs(data []byte) ([]cpio.Entry, error) {
	if bytes.HasPrefix(data, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, err
		}
		if data, err = io.ReadAll(zr); err != nil {
			return nil, err
		}
	}
	return cpio.ParseAll(data)
}
