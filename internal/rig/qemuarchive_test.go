package rig

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/capsule-vm/capsule/internal/cpio"
)

func TestParseLdd(t *testing.T) {
	out := "\tlinux-vdso.so.1 (0x00007ffc8a5e8000)\n" +
		"\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f0b4a3d0000)\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0b49e00000)\n" +
		"\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f0b4a3d0000)\n" +
		"\t/lib64/ld-linux-x86-64.so.2 (0x00007f0b4a400000)\n"
	got, err := parseLdd([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if !slices.Equal(got, want) {
		t.Errorf("parseLdd = %q, want %q", got, want)
	}
	if _, err := parseLdd([]byte("\tlibfoo.so.1 => not found\n")); err == nil {
		t.Error("missing library: no error")
	}
	if _, err := parseLdd([]byte("\tstatically linked\n")); err == nil {
		t.Error("static binary: no error")
	}
}

func TestQEMUArchive(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	inputs := []baseInput{
		{guest: guestQEMU, host: write("qemu", "QEMU"), mode: 0o755},
		{guest: "/lib/x86_64-linux-gnu/libc.so.6", host: write("libc", "LIBC"), mode: 0o755},
		{guest: "/lib64/ld-linux-x86-64.so.2", host: write("ld", "LD"), mode: 0o755},
		{guest: "/usr/share/qemu/qboot.rom", host: write("qboot", "QBOOT"), mode: 0o644},
	}
	var buf bytes.Buffer
	if err := writeQEMUArchive(&buf, inputs); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := cpio.ParseAll(raw)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	seen := map[string]bool{}
	for _, e := range entries {
		if d := filepath.Dir(e.Name); d != "." && !seen[d] {
			t.Errorf("%s before its directory", e.Name)
		}
		seen[e.Name] = true
		names = append(names, e.Name)
		if e.Name == "usr/bin/qemu-system-x86_64" && (string(e.Data) != "QEMU" || e.Perm() != 0o755) {
			t.Errorf("qemu entry %q mode %o", e.Data, e.Mode)
		}
	}
	for _, want := range []string{"lib", "lib/x86_64-linux-gnu", "lib64", "usr", "usr/bin", "usr/share/qemu", "usr/bin/qemu-system-x86_64", "lib64/ld-linux-x86-64.so.2", "usr/share/qemu/qboot.rom"} {
		if !seen[want] {
			t.Errorf("%s missing from %q", want, names)
		}
	}

	k1, err := qemuKey("1:7.2", inputs)
	if err != nil {
		t.Fatal(err)
	}
	if k2, _ := qemuKey("1:7.2", inputs); k2 != k1 {
		t.Error("key not stable")
	}
	if k3, _ := qemuKey("1:8.0", inputs); k3 == k1 {
		t.Error("the QEMU version does not change the key")
	}
}

// TestQEMUInputs lists the host QEMU's files, when QEMU is installed.
func TestQEMUInputs(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("no qemu-system-x86_64")
	}
	if _, err := exec.LookPath("ldd"); err != nil {
		t.Skip("no ldd")
	}
	inputs, err := qemuInputs(t.Context(), qemu)
	if err != nil {
		t.Fatal(err)
	}
	guests := map[string]bool{}
	for _, in := range inputs {
		if guests[in.guest] {
			t.Errorf("%s listed twice", in.guest)
		}
		guests[in.guest] = true
	}
	for _, want := range append([]string{guestQEMU, "/lib64/ld-linux-x86-64.so.2"}, qemuFirmware...) {
		if !guests[want] {
			t.Errorf("%s missing", want)
		}
	}
	if _, err := os.Stat(virtiofsd); err == nil && !guests[virtiofsd] {
		t.Errorf("%s missing", virtiofsd)
	}
	if len(inputs) < 10 {
		t.Errorf("only %d files; ldd lists dozens of libraries", len(inputs))
	}
}
