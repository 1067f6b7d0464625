package images

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/capsule-vm/capsule/internal/cpio"
	"github.com/capsule-vm/capsule/internal/guestimage"
	"github.com/capsule-vm/capsule/internal/rig"
)

// root is the module root, two levels above this package.
func root(t *testing.T) string {
	t.Helper()
	r, ok := guestimage.ModuleRoot(".")
	if !ok {
		wd, _ := os.Getwd()
		r, ok = guestimage.ModuleRoot(wd)
	}
	if !ok {
		t.Fatal("module root not found")
	}
	return r
}

func TestParseFragment(t *testing.T) {
	frag := `# comment
CONFIG_64BIT=y

CONFIG_NR_CPUS=8
CONFIG_CMDLINE="console=ttyS0 quiet"
CONFIG_PHYSICAL_START=0x1000000
  # CONFIG_PCI is not set
CONFIG_FOO=m
CONFIG_BAR=n
`
	opts, err := ParseFragment([]byte(frag))
	if err != nil {
		t.Fatal(err)
	}
	want := []Option{
		{"64BIT", "y", 2, ""}, {"NR_CPUS", "8", 4, ""}, {"CMDLINE", `"console=ttyS0 quiet"`, 5, ""},
		{"PHYSICAL_START", "0x1000000", 6, ""}, {"PCI", "n", 7, ""}, {"FOO", "m", 8, ""}, {"BAR", "n", 9, ""},
	}
	if !slices.Equal(opts, want) {
		t.Errorf("got %v\nwant %v", opts, want)
	}
	if s := opts[4].String(); s != "# CONFIG_PCI is not set" {
		t.Errorf("String() = %q", s)
	}
	for _, bad := range []string{
		"CONFIG_X=y\nCONFIG_X=n\n",            // twice
		"CONFIG_X=y\n# CONFIG_X is not set\n", // twice
		"CONFIG_X=yes\n",                      // bad value
		"CONFIG_X=\"open\n",                   // unterminated string
		"CONFIG_X\n",                          // no value
		"X=y\n",                               // no prefix
		"# only comments\n\n",                 // nothing
	} {
		if _, err := ParseFragment([]byte(bad)); err == nil {
			t.Errorf("ParseFragment(%q): no error", bad)
		}
	}
}

// TestMinimalFragment checks the fragment in testdata/kernel.
func TestMinimalFragment(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root(t), FragmentPath))
	if err != nil {
		t.Fatal(err)
	}
	opts, err := ParseFragment(data)
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]string{}
	for _, o := range opts {
		vals[o.Name] = o.Value
	}
	for name, want := range map[string]string{
		"64BIT": "y", "PVH": "y", "KVM_GUEST": "y", "SERIAL_8250_CONSOLE": "y", "BLK_DEV_INITRD": "y",
		"RD_GZIP": "y", "BINFMT_SCRIPT": "y", "X86_MPPARSE": "y", "X86_IO_APIC": "y", "KERNEL_LZ4": "y",
		"VIRTIO_MMIO_CMDLINE_DEVICES": "y", "PCI": "n", "ACPI": "n", "KERNEL_XZ": "n",
	} {
		if vals[name] != want {
			t.Errorf("CONFIG_%s = %q, want %q", name, vals[name], want)
		}
	}
}

func TestDefaultFragment(t *testing.T) {
	r := root(t)
	var frags [][]Option
	for _, path := range defaultSpec.fragments {
		data, err := os.ReadFile(filepath.Join(r, path))
		if err != nil {
			t.Fatal(err)
		}
		opts, err := ParseFragment(data)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		frags = append(frags, opts)
	}
	vals := map[string]string{}
	for _, o := range MergeFragments(frags...) {
		vals[o.Name] = o.Value
	}
	for name, want := range map[string]string{
		// the minimal kernel's, kept
		"64BIT": "y", "PVH": "y", "KVM_GUEST": "y", "SERIAL_8250_CONSOLE": "y", "VIRTIO_MMIO_CMDLINE_DEVICES": "y",
		"9P_FS": "y", "VIRTIO_VSOCKETS": "y", "KERNEL_LZ4": "y",
		// the default kernel's, ACPI and PCI overriding the minimal kernel's "n"
		"ACPI": "y", "PCI": "y", "PVPANIC_MMIO": "y", "FUTEX": "y", "EPOLL": "y", "UNIX98_PTYS": "y", "OVERLAY_FS": "y",
		"TMPFS_XATTR": "y", "9P_FS_POSIX_ACL": "y", "CGROUPS": "y", "MEMCG": "y", "SECCOMP_FILTER": "y",
	} {
		if vals[name] != want {
			t.Errorf("CONFIG_%s = %q, want %q", name, vals[name], want)
		}
	}
}

// TestFragmentsExplainThemselves checks that every group of options in the
// fragments starts with a comment saying why they are there.
func TestFragmentsExplainThemselves(t *testing.T) {
	for _, path := range defaultSpec.fragments {
		data, err := os.ReadFile(filepath.Join(root(t), path))
		if err != nil {
			t.Fatal(err)
		}
		for i, para := range strings.Split(string(data), "\n\n") {
			lines := strings.Split(strings.TrimSpace(para), "\n")
			if len(lines) == 0 || lines[0] == "" {
				continue
			}
			hasOption := false
			for _, l := range lines {
				if setLine.MatchString(l) || unsetLine.MatchString(l) {
					hasOption = true
				}
			}
			first := lines[0]
			if hasOption && (!strings.HasPrefix(first, "#") || unsetLine.MatchString(first)) {
				t.Errorf("%s, paragraph %d: options without a comment first: %q", path, i+1, first)
			}
		}
	}
}

func TestMergeFragments(t *testing.T) {
	a := []Option{{"A", "y", 1, "a"}, {"B", "n", 2, "a"}, {"C", "y", 3, "a"}}
	b := []Option{{"D", "y", 1, "b"}, {"B", "y", 2, "b"}}
	got := MergeFragments(a, b)
	want := []Option{{"A", "y", 1, "a"}, {"B", "y", 2, "b"}, {"C", "y", 3, "a"}, {"D", "y", 1, "b"}}
	if !slices.Equal(got, want) {
		t.Errorf("MergeFragments = %v\nwant %v", got, want)
	}
	if d := Dropped(got, []byte("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_D=y\n")); len(d) != 1 ||
		!strings.Contains(d[0], "(b line 2)") {
		t.Errorf("Dropped = %q, want one naming b line 2", d)
	}
}

func TestDropped(t *testing.T) {
	frag, err := ParseFragment([]byte("CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=8\n# CONFIG_D is not set\n# CONFIG_E is not set\nCONFIG_F=y\n# CONFIG_G is not set\nCONFIG_H=y\n"))
	if err != nil {
		t.Fatal(err)
	}
	dotConfig := `#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_A=y
# CONFIG_B is not set
CONFIG_C=4
# CONFIG_D is not set
CONFIG_E=y
CONFIG_F=m
CONFIG_H=y
`
	got := Dropped(frag, []byte(dotConfig))
	var names []string
	for _, d := range got {
		names = append(names, strings.Fields(d)[0])
	}
	want := []string{"CONFIG_B=y", "CONFIG_C=8", "#", "CONFIG_F=y"}
	if !slices.Equal(names, want) {
		t.Errorf("Dropped = %q\nwant ones starting %q", got, want)
	}
	if !strings.Contains(got[2], "CONFIG_E is not set") || !strings.Contains(got[2], "CONFIG_E=y") {
		t.Errorf("unset option report %q", got[2])
	}
	if len(Dropped(frag[:1], []byte(dotConfig))) != 0 {
		t.Error("CONFIG_A=y reported dropped")
	}
}

func TestKeyStable(t *testing.T) {
	// The key must not change between runs or Go versions, or every cached
	// image would be rebuilt: a change here must be deliberate.
	if k := Key([]byte("a"), []byte("bc")); k != "3fafa1cf2f19a7c1129b" {
		t.Errorf("Key(a, bc) = %s; the cache key scheme changed", k)
	}
	if Key([]byte("a"), []byte("bc")) == Key([]byte("ab"), []byte("c")) {
		t.Error("moving a byte between parts kept the key")
	}
	if Key([]byte("a"), []byte("bc")) == Key([]byte("bc"), []byte("a")) {
		t.Error("reordering the parts kept the key")
	}
	if Key([]byte("x")) == Key([]byte("x"), nil) {
		t.Error("an empty extra part kept the key")
	}
}

func fakeInitramfs(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := writeInitramfs(&buf, []byte("#!/bin/sh\necho hi\n"), []byte("BUSYBOX"), []byte("CAPSULE-IO")); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestInitramfsContents(t *testing.T) {
	data := fakeInitramfs(t)
	if !bytes.Equal(data, fakeInitramfs(t)) {
		t.Fatal("the same inputs gave different archives")
	}
	entries, err := ListInitramfs(data)
	if err != nil {
		t.Fatal(err)
	}
	checkInitramfs(t, entries, "BUSYBOX", "CAPSULE-IO", "#!/bin/sh\necho hi\n")
	var names []string
	for _, e := range entries {
		names = append(names, e.Name)
		if e.Mtime != 0 {
			t.Errorf("%s: mtime %d, want 0", e.Name, e.Mtime)
		}
	}
	if !slices.IsSorted(names) {
		t.Errorf("entries not sorted: %q", names)
	}
}

// checkInitramfs checks the entries every initramfs must have.
func checkInitramfs(t *testing.T, entries []cpio.Entry, busybox, helper, initScript string) {
	t.Helper()
	byName := map[string]cpio.Entry{}
	for _, e := range entries {
		if _, dup := byName[e.Name]; dup {
			t.Errorf("%s twice", e.Name)
		}
		if dir := filepath.Dir(e.Name); dir != "." {
			if p, ok := byName[dir]; !ok || p.Type() != cpio.TypeDir {
				t.Errorf("%s comes before its directory", e.Name)
			}
		}
		byName[e.Name] = e
	}
	want := []struct {
		name string
		mode uint32
		data string
	}{
		{"init", cpio.TypeReg | 0o755, initScript},
		{"bin/busybox", cpio.TypeReg | 0o755, busybox},
		{"bin/capsule-io", cpio.TypeReg | 0o755, helper},
		{"bin/sh", cpio.TypeSymlink | 0o777, "busybox"},
		{"bin/mount", cpio.TypeSymlink | 0o777, "busybox"},
		{"bin/reboot", cpio.TypeSymlink | 0o777, "busybox"},
		{"bin/poweroff", cpio.TypeSymlink | 0o777, "busybox"},
		{"dev/console", cpio.TypeChar | 0o600, ""},
		{"dev/null", cpio.TypeChar | 0o666, ""},
		{"proc", cpio.TypeDir | 0o555, ""},
		{"sys", cpio.TypeDir | 0o555, ""},
		{"tmp", cpio.TypeDir | 0o1777, ""},
	}
	for _, w := range want {
		e, ok := byName[w.name]
		if !ok {
			t.Errorf("/%s missing", w.name)
			continue
		}
		if e.Mode != w.mode || (w.data != "" && string(e.Data) != w.data) {
			t.Errorf("/%s: mode %o, %d bytes; want mode %o, %d bytes", w.name, e.Mode, len(e.Data), w.mode, len(w.data))
		}
	}
	if c := byName["dev/console"]; c.Major != 5 || c.Minor != 1 {
		t.Errorf("/dev/console is %d,%d, want 5,1", c.Major, c.Minor)
	}
	if c := byName["dev/null"]; c.Major != 1 || c.Minor != 3 {
		t.Errorf("/dev/null is %d,%d, want 1,3", c.Major, c.Minor)
	}
}

// needInitramfsTools skips unless the initramfs can be built here without
// installing anything.
func needInitramfsTools(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc")
	}
	if _, err := rig.StaticBusybox(); err != nil {
		t.Skip(err)
	}
	if missing, err := missingPackages(context.Background(), initramfsPackages); err != nil || len(missing) > 0 {
		t.Skipf("missing Debian packages %v (%v)", missing, err)
	}
}

// TestBuildInitramfs builds the real initramfs in two fresh caches and
// checks that the results are the same bytes and hold what /init needs.
func TestBuildInitramfs(t *testing.T) {
	needInitramfsTools(t)
	r := root(t)
	var outs [][]byte
	for i := range 2 {
		var log bytes.Buffer
		cache := t.TempDir()
		out := filepath.Join(t.TempDir(), "sub", "initramfs.cpio.gz")
		opts := Options{Root: r, CacheDir: cache, Stderr: &log}
		written, err := Build(t.Context(), opts, Initramfs, out)
		if err != nil {
			t.Fatalf("build %d: %v\n%s", i, err, log.String())
		}
		if !slices.Equal(written, []string{out}) {
			t.Errorf("Build wrote %q, want %q", written, out)
		}
		if !strings.Contains(log.String(), "initramfs: built") {
			t.Errorf("first build in a new cache: %s", log.String())
		}
		log.Reset()
		if _, err := Build(t.Context(), opts, Initramfs, out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(log.String(), "initramfs: cached") {
			t.Errorf("second build in the same cache: %s", log.String())
		}
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, data)
	}
	if !bytes.Equal(outs[0], outs[1]) {
		t.Error("two builds gave different archives")
	}
	entries, err := ListInitramfs(outs[0])
	if err != nil {
		t.Fatal(err)
	}
	bb, _ := rig.StaticBusybox()
	busybox, _ := os.ReadFile(bb)
	initScript, _ := os.ReadFile(filepath.Join(r, InitScriptPath))
	var helper []byte
	for _, e := range entries {
		if e.Name == "bin/capsule-io" {
			helper = e.Data
		}
	}
	if !bytes.HasPrefix(helper, []byte("\x7fELF")) {
		t.Fatal("/bin/capsule-io is not an ELF file")
	}
	checkInitramfs(t, entries, string(busybox), string(helper), string(initScript))
}

// TestCapsuleIOUsage checks the helper's argument errors (it never touches
// a port here).
func TestCapsuleIOUsage(t *testing.T) {
	needInitramfsTools(t)
	src, err := os.ReadFile(filepath.Join(root(t), CapsuleIOPath))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := compileHelper(t.Context(), src, dir); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{}, {"outb"}, {"inb", "0xf4"}, {"outb", "0xf4"}, {"outb", "0xf4", "1", "2"},
		{"outb", "65536", "1"}, {"outb", "0x10000", "1"}, {"outb", "0xf4", "256"}, {"outb", "0xf4", "0x100"},
		{"outb", "f4", "1"}, {"outb", "0x", "1"}, {"outb", "-1", "1"}, {"outb", "0xf4", "1a"}, {"outb", "", "1"},
		{"conspeed"}, {"conspeed", "0"}, {"conspeed", "ten"}, {"conspeed", "1000001"},
	} {
		out, err := exec.Command(filepath.Join(dir, "capsule-io"), args...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("capsule-io %q: %v, want exit status 2\n%s", args, err, out)
		} else if !strings.Contains(string(out), "usage") && !strings.Contains(string(out), "want 0-") {
			t.Errorf("capsule-io %q: unclear message %q", args, out)
		}
	}
}

// TestInitSyntax checks /init with the host's busybox sh -n.
func TestInitSyntax(t *testing.T) {
	bb, err := rig.StaticBusybox()
	if err != nil {
		t.Skip(err)
	}
	out, err := exec.Command(bb, "sh", "-n", filepath.Join(root(t), InitScriptPath)).CombinedOutput()
	if err != nil {
		t.Fatalf("busybox sh -n: %v\n%s", err, out)
	}
}

func TestFindNote(t *testing.T) {
	var b bytes.Buffer
	note := func(name string, typ uint32, desc []byte) {
		n := append([]byte(name), 0)
		binary.Write(&b, binary.LittleEndian, [3]uint32{uint32(len(n)), uint32(len(desc)), typ})
		b.Write(n)
		b.Write(make([]byte, (4-len(n)%4)%4))
		b.Write(desc)
		b.Write(make([]byte, (4-len(desc)%4)%4))
	}
	note("GNU", 3, []byte{1, 2, 3, 4, 5})
	note("Xen", 6, []byte("linux\x00"))
	note("Xen", xenElfnotePhys32Entry, []byte{0xe0, 0x01, 0x00, 0x01, 0, 0, 0, 0})
	desc, ok := findNote(b.Bytes(), binary.LittleEndian, "Xen", xenElfnotePhys32Entry)
	if !ok || binary.LittleEndian.Uint64(desc) != 0x10001e0 {
		t.Errorf("findNote = %x, %v", desc, ok)
	}
	if _, ok := findNote(b.Bytes()[:40], binary.LittleEndian, "Xen", xenElfnotePhys32Entry); ok {
		t.Error("found a note in truncated data")
	}
}

func TestInstall(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("new"), 0o444); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "out", "dst")
	for range 2 { // creates, then replaces
		if err := install(src, dst); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Lstat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "new" || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 {
		t.Errorf("dst: %q mode %v", b, fi.Mode())
	}
	if os.WriteFile(dst, []byte("changed"), 0o644) != nil {
		t.Fatal("write dst")
	}
	if b, _ := os.ReadFile(src); string(b) != "new" {
		t.Error("writing the output changed the cached file")
	}
	entries, _ := os.ReadDir(filepath.Dir(dst))
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}

// TestCachedBuildsOnce runs concurrent builds of one key: one builds, the
// others wait for the lock and find the result.
func TestCachedBuildsOnce(t *testing.T) {
	b, err := newBuilder(Options{Root: ".", CacheDir: t.TempDir(), Stderr: &bytes.Buffer{}})
	if err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(b.cache, ".tmp-t-123", "scratch")
	if err := os.MkdirAll(stale, 0o755); err != nil {
		t.Fatal(err)
	}
	var builds atomic.Int32
	build := func(ctx context.Context, out, scratch string) error {
		builds.Add(1)
		os.WriteFile(filepath.Join(scratch, "junk"), []byte("x"), 0o644)
		return os.WriteFile(filepath.Join(out, "f"), []byte("result"), 0o644)
	}
	var wg sync.WaitGroup
	dirs := make([]string, 4)
	for i := range dirs {
		wg.Go(func() {
			dir, _, err := b.cached(t.Context(), "t", "k1", []string{"f"}, build)
			if err != nil {
				t.Error(err)
			}
			dirs[i] = dir
		})
	}
	wg.Wait()
	if n := builds.Load(); n != 1 {
		t.Errorf("%d builds, want 1", n)
	}
	for _, d := range dirs {
		if d != filepath.Join(b.cache, "t-k1") {
			t.Errorf("dir %s", d)
		}
	}
	if data, _ := os.ReadFile(filepath.Join(b.cache, "t-k1", "f")); string(data) != "result" {
		t.Errorf("cached f = %q", data)
	}
	if _, err := os.Stat(filepath.Join(b.cache, "t-k1", "junk")); err == nil {
		t.Error("scratch file published")
	}
	if _, err := os.Stat(stale); err == nil {
		t.Error("the stale temporary directory of a killed build was kept")
	}
	// A failed build publishes nothing and leaves no temporary directory.
	_, _, err = b.cached(t.Context(), "t", "k2", []string{"f"}, func(ctx context.Context, out, scratch string) error {
		return errors.New("boom")
	})
	if err == nil || err.Error() != "boom" {
		t.Errorf("failed build: %v", err)
	}
	entries, _ := os.ReadDir(b.cache)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") || e.Name() == "t-k2" {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

func TestBuildUnknownTarget(t *testing.T) {
	if _, err := Build(t.Context(), Options{Root: "."}, "kernel", "x"); err == nil {
		t.Error("unknown target: no error")
	}
}

// TestMinimalKernel really builds the minimal kernel in a fresh cache (a
// few minutes). It runs only with CAPSULE_BUILD_KERNEL=1.
func TestMinimalKernel(t *testing.T) {
	testBuildKernel(t, minimalSpec)
}

// TestDefaultKernel is TestMinimalKernel for the default kernel.
func TestDefaultKernel(t *testing.T) {
	testBuildKernel(t, defaultSpec)
}

func testBuildKernel(t *testing.T, spec kernelSpec) {
	if testing.Short() || os.Getenv("CAPSULE_BUILD_KERNEL") != "1" {
		t.Skip("builds a kernel for minutes: set CAPSULE_BUILD_KERNEL=1 (and no -short)")
	}
	out := t.TempDir()
	opts := Options{Root: root(t), CacheDir: t.TempDir(), Stderr: tlog{t}}
	if _, err := Build(t.Context(), opts, spec.target, out); err != nil {
		t.Fatal(err)
	}
	checkKernel(t, filepath.Join(out, spec.bzImage), filepath.Join(out, spec.vmlinux))
}

// TestKernelOutputs checks testdata/images' kernels, those that have been
// built.
func TestKernelOutputs(t *testing.T) {
	for _, spec := range []kernelSpec{minimalSpec, defaultSpec} {
		t.Run(spec.target, func(t *testing.T) {
			dir := filepath.Join(root(t), "testdata", "images")
			bz, vm := filepath.Join(dir, spec.bzImage), filepath.Join(dir, spec.vmlinux)
			if _, err := os.Stat(vm); err != nil {
				t.Skipf("no testdata/images/%s: run go run ./internal/cmd/images %s", spec.vmlinux, spec.target)
			}
			checkKernel(t, bz, vm)
		})
	}
}

func checkKernel(t *testing.T, bzImage, vmlinux string) {
	t.Helper()
	bz, err := os.ReadFile(bzImage)
	if err != nil {
		t.Fatal(err)
	}
	if len(bz) < 0x210 || string(bz[0x202:0x206]) != "HdrS" {
		t.Errorf("%s has no Linux boot protocol header", bzImage)
	}
	entry, err := PVHEntry(vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if entry < 0x100000 || entry >= 1<<32 {
		t.Errorf("PVH entry %#x, want a 32-bit physical address above 1 MiB", entry)
	}
}

// tlog passes progress lines to t.Log.
type tlog struct{ t *testing.T }

func (l tlog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// TestCheckoutNames checks that capsule looks in a checkout for the files
// this package writes there.
func TestCheckoutNames(t *testing.T) {
	if DefaultVmlinuxFile != guestimage.CheckoutKernelFile || AgentInitramfsFile != guestimage.CheckoutInitrdFile {
		t.Errorf("images writes %s and %s; guestimage looks for %s and %s", DefaultVmlinuxFile, AgentInitramfsFile,
			guestimage.CheckoutKernelFile, guestimage.CheckoutInitrdFile)
	}
}
