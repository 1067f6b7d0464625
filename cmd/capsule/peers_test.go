package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capsule-vm/capsule/internal/kvmtest"
)

// Guests that follow other monitors' conventions: a kernel built for
// Firecracker's 64-bit ELF entry, a Multiboot guest that walks the memory
// map as one written for QEMU does, and QEMU's debug-exit and pvpanic
// ports.
func TestGuestsOfOtherMonitors(t *testing.T) {
	kvmtest.Open(t)
	bin := binary(t)
	for _, tc := range []struct {
		name   string
		args   []string
		status int
		stdout []string
		stderr string
	}{
		{"Firecracker-style ELF reads the zero page", []string{"--kernel", "../../testdata/guests/fczeropage.elf", "--cmdline", "console=ttyS0 hello"}, 0,
			[]string{"zero page ok", "cmdline: console=ttyS0 hello"}, "(exit port)"},
		{"Firecracker-style ELF with an empty command line", []string{"--kernel", "../../testdata/guests/fczeropage.elf"}, 0,
			[]string{"zero page ok"}, "(exit port)"},
		{"Multiboot memory map leaves the VGA window alone", []string{"--kernel", "../../testdata/guests/mbmmap.elf"}, 0,
			[]string{"mmap ok"}, "(exit port)"},
		{"isa-debug-exit gives (v << 1) | 1", []string{"--kernel", "../../testdata/guests/debugexit.elf", "--cmdline", "exit=5"}, 11,
			nil, "exit status 11 (debug exit)"},
		{"pvpanic is a reported panic", []string{"--kernel", "../../testdata/guests/pvpanic.elf"}, 122,
			nil, "the guest reported a panic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := capsuleCmd(t, bin, append([]string{"run", "--timeout", "30s"}, tc.args...)...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			s := exitStatus(t, cmd.Run())
			if s != tc.status || !strings.Contains(stderr.String(), tc.stderr) {
				t.Fatalf("exit status %d stderr %q; want %d and %q\nconsole:\n%s", s, stderr.String(), tc.status, tc.stderr, stdout.String())
			}
			for _, w := range tc.stdout {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("console lacks %q:\n%s", w, stdout.String())
				}
			}
		})
	}
}

// A stock Debian kernel that panics is reported as a panic, through the
// ACPI-described pvpanic device and the kernel's own driver (a module,
// appended to the test initramfs), and its boot finds a PCI bus.
func TestStockLinuxPanicIsReported(t *testing.T) {
	kvmtest.OpenHardware(t)
	kernel := image(t, "stock.bzImage")
	base, err := os.ReadFile(image(t, "initramfs.cpio.gz"))
	if err != nil {
		t.Fatal(err)
	}
	mods, err := os.ReadFile(image(t, "stock-modules.cpio"))
	if err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(t.TempDir(), "initrd")
	// Linux takes an uncompressed archive after a compressed one only at a
	// 4-byte-aligned offset; zeros between archives are skipped.
	for len(base)%4 != 0 {
		base = append(base, 0)
	}
	if err := os.WriteFile(initrd, append(base, mods...), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := capsuleCmd(t, binary(t), "run", "--kernel", kernel, "--initrd", initrd, "--timeout", "120s",
		"--cmdline", "console=ttyS0 quiet reboot=k panic=-1 capsule.action=panic")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	s := exitStatus(t, cmd.Run())
	if s != 122 || !strings.Contains(stderr.String(), "(guest panic)") {
		t.Fatalf("exit status %d stderr %q; want 122 and a guest panic\nconsole:\n%s", s, stderr.String(), stdout.String())
	}
	for _, w := range []string{"capsule-init: panicking", "Kernel panic"} {
		if !strings.Contains(stdout.String(), w) {
			t.Errorf("console lacks %q:\n%s", w, stdout.String())
		}
	}
	if strings.Contains(stdout.String(), "PCI: Fatal") {
		t.Errorf("the kernel found no PCI configuration access:\n%s", stdout.String())
	}
}
