package rig

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

const helperEnv = "CAPSULE_RIG_TEST_HELPER"

// skipUnlessRigCanBoot skips a test that boots the rig where it cannot:
// with -short, inside the rig, without QEMU or a static busybox.
func skipUnlessRigCanBoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a QEMU guest; skipped with -short")
	}
	if os.Getenv(EnvInRig) == "1" {
		t.Skip("already inside the rig")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("no qemu-system-x86_64")
	}
	if _, err := staticBusybox(); err != nil {
		t.Skip(err)
	}
}

// TestRigBootsGuest really boots the rig, running this test binary's
// TestGuestHelper in the guest. It is slow (a few seconds with a warm
// cache; the first run downloads the kernel).
func TestRigBootsGuest(t *testing.T) {
	skipUnlessRigCanBoot(t)
	if err := checkStatic(os.Args[0], "this test binary"); err != nil {
		t.Skipf("%v (built with -race?)", err)
	}
	var stdout, stderr strings.Builder
	cfg := Config{
		Binary: os.Args[0],
		Args:   []string{"-test.run=^TestGuestHelper$", "-test.v"},
		Env:    []string{helperEnv + "=1"},
		Stdout: &stdout,
		Stderr: &stderr,
	}
	code, err := Run(t.Context(), cfg)
	t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	if err != nil {
		t.Fatal(err)
	}
	if code != 3 {
		t.Errorf("exit code %d, want 3", code)
	}
	if !strings.Contains(stdout.String(), "helper: KVM API 12, kvm_amd loaded, CAPSULE_RIG=1") {
		t.Error("helper output missing")
	}
	if strings.Contains(stdout.String(), "capsule-rig-") {
		t.Error("the rig's own console lines leaked into the output")
	}
	if !strings.Contains(stderr.String(), "ran in nested kvm_amd guest, exit 3") {
		t.Error("summary line missing")
	}
}

// TestGuestHelper runs inside the rig's guest for TestRigBootsGuest and
// exits with status 3 when the guest has a working kvm_amd.
func TestGuestHelper(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper for TestRigBootsGuest")
	}
	if err := checkKVM(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("helper: KVM API 12, kvm_amd loaded, %s=%s\n", EnvInRig, os.Getenv(EnvInRig))
	os.Exit(3)
}

// checkKVM checks that /dev/kvm answers KVM_GET_API_VERSION with 12 and
// that kvm_amd is loaded.
func checkKVM() error {
	fd, err := syscall.Open("/dev/kvm", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/kvm: %w", err)
	}
	defer syscall.Close(fd)
	const kvmGetAPIVersion = 0xAE00
	v, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), kvmGetAPIVersion, 0)
	if errno != 0 {
		return fmt.Errorf("KVM_GET_API_VERSION: %w", errno)
	}
	if v != 12 {
		return fmt.Errorf("KVM API version %d, want 12", v)
	}
	if _, err := os.Stat("/sys/module/kvm_amd"); err != nil {
		return fmt.Errorf("kvm_amd: %w", err)
	}
	return nil
}
