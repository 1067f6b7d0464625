package ociimage

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const (
	testPasswd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
	testGroup  = "root:x:0:\nwheel:x:10:app\napp:x:1000:\nstaff:x:50:other,app\n"
)

// testLayers are the two layers of the test image: the lower one with
// every kind of entry, the upper one with whiteouts, an opaque
// directory and replacements.
func testLayers(t testing.TB) (lower, upper []byte) {
	owned := file("owned", 0o640, "mine")
	owned.uid, owned.gid = 1000, 1000
	lower = layerTar(t,
		ent{name: "pax_global_header", typ: tar.TypeXGlobalHeader},
		dir("etc/", 0o755),
		file("etc/passwd", 0o644, testPasswd),
		file("etc/group", 0o644, testGroup),
		dir("bin/", 0o755),
		file("bin/busybox", 0o755, "busybox"),
		symlink("bin/sh", "busybox"),
		hardlink("bin/ls", "bin/busybox"),
		dir("usr/", 0o755),
		file("usr/bin/su", 0o4755, "su"), // usr/bin has no entry
		dir("tmp/", 0o1777),
		dir("old/", 0o755),
		file("old/a", 0o644, "a"),
		dir("old/sub/", 0o755),
		file("old/sub/b", 0o644, "b"),
		dir("opq/", 0o750),
		file("opq/lower", 0o644, "lower"),
		dir("opq/sub/", 0o755),
		file("opq/sub/lower2", 0o644, "lower2"),
		file("gone", 0o644, "gone"),
		file("replaced", 0o644, "lower"),
		hardlink("x", "replaced"),
		file("f2d", 0o644, "file"),
		dir("d2f/", 0o755),
		file("d2f/child", 0o644, "child"),
		dir("dev/", 0o755),
		ent{name: "dev/null", typ: tar.TypeChar, mode: 0o666},
		ent{name: "fifo", typ: tar.TypeFifo, mode: 0o640},
		dir("ro/", 0o555),
		file("ro/file", 0o444, "ro"),
		dir("ro/deeper/", 0o500),
		file("ro/deeper/f", 0o400, "deep"),
		owned,
	)
	upper = layerTar(t,
		file(".wh.gone", 0o644, ""),
		file("old/.wh.sub", 0o644, ""),
		dir("opq/", 0o755),
		file("opq/.wh..wh..opq", 0o644, ""),
		file("opq/upper", 0o644, "upper"),
		file("replaced", 0o600, "upper"),
		file("etc/hostname", 0o644, "capsule\n"),
		dir("f2d/", 0o700),
		file("f2d/x", 0o644, "x"),
		file("d2f", 0o644, "now a file"),
		symlink("bin/sh", "/bin/busybox"),
	)
	return lower, upper
}

// testTree is the tree the test image unpacks to.
var testTree = map[string]string{
	".":            "dir 0755",
	"etc":          "dir 0755",
	"etc/passwd":   `file 0644 "` + strings.ReplaceAll(testPasswd, "\n", `\n`) + `"`,
	"etc/group":    `file 0644 "` + strings.ReplaceAll(testGroup, "\n", `\n`) + `"`,
	"etc/hostname": `file 0644 "capsule\n"`,
	"bin":          "dir 0755",
	"bin/busybox":  `file 0755 "busybox"`,
	"bin/ls":       `file 0755 "busybox"`,
	"bin/sh":       "symlink /bin/busybox",
	"usr":          "dir 0755",
	"usr/bin":      "dir 0755",
	"usr/bin/su":   `file 4755 "su"`,
	"tmp":          "dir 1777",
	"old":          "dir 0755",
	"old/a":        `file 0644 "a"`,
	"opq":          "dir 0755",
	"opq/upper":    `file 0644 "upper"`,
	"replaced":     `file 0600 "upper"`,
	"x":            `file 0644 "lower"`,
	"f2d":          "dir 0700",
	"f2d/x":        `file 0644 "x"`,
	"d2f":          `file 0644 "now a file"`,
	"dev":          "dir 0755",
	"fifo":         "fifo 0640",
	"ro":           "dir 0555",
	"ro/file":      `file 0444 "ro"`,
	"ro/deeper":    "dir 0500",
	"ro/deeper/f":  `file 0400 "deep"`,
	"owned":        `file 0640 "mine"`,
}

func testImage(t testing.TB) v1.Image {
	lower, upper := testLayers(t)
	return makeImage(t, "amd64", testConfig, lower, upper)
}

// formats writes img in each archive format Unpack reads.
func formats(t *testing.T, img v1.Image) map[string]string {
	amd64 := &v1.Platform{OS: "linux", Architecture: "amd64"}
	docker := writeDocker(t, img)
	lay := writeLayout(t, map[*v1.Platform]v1.Image{amd64: img})
	return map[string]string{
		"docker":          docker,
		"docker.gz":       gzipFile(t, docker),
		"oci-dir":         lay,
		"oci-archive":     tarDir(t, lay, false),
		"oci-archive.gz":  tarDir(t, lay, true),
		"oci-no-platform": tarDir(t, writeLayout(t, map[*v1.Platform]v1.Image{nil: img}), false),
	}
}

func TestUnpackFormats(t *testing.T) {
	img := testImage(t)
	want := configHex(t, img)
	for format, archive := range formats(t, img) {
		t.Run(format, func(t *testing.T) {
			cache := testCache(t)
			got, err := Unpack(context.Background(), archive, Options{CacheDir: cache})
			if err != nil {
				t.Fatal(err)
			}
			if got.Digest != "sha256:"+want || got.RootFS != filepath.Join(cache, want, "rootfs") || got.Cached {
				t.Errorf("Unpack = %+v, want digest sha256:%s in %s, not cached", got, want, cache)
			}
			checkTree(t, got.RootFS)
			if want := []string{"dev/null (character device 1:3)"}; !reflect.DeepEqual(got.Skipped, want) {
				t.Errorf("Skipped = %q, want %q", got.Skipped, want)
			}
			wantCfg := Config{
				Entrypoint: []string{"/bin/sh", "-c"},
				Cmd:        []string{"echo hi"},
				Env:        []string{"FOO=bar", DefaultPath},
				WorkingDir: "/tmp",
				User:       "app",
			}
			if !reflect.DeepEqual(got.Config, wantCfg) {
				t.Errorf("Config = %+v, want %+v", got.Config, wantCfg)
			}
			if left := entries(t, filepath.Join(cache, want)); !reflect.DeepEqual(left, []string{"lock", "rootfs"}) {
				t.Errorf("the cache entry holds %q, want lock and rootfs", left)
			}
			if left := entries(t, cache); !reflect.DeepEqual(left, []string{want}) {
				t.Errorf("the cache holds %q, want only the image's entry", left)
			}
		})
	}
}

// checkTree checks the test image's tree at root: types, modes,
// contents, links, owners, modification times.
func checkTree(t *testing.T, root string) {
	t.Helper()
	if d := diffTrees(testTree, describe(t, root)); d != "" {
		t.Errorf("unpacked tree:\n%s", d)
	}
	same := func(a, b string) bool {
		fa, err1 := os.Lstat(filepath.Join(root, a))
		fb, err2 := os.Lstat(filepath.Join(root, b))
		return err1 == nil && err2 == nil && os.SameFile(fa, fb)
	}
	if !same("bin/ls", "bin/busybox") {
		t.Error("bin/ls is not a hard link of bin/busybox")
	}
	if same("x", "replaced") {
		t.Error("x still shares replaced's inode: the upper layer wrote through the link")
	}
	for _, n := range []string{"etc/passwd", "bin/busybox", "bin/sh", "etc", "ro/deeper", "opq"} {
		fi, err := os.Lstat(filepath.Join(root, n))
		if err != nil {
			t.Fatal(err)
		}
		if !fi.ModTime().Equal(testTime) {
			t.Errorf("%s: mtime %v, want %v", n, fi.ModTime(), testTime)
		}
	}
	fi, err := os.Lstat(filepath.Join(root, "owned"))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	wantUID, wantGID := uint32(1000), uint32(1000)
	if os.Geteuid() != 0 {
		wantUID, wantGID = uint32(os.Geteuid()), uint32(os.Getegid())
	}
	if st.Uid != wantUID || st.Gid != wantGID {
		t.Errorf("owned: owner %d:%d, want %d:%d", st.Uid, st.Gid, wantUID, wantGID)
	}
}

func TestCacheHit(t *testing.T) {
	archive := writeDocker(t, testImage(t))
	cache := testCache(t)
	first, err := Unpack(context.Background(), archive, Options{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	// A file the unpack did not write survives, and the rootfs is the
	// same directory: the second call extracted nothing.
	marker := filepath.Join(first.RootFS, "marker")
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(first.RootFS)
	if err != nil {
		t.Fatal(err)
	}
	second, err := Unpack(context.Background(), archive, Options{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	if !second.Cached || second.RootFS != first.RootFS || second.Digest != first.Digest || second.Skipped != nil {
		t.Errorf("second Unpack = %+v, want a cache hit of %+v", second, first)
	}
	if !reflect.DeepEqual(second.Config, first.Config) {
		t.Errorf("cached Config = %+v, want %+v", second.Config, first.Config)
	}
	after, err := os.Stat(second.RootFS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err != nil || !os.SameFile(before, after) {
		t.Errorf("the cached rootfs was replaced (marker: %v)", err)
	}
	// The same image in another format is the same cache entry.
	lay := writeLayout(t, map[*v1.Platform]v1.Image{nil: testImage(t)})
	third, err := Unpack(context.Background(), lay, Options{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	if !third.Cached || third.RootFS != first.RootFS {
		t.Errorf("the OCI layout of the same image: %+v, want a cache hit", third)
	}
}

func TestConcurrentUnpack(t *testing.T) {
	archive := writeDocker(t, testImage(t))
	cache := testCache(t)
	var wg sync.WaitGroup
	results := make([]*Image, 4)
	errs := make([]error, len(results))
	for i := range results {
		wg.Go(func() {
			results[i], errs[i] = Unpack(context.Background(), archive, Options{CacheDir: cache})
		})
	}
	wg.Wait()
	unpacked := 0
	for i, r := range results {
		if errs[i] != nil {
			t.Fatalf("unpacker %d: %v", i, errs[i])
		}
		if r.RootFS != results[0].RootFS {
			t.Errorf("unpacker %d got %s, unpacker 0 %s", i, r.RootFS, results[0].RootFS)
		}
		if !r.Cached {
			unpacked++
		}
	}
	if unpacked != 1 {
		t.Errorf("%d unpackers unpacked, want 1", unpacked)
	}
	checkTree(t, results[0].RootFS)
	if left := entries(t, filepath.Dir(results[0].RootFS)); !reflect.DeepEqual(left, []string{"lock", "rootfs"}) {
		t.Errorf("the cache entry holds %q, want lock and rootfs", left)
	}
}

// TestPublishRace is the race the lock prevents, between unpackers that
// do not take it: the second rename loses, and uses the first's tree.
func TestPublishRace(t *testing.T) {
	d := t.TempDir()
	final := filepath.Join(d, "rootfs")
	for i, content := range []string{"first", "second"} {
		tmp, err := os.MkdirTemp(d, tmpPrefix)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tmp, "f"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := publish(tmp, final); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("publish %d left %s", i, tmp)
		}
	}
	if b, err := os.ReadFile(filepath.Join(final, "f")); err != nil || string(b) != "first" {
		t.Errorf("rootfs holds %q (%v), want the first unpacker's", b, err)
	}
}

// TestStaleTemp: a killed unpack's temporary directory (with a
// directory the image made read-only) is removed by the next unpack.
func TestStaleTemp(t *testing.T) {
	img := testImage(t)
	archive := writeDocker(t, img)
	cache := testCache(t)
	entry := filepath.Join(cache, configHex(t, img))
	stale := filepath.Join(entry, tmpPrefix+"killed")
	if err := os.MkdirAll(filepath.Join(stale, "ro", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(stale, "ro", "sub", "f"), nil, 0o444)
	os.Chmod(filepath.Join(stale, "ro", "sub"), 0o555)
	os.Chmod(filepath.Join(stale, "ro"), 0o500)
	got, err := Unpack(context.Background(), archive, Options{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	if got.Cached {
		t.Error("a temporary directory counted as a cache hit")
	}
	if left := entries(t, entry); !reflect.DeepEqual(left, []string{"lock", "rootfs"}) {
		t.Errorf("the cache entry holds %q, want lock and rootfs", left)
	}
	checkTree(t, got.RootFS)
}

func TestPlatformChoice(t *testing.T) {
	lower, _ := testLayers(t)
	amd := makeImage(t, "amd64", testConfig, lower)
	arm := makeImage(t, "arm64", testConfig, lower)
	amd2 := makeImage(t, "amd64", v1.Config{Cmd: []string{"other"}}, lower)
	pAMD := &v1.Platform{OS: "linux", Architecture: "amd64"}
	pARM := &v1.Platform{OS: "linux", Architecture: "arm64"}
	pAMD2 := &v1.Platform{OS: "linux", Architecture: "amd64"}

	cache := testCache(t)
	multi := tarDir(t, writeLayout(t, map[*v1.Platform]v1.Image{pARM: arm, pAMD: amd}), false)
	got, err := Unpack(context.Background(), multi, Options{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != "sha256:"+configHex(t, amd) {
		t.Errorf("picked %s, want the amd64 image sha256:%s", got.Digest, configHex(t, amd))
	}

	for _, tc := range []struct {
		name    string
		archive string
		want    []string
	}{
		{"two amd64", writeLayout(t, map[*v1.Platform]v1.Image{pAMD: amd, pAMD2: amd2, pARM: arm}), []string{"2 of its images are linux/amd64", "linux/arm64", "linux/amd64"}},
		{"arm64 only", writeLayout(t, map[*v1.Platform]v1.Image{pARM: arm}), []string{"none of its images is linux/amd64", "linux/arm64"}},
		{"arm64 without a platform", writeLayout(t, map[*v1.Platform]v1.Image{nil: arm}), []string{"none of its images is linux/amd64", "linux/arm64"}},
		{"docker arm64", writeDocker(t, arm), []string{"the image is linux/arm64"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Unpack(context.Background(), tc.archive, Options{CacheDir: testCache(t)})
			if !errors.Is(err, ErrPlatform) {
				t.Fatalf("Unpack: %v, want ErrPlatform", err)
			}
			checkLine(t, err, tc.want...)
		})
	}
}

// checkLine checks that err is one line holding each of want.
func checkLine(t *testing.T, err error, want ...string) {
	t.Helper()
	msg := err.Error()
	if strings.ContainsAny(msg, "\n\r") {
		t.Errorf("error is not one line: %q", msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not say %q", msg, w)
		}
	}
}

func TestDockerMultiImage(t *testing.T) {
	lower, _ := testLayers(t)
	amd := makeImage(t, "amd64", testConfig, lower)
	arm := makeImage(t, "arm64", testConfig, lower)
	amd2 := makeImage(t, "amd64", v1.Config{Cmd: []string{"other"}}, lower)
	write := func(imgs map[string]v1.Image) string {
		return writeDockerMulti(t, imgs)
	}
	got, err := Unpack(context.Background(), write(map[string]v1.Image{"a/amd:1": amd, "a/arm:1": arm}), Options{CacheDir: testCache(t)})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != "sha256:"+configHex(t, amd) {
		t.Errorf("picked %s, want the amd64 image", got.Digest)
	}
	_, err = Unpack(context.Background(), write(map[string]v1.Image{"a/amd:1": amd, "a/amd:2": amd2}), Options{CacheDir: testCache(t)})
	if !errors.Is(err, ErrPlatform) {
		t.Fatalf("two amd64 images: %v, want ErrPlatform", err)
	}
	checkLine(t, err, "2 of them linux/amd64", "a/amd:1", "a/amd:2")
}

func TestConfigDefaults(t *testing.T) {
	c := configOf(&v1.ConfigFile{Config: v1.Config{Env: []string{"PATH=/mine"}}})
	if !slices.Equal(c.Env, []string{"PATH=/mine"}) {
		t.Errorf("Env = %q: the image's PATH was not kept alone", c.Env)
	}
	cfg := Config{Entrypoint: []string{"/entry", "-x"}, Cmd: []string{"default"}}
	if got := cfg.Argv(nil); !slices.Equal(got, []string{"/entry", "-x", "default"}) {
		t.Errorf("Argv(nil) = %q", got)
	}
	if got := cfg.Argv([]string{"sh"}); !slices.Equal(got, []string{"/entry", "-x", "sh"}) {
		t.Errorf("Argv(sh) = %q", got)
	}
	if got := (Config{Cmd: []string{"sh"}}).Argv(nil); !slices.Equal(got, []string{"sh"}) {
		t.Errorf("Argv without an entrypoint = %q", got)
	}
}

// TestOpaqueOrder: an opaque marker hides every lower-layer entry of its
// directory, however many, and keeps what its own layer wrote before
// the marker, also beneath a lower-layer subdirectory.
func TestOpaqueOrder(t *testing.T) {
	lower := []ent{dir("big/", 0o755), dir("big/sub/", 0o755), file("big/sub/old", 0o644, "old")}
	for i := range 3000 {
		lower = append(lower, file(fmt.Sprintf("big/f%04d", i), 0o644, ""))
	}
	upper := []ent{
		file("big/keep", 0o644, "keep"),
		file("big/sub/new", 0o644, "new"),
		file("big/.wh..wh..opq", 0o644, ""),
		file("big/after", 0o644, "after"),
	}
	img := makeImage(t, "amd64", v1.Config{}, layerTar(t, lower...), layerTar(t, upper...))
	got, err := Unpack(context.Background(), writeDocker(t, img), Options{CacheDir: testCache(t)})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		".":           "dir 0755",
		"big":         "dir 0755",
		"big/keep":    `file 0644 "keep"`,
		"big/after":   `file 0644 "after"`,
		"big/sub":     "dir 0755",
		"big/sub/new": `file 0644 "new"`,
	}
	if d := diffTrees(want, describe(t, got.RootFS)); d != "" {
		t.Errorf("unpacked tree:\n%s", d)
	}
}
