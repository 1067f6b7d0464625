// Package kvmtest holds test helpers that open /dev/kvm or skip with the
// reason. Inside the nested test rig (CAPSULE_RIG=1) or with
// CAPSULE_REQUIRE_KVM=1 a missing KVM fails the test instead, so that a
// test meant to run on real KVM can never pass by skipping.
package kvmtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/capsule-vm/capsule/kvm"
)

// Required reports whether tests must fail rather than skip without KVM.
func Required() bool {
	return os.Getenv("CAPSULE_RIG") == "1" || os.Getenv("CAPSULE_REQUIRE_KVM") == "1"
}

// Where names the place the test runs, for logs.
func Where() string {
	if os.Getenv("CAPSULE_RIG") == "1" {
		return "nested rig (kvm_amd in a TCG guest)"
	}
	return "this host"
}

// Open returns an open /dev/kvm (closed when the test ends) or skips the
// test, naming why, when this host has none.
func Open(t testing.TB) *kvm.System {
	t.Helper()
	h := kvm.Probe()
	if h.Kind == kvm.KindNone {
		if Required() {
			t.Fatalf("KVM required here but unusable: %v", h.Err)
		}
		t.Skipf("needs KVM: %v (make test-rig runs this test on nested kvm_amd)", h.Err)
	}
	s, err := kvm.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// OpenHardware is like Open but also skips on PVM, whose emulated
// supervisor mode cannot run real kernels.
func OpenHardware(t testing.TB) *kvm.System {
	t.Helper()
	s := Open(t)
	if h := kvm.Probe(); h.Kind != kvm.KindHardware {
		if Required() {
			t.Fatalf("hardware KVM required here, /dev/kvm is %s", h.Kind)
		}
		t.Skipf("needs hardware KVM: /dev/kvm is %s (make test-rig runs this test on nested kvm_amd)", h.Kind)
	}
	return s
}

// File returns the absolute path of a file a test needs that the Makefile
// builds (a guest image, bin/capsule). When it is missing the test skips,
// naming the make target, or fails in the rig.
func File(t testing.TB, path, makeTarget string) string {
	t.Helper()
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(abs); err != nil {
		if Required() {
			t.Fatalf("%s missing: %v", abs, err)
		}
		t.Skipf("%s not built: run make %s", path, makeTarget)
	}
	return abs
}
