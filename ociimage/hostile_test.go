package ociimage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestHostileArchives unpacks archives that try to write, link or remove
// outside the root, and checks that a directory outside (its sentinel
// file, mode and listing) is untouched whatever Unpack returns.
func TestHostileArchives(t *testing.T) {
	base := testCache(t)
	outside := filepath.Join(base, "outside")
	sentinel := filepath.Join(outside, "sentinel")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sentinel, []byte("host data"), 0o600); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(base, "cache")
	// up climbs from anywhere in the rootfs above the filesystem root.
	up := strings.Repeat("../", 40)
	rel := strings.TrimPrefix(outside, "/")
	// inside makes the outside directory's path inside the root, so
	// that links to it resolve there.
	inside := dir(rel+"/", 0o755)

	for _, tc := range []struct {
		name   string
		layers [][]ent
		err    error  // nil: must succeed
		inRoot string // a file the entries must have made inside the root
	}{
		{name: "absolute name", layers: [][]ent{{file(sentinel, 0o644, "pwned")}}, inRoot: filepath.Join(rel, "sentinel")},
		{name: "dot-dot name", layers: [][]ent{{file(up+rel+"/pwned", 0o644, "pwned")}}, err: ErrUnsafe},
		{name: "dot-dot inside", layers: [][]ent{{file("a/../../pwned", 0o644, "pwned")}}, err: ErrUnsafe},
		{name: "file under a dangling symlink", layers: [][]ent{{symlink("a", outside), file("a/pwned", 0o644, "pwned")}}, err: os.ErrNotExist},
		{name: "file under an absolute symlink", layers: [][]ent{{inside, symlink("a", outside), file("a/pwned", 0o644, "pwned")}}, inRoot: filepath.Join(rel, "pwned")},
		{name: "file under a climbing symlink", layers: [][]ent{{inside, symlink("a", up+rel), file("a/pwned", 0o644, "pwned")}}, inRoot: filepath.Join(rel, "pwned")},
		{name: "symlink chain", layers: [][]ent{{inside, symlink("b", "a"), symlink("a", outside), file("b/pwned", 0o644, "pwned")}}, inRoot: filepath.Join(rel, "pwned")},
		{name: "symlink to a symlink to the sentinel", layers: [][]ent{{symlink("c", "b"), symlink("b", sentinel), file("c", 0o644, "pwned")}}},
		{name: "symlink in a later layer", layers: [][]ent{{inside, symlink("a", outside)}, {file("a/deep/pwned", 0o644, "pwned")}}, inRoot: filepath.Join(rel, "deep/pwned")},
		{name: "directory under a symlink", layers: [][]ent{{inside, symlink("a", outside), dir("a/newdir/", 0o777)}}, inRoot: filepath.Join(rel, "newdir")},
		{name: "directory under a dangling symlink", layers: [][]ent{{symlink("a", outside), dir("a/newdir/", 0o777)}}, err: os.ErrNotExist},
		{name: "directory replaces a symlink", layers: [][]ent{{symlink("a", outside), dir("a/", 0o777), file("a/pwned", 0o644, "x")}}, inRoot: "a/pwned"},
		{name: "file replaces a symlink to the sentinel", layers: [][]ent{{symlink("s", sentinel)}, {file("s", 0o644, "pwned")}}, inRoot: "s"},
		{name: "hard link to an absolute host path", layers: [][]ent{{hardlink("h", sentinel)}}, err: os.ErrNotExist},
		{name: "hard link climbing out", layers: [][]ent{{hardlink("h", up+rel+"/sentinel")}}, err: ErrUnsafe},
		{name: "hard link through a symlink", layers: [][]ent{{symlink("a", outside), hardlink("h", "a/sentinel")}}, err: os.ErrNotExist},
		{name: "hard link to a symlink, then written", layers: [][]ent{{symlink("s", sentinel), hardlink("h", "s")}, {file("h", 0o644, "pwned")}}, inRoot: "h"},
		{name: "hard link to a directory", layers: [][]ent{{dir("d/", 0o755), hardlink("h", "d")}}, err: ErrCorrupt},
		{name: "whiteout through a symlink", layers: [][]ent{{symlink("a", outside)}, {file("a/.wh.sentinel", 0o644, "")}}},
		{name: "whiteout of a symlink's target name", layers: [][]ent{{symlink("a", sentinel)}, {file(".wh.a", 0o644, "")}}},
		{name: "opaque directory through a symlink", layers: [][]ent{{symlink("a", outside)}, {file("a/.wh..wh..opq", 0o644, "")}}},
		{name: "opaque root", layers: [][]ent{{symlink("a", outside)}, {file(".wh..wh..opq", 0o644, "")}}},
		{name: "absolute whiteout", layers: [][]ent{{file("x", 0o644, "")}, {file(filepath.Join(outside, ".wh.sentinel"), 0o644, "")}}},
		{name: "fifo over the sentinel", layers: [][]ent{{symlink("f", sentinel), ent{name: "f", typ: '6', mode: 0o666}}}},
		{name: "root entry", layers: [][]ent{{dir("/", 0o777), dir("./", 0o777), file("./x", 0o644, "x")}}, err: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var layers [][]byte
			for _, l := range tc.layers {
				layers = append(layers, layerTar(t, l...))
			}
			archive := writeDocker(t, makeImage(t, "amd64", v1.Config{Cmd: []string{"sh"}}, layers...))
			img, err := Unpack(context.Background(), archive, Options{CacheDir: cache})
			switch {
			case tc.err == nil && err != nil:
				t.Errorf("Unpack: %v", err)
			case tc.err != nil && !errors.Is(err, tc.err):
				t.Errorf("Unpack: %v, want %v", err, tc.err)
			}
			if err != nil {
				checkLine(t, err)
			}
			if tc.inRoot != "" && img != nil {
				if _, err := os.Lstat(filepath.Join(img.RootFS, tc.inRoot)); err != nil {
					t.Errorf("the entry did not land inside the root: %v", err)
				}
			}
			checkOutside(t, outside, sentinel)
		})
	}
}

func checkOutside(t *testing.T, outside, sentinel string) {
	t.Helper()
	if got := entries(t, outside); !reflect.DeepEqual(got, []string{"sentinel"}) {
		t.Errorf("outside directory holds %q", got)
	}
	fi, err := os.Lstat(sentinel)
	if err != nil {
		t.Fatalf("sentinel: %v", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Errorf("sentinel mode %v", fi.Mode())
	}
	if b, err := os.ReadFile(sentinel); err != nil || string(b) != "host data" {
		t.Errorf("sentinel holds %q (%v)", b, err)
	}
	fi, err = os.Lstat(filepath.Dir(sentinel))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("outside directory mode %v (%v)", fi.Mode(), err)
	}
}
