package rig

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capsule-vm/capsule/internal/cpio"
)

func TestRunArchive(t *testing.T) {
	root := t.TempDir()
	makeTree(t, root, map[string]string{
		"go.mod":         "module example.com/m\n",
		"testdata/g.bin": "guest",
		"pkg/x.go":       "package pkg\n",
		"pkg/testdata/t": "pkgdata",
		"elsewhere/y":    "not copied",
	})
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	tool := filepath.Join(root, "bin/tool")
	if err := os.WriteFile(tool, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	binDir := t.TempDir()
	binary := filepath.Join(binDir, "pkg.test")
	if err := os.WriteFile(binary, []byte("\x7fELF test"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Binary: binary, Dir: filepath.Join(root, "pkg")}
	var buf bytes.Buffer
	if err := writeRunArchive(&buf, cfg, nil, "RIG_TAG=x\n"); err != nil {
		t.Fatal(err)
	}
	list, err := cpio.ParseAll(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]cpio.Entry{}
	seen := map[string]bool{}
	for _, e := range list {
		if seen["/"+e.Name] {
			t.Errorf("%s written twice", e.Name)
		}
		if parent := filepath.Dir("/" + e.Name); parent != "/" && !seen[parent] {
			t.Errorf("%s written before its directory", e.Name)
		}
		seen["/"+e.Name] = true
		entries["/"+e.Name] = e
	}
	files := map[string]struct {
		data string
		mode uint32
	}{
		binary:                                {"\x7fELF test", 0o100755},
		tool:                                  {"#!/bin/sh\n", 0o100755},
		filepath.Join(root, "testdata/g.bin"): {"guest", 0o100644},
		filepath.Join(root, "pkg/testdata/t"): {"pkgdata", 0o100644},
		runScriptPath:                         {"RIG_TAG=x\n", 0o100644},
	}
	for name, w := range files {
		e, ok := entries[name]
		if !ok {
			t.Errorf("%s missing", name)
			continue
		}
		if string(e.Data) != w.data || e.Mode != w.mode {
			t.Errorf("%s: %q mode %o, want %q mode %o", name, e.Data, e.Mode, w.data, w.mode)
		}
	}
	if e, ok := entries[cfg.Dir]; !ok || e.Type() != cpio.TypeDir {
		t.Errorf("working directory %s missing", cfg.Dir)
	}
	for name := range entries {
		if strings.Contains(name, "elsewhere") || strings.HasSuffix(name, "x.go") {
			t.Errorf("%s should not be copied", name)
		}
	}
}

func TestWriteInitrdAlignsRunArchive(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base")
	if err := os.WriteFile(base, []byte("12345"), 0o644); err != nil {
		t.Fatal(err)
	}
	binary := filepath.Join(dir, "x.test")
	if err := os.WriteFile(binary, []byte("bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := writeInitrd(&buf, []string{base}, nil, Config{Binary: binary, Dir: dir}, ""); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if string(b[:8]) != "12345\x00\x00\x00" {
		t.Fatalf("initrd starts %q, want the base and 3 zero bytes", b[:8])
	}
	if _, err := cpio.ParseAll(b[8:]); err != nil {
		t.Fatal(err)
	}

	// With a second cached archive (QEMU's), each one is padded.
	qemu := filepath.Join(dir, "qemu")
	if err := os.WriteFile(qemu, []byte("abcdef"), 0o644); err != nil {
		t.Fatal(err)
	}
	buf.Reset()
	if err := writeInitrd(&buf, []string{base, qemu}, nil, Config{Binary: binary, Dir: dir}, ""); err != nil {
		t.Fatal(err)
	}
	b = buf.Bytes()
	if want := "12345\x00\x00\x00abcdef\x00\x00"; string(b[:16]) != want {
		t.Fatalf("initrd starts %q, want %q", b[:16], want)
	}
	if _, err := cpio.ParseAll(b[16:]); err != nil {
		t.Fatal(err)
	}
}

// TestRunArchiveHostRoot checks the host-root mode's per-run archive: the
// extra module files, and the module trees under /tmp, which the guest's
// own /tmp hides from the host's root.
func TestRunArchiveHostRoot(t *testing.T) {
	root := t.TempDir()
	if !coveredBy(root, []string{"/tmp"}) {
		t.Skip("TMPDIR is not /tmp")
	}
	makeTree(t, root, map[string]string{"go.mod": "module m\n", "testdata/g.bin": "guest"})
	mod := filepath.Join(t.TempDir(), "fuse.ko")
	if err := os.WriteFile(mod, []byte("module"), 0o644); err != nil {
		t.Fatal(err)
	}
	binary := filepath.Join(root, "m.test")
	if err := os.WriteFile(binary, []byte("\x7fELF test"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Binary: binary, Dir: root, HostRoot: true}
	var buf bytes.Buffer
	extra := []baseInput{{guest: hostRootModuleDir + "/fuse.ko", host: mod, mode: 0o644}}
	if err := writeRunArchive(&buf, cfg, extra, "RIG_TAG=x\n"); err != nil {
		t.Fatal(err)
	}
	list, err := cpio.ParseAll(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range list {
		got["/"+e.Name] = string(e.Data)
	}
	for name, want := range map[string]string{
		hostRootModuleDir + "/fuse.ko":        "module",
		filepath.Join(root, "testdata/g.bin"): "guest",
		binary:                                "\x7fELF test",
	} {
		if got[name] != want {
			t.Errorf("%s: %q, want %q", name, got[name], want)
		}
	}
	// A binary in the host's root is run from there: the guest's own
	// /bin/sh (busybox) stays.
	cfg.Binary = "/bin/sh"
	buf.Reset()
	if err := writeRunArchive(&buf, cfg, nil, "RIG_TAG=x\n"); err != nil {
		t.Fatal(err)
	}
	if list, err = cpio.ParseAll(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	for _, e := range list {
		if e.Name == "bin/sh" {
			t.Error("the host's /bin/sh went into the per-run archive")
		}
	}
}
