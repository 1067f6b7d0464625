package ociimage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// checkNoRootfs checks that a failed Unpack left no rootfs and no
// temporary directory in the cache: only entries' directories and locks.
func checkNoRootfs(t *testing.T, cache string) {
	t.Helper()
	filepath.WalkDir(cache, func(p string, de fs.DirEntry, err error) error {
		if err != nil || p == cache {
			return err
		}
		rel, _ := filepath.Rel(cache, p)
		parts := strings.Split(rel, string(filepath.Separator))
		if len(parts) > 2 || (len(parts) == 2 && parts[1] != "lock") || (len(parts) == 1 && !de.IsDir()) {
			t.Errorf("the failed unpack left %s", rel)
		}
		return nil
	})
}

func TestBadArchives(t *testing.T) {
	img := testImage(t)
	docker := writeDocker(t, img)
	lay := writeLayout(t, map[*v1.Platform]v1.Image{{OS: "linux", Architecture: "amd64"}: img})
	oci := tarDir(t, lay, false)
	tmp := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(tmp, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name, archive string
		err           error
		says          string
	}{
		{"missing", filepath.Join(tmp, "missing.tar"), ErrNotFound, "missing.tar: no such file or directory"},
		{"empty", write("empty.tar", nil), ErrNotImage, "empty tar archive"},
		{"not a tar", write("junk.tar", []byte(strings.Repeat("junk", 1000))), ErrNotImage, "not a tar archive"},
		{"bad gzip", write("junk.tar.gz", []byte{0x1f, 0x8b, 1, 2, 3}), ErrCorrupt, "gzip"},
		{"plain tar", write("plain.tar", layerTar(t, file("hello", 0o644, "hi"))), ErrNotImage, "no manifest.json or index.json"},
		{"directory", tmp, ErrNotImage, "no index.json"},
	}
	for _, frac := range []int{10, 50, 90, 99} {
		for kind, p := range map[string]string{"docker": docker, "oci": oci} {
			b := read(p)
			// Cut inside an entry's data (not at a header boundary,
			// which is a shorter archive, not a damaged one).
			n := len(b) * frac / 100
			n -= n % 512
			n += 100
			cases = append(cases, struct {
				name, archive string
				err           error
				says          string
			}{fmt.Sprintf("%s cut at %d%%", kind, frac), write(fmt.Sprintf("%s-%d.tar", kind, frac), b[:n]), nil, ""})
		}
	}

	// A layer blob replaced by another valid layer: only the diff ID
	// check can tell.
	swapped := filepath.Join(tmp, "swapped")
	copyDir(t, lay, swapped)
	m := manifestOf(t, img)
	other := makeImage(t, "amd64", testConfig, layerTar(t, file("evil", 0o644, "evil")))
	otherLayers, _ := other.Layers()
	rc, _ := otherLayers[0].Compressed()
	evil := readAll(t, rc)
	blob := filepath.Join(swapped, "blobs", "sha256", m.Layers[1].Digest.Hex)
	os.Chmod(blob, 0o644)
	if err := os.WriteFile(blob, evil, 0o644); err != nil {
		t.Fatal(err)
	}
	cases = append(cases, struct {
		name, archive string
		err           error
		says          string
	}{"swapped layer", swapped, ErrCorrupt, "layer 2 of 2: corrupt image: its content is sha256:"})

	missing := filepath.Join(tmp, "missingblob")
	copyDir(t, lay, missing)
	os.Remove(filepath.Join(missing, "blobs", "sha256", m.Layers[0].Digest.Hex))
	cases = append(cases, struct {
		name, archive string
		err           error
		says          string
	}{"missing blob", missing, ErrCorrupt, "blob " + m.Layers[0].Digest.String() + " is missing"})

	tampered := filepath.Join(tmp, "tampered")
	copyDir(t, lay, tampered)
	cfgBlob := filepath.Join(tampered, "blobs", "sha256", m.Config.Digest.Hex)
	os.Chmod(cfgBlob, 0o644)
	cb := read(cfgBlob)
	cb = []byte(strings.Replace(string(cb), "echo hi", "echo HI", 1))
	os.WriteFile(cfgBlob, cb, 0o644)
	cases = append(cases, struct {
		name, archive string
		err           error
		says          string
	}{"tampered config", tampered, ErrCorrupt, "does not match its digest"})

	// A byte flipped inside the docker archive's second layer.
	flipped := read(docker)
	f, err := os.Open(docker)
	if err != nil {
		t.Fatal(err)
	}
	files, err := indexTar(f, int64(len(flipped)), 100)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, ok := files[m.Layers[1].Digest.Hex+".tar.gz"]
	if !ok {
		t.Fatalf("no second layer in the docker archive: %v", files)
	}
	flipped[s.off+s.size/2] ^= 0x55
	cases = append(cases, struct {
		name, archive string
		err           error
		says          string
	}{"flipped byte", write("flipped.tar", flipped), ErrCorrupt, "layer 2 of 2"})

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cache := testCache(t)
			_, err := Unpack(context.Background(), tc.archive, Options{CacheDir: cache})
			if err == nil {
				t.Fatal("Unpack succeeded")
			}
			if tc.err != nil && !errors.Is(err, tc.err) {
				t.Errorf("Unpack: %v, want %v", err, tc.err)
			}
			if tc.err == nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotImage) {
				t.Errorf("Unpack: %v, want ErrCorrupt or ErrNotImage", err)
			}
			checkLine(t, err, "image "+tc.archive+": ", tc.says)
			checkNoRootfs(t, cache)
			t.Log(err)
		})
	}
}

func TestLimits(t *testing.T) {
	many := []ent{}
	for i := range 50 {
		many = append(many, file(fmt.Sprintf("f%d", i), 0o644, "1234567"))
	}
	for _, tc := range []struct {
		name  string
		layer []ent
		opts  Options
		says  string
	}{
		{"entries", many, Options{MaxEntries: 20}, "more than 20 entries"},
		{"file size", many, Options{MaxFileSize: 6}, "over the 6-byte limit"},
		{"total size", many, Options{MaxTotalSize: 100}, "over 100 bytes"},
		{"absurd header", []ent{{name: "huge", typ: '0', mode: 0o644, size: 300 << 30}}, Options{}, "322122547200 bytes, over the 274877906944-byte limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache := testCache(t)
			tc.opts.CacheDir = cache
			archive := writeDocker(t, makeImage(t, "amd64", v1.Config{}, layerTar(t, tc.layer...)))
			_, err := Unpack(context.Background(), archive, tc.opts)
			if !errors.Is(err, ErrLimit) {
				t.Fatalf("Unpack: %v, want ErrLimit", err)
			}
			checkLine(t, err, tc.says)
			checkNoRootfs(t, cache)
		})
	}
}

func TestCancel(t *testing.T) {
	var many []ent
	for i := range 3000 {
		many = append(many, file(fmt.Sprintf("f%d", i), 0o644, ""))
	}
	archive := writeDocker(t, makeImage(t, "amd64", v1.Config{}, layerTar(t, many...)))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	cache := testCache(t)
	_, err := Unpack(ctx, archive, Options{CacheDir: cache})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Unpack: %v, want context.Canceled", err)
	}
	checkNoRootfs(t, cache)
}
