package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/capsule-vm/capsule/internal/kvmtest"
)

// copyImage copies the test disk to a temporary file the test may change.
func copyImage(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(image(t, "disk.ext4"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "disk.ext4")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// runLinux boots the minimal kernel with the test initramfs, the given
// init action and extra flags, and returns capsule's exit status, stdout
// and stderr.
func runLinux(t *testing.T, action string, extra ...string) (int, string, string) {
	t.Helper()
	args := append([]string{"run", "--kernel", image(t, "minimal.bzImage"), "--initrd", image(t, "initramfs.cpio.gz"),
		"--cmdline", "console=ttyS0 quiet reboot=k panic=-1 capsule.action=" + action}, extra...)
	cmd := capsuleCmd(t, binary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	return exitStatus(t, cmd.Run()), stdout.String(), stderr.String()
}

// fsck runs e2fsck -fn on img and fails the test unless it is clean.
func fsck(t *testing.T, img string) {
	t.Helper()
	out, err := exec.Command(image(t, "e2fsck"), "-fn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
}

func TestVirtioBlkGuestWritesSurviveReboot(t *testing.T) {
	kvmtest.OpenHardware(t)
	img := copyImage(t)
	status, stdout, stderr := runLinux(t, "disk", "--disk", img)
	if status != 0 || !strings.Contains(stderr, "(reset)") {
		t.Fatalf("status %d, stderr %q; want a clean reboot\nconsole:\n%s", status, stderr, stdout)
	}
	for _, want := range []string{"disk: hello.txt: hello from the host", "disk: guest.txt written"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("console lacks %q:\n%s", want, stdout)
		}
	}
	fsck(t, img)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("written by the guest\n")) {
		t.Error("the guest's file is not in the image")
	}
}

func TestVirtioBlkReadOnlyRefusesWrites(t *testing.T) {
	kvmtest.OpenHardware(t)
	img := copyImage(t)
	before := fileSum(t, img)
	status, stdout, stderr := runLinux(t, "rodisk", "--disk", img+",ro")
	if status != 0 || !strings.Contains(stdout, "rodisk: write refused") {
		t.Fatalf("status %d, stderr %q\nconsole:\n%s", status, stderr, stdout)
	}
	if fileSum(t, img) != before {
		t.Error("the read-only image changed")
	}
}

func TestVirtioBlkSecondVMRefused(t *testing.T) {
	kvmtest.OpenHardware(t)
	img := copyImage(t)
	cmd := capsuleCmd(t, binary(t), "run", "--kernel", image(t, "minimal.bzImage"), "--initrd", image(t, "initramfs.cpio.gz"),
		"--disk", img, "--cmdline", "console=ttyS0 quiet panic=-1 capsule.action=spin")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() && !strings.Contains(sc.Text(), "capsule-init: spinning") {
	}
	go io.Copy(io.Discard, out)
	for _, d := range []string{img, img + ",ro"} {
		status, _, stderr := runLinux(t, "poweroff", "--disk", d)
		if status != 1 || !strings.Contains(stderr, "is in use") {
			t.Errorf("second VM with --disk %s: status %d, stderr %q; want 1 and 'is in use'", d, status, stderr)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if s := exitStatus(t, cmd.Wait()); s != 128+int(syscall.SIGTERM) {
		t.Errorf("first VM: status %d after SIGTERM, stderr %q", s, stderr.String())
	}
	fsck(t, img)
}

func TestVirtioRNG(t *testing.T) {
	kvmtest.OpenHardware(t)
	status, stdout, stderr := runLinux(t, "hwrng", "--rng")
	if status != 0 || !strings.Contains(stdout, "hwrng: virtio_rng") {
		t.Fatalf("status %d, stderr %q\nconsole:\n%s", status, stderr, stdout)
	}
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}
