package rig

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	if err := writeRunArchive(&buf, cfg, "RIG_TAG=x\n"); err != nil {
		t.Fatal(err)
	}
	entries := map[string]cpioEntry{}
	seen := map[string]bool{}
	for _, e := range readCPIO(t, buf.Bytes()) {
		if seen["/"+e.name] {
			t.Errorf("%s written twice", e.name)
		}
		if parent := filepath.Dir("/" + e.name); parent != "/" && !seen[parent] {
			t.Errorf("%s written before its directory", e.name)
		}
		seen["/"+e.name] = true
		entries["/"+e.name] = e
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
		if string(e.data) != w.data || e.mode != w.mode {
			t.Errorf("%s: %q mode %o, want %q mode %o", name, e.data, e.mode, w.data, w.mode)
		}
	}
	if e, ok := entries[cfg.Dir]; !ok || e.mode&cpioTypeMask != cpioTypeDir {
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
	if err := writeInitrd(&buf, base, Config{Binary: binary, Dir: dir}, ""); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if string(b[:8]) != "12345\x00\x00\x00" {
		t.Fatalf("initrd starts %q, want the base and 3 zero bytes", b[:8])
	}
	readCPIO(t, b[8:])
}
