package vmm

import (
	"errors"
	"strings"
	"testing"

	"github.com/capsule-vm/capsule/bootloader"
	"github.com/capsule-vm/capsule/devices"
	"github.com/capsule-vm/capsule/kvm"
	"github.com/capsule-vm/capsule/machine"
)

func TestLinuxOnPVMIsRefusedAtOnce(t *testing.T) {
	defer func(f func(*kvm.System) kvm.Kind) { hostKind = f }(hostKind)
	for _, tc := range []struct {
		info   bootloader.Info
		kind   kvm.Kind
		refuse bool
	}{
		{bootloader.Info{Format: bootloader.FormatBzImage, Linux: true}, kvm.KindPVM, true},
		{bootloader.Info{Format: bootloader.FormatPVH, Linux: true}, kvm.KindPVM, true},
		{bootloader.Info{Format: bootloader.FormatUnikernel, Linux: true}, kvm.KindPVM, true}, // a vmlinux without PVH
		{bootloader.Info{Format: bootloader.FormatUnikernel}, kvm.KindPVM, false},
		{bootloader.Info{Format: bootloader.FormatMultiboot}, kvm.KindPVM, false},
		{bootloader.Info{Format: bootloader.FormatBzImage, Linux: true}, kvm.KindHardware, false},
	} {
		hostKind = func(*kvm.System) kvm.Kind { return tc.kind }
		v := &VM{cfg: Config{Kernel: "K"}, info: tc.info}
		err := v.canBoot()
		if got := err != nil; got != tc.refuse {
			t.Errorf("%+v on %v: refused %v, want %v (%v)", tc.info, tc.kind, got, tc.refuse, err)
			continue
		}
		if err != nil && (!errors.Is(err, ErrCannotBootLinux) || !strings.Contains(err.Error(), "kvmrig") || strings.Contains(err.Error(), "\n")) {
			t.Errorf("refusal %q: want one line wrapping ErrCannotBootLinux and naming the rig", err)
		}
	}
}

func TestTripleFaultReportDoesNotShowResetRegistersAsTheFaults(t *testing.T) {
	var r kvm.Regs
	var s kvm.Sregs
	r.RIP = 0xfff0
	s.CS.Selector, s.CS.Base = 0xf000, 0xffff0000
	if !isResetState(r, s) {
		t.Fatal("reset state not recognised")
	}
	s.CR0 = 1 // protected mode: a real fault state
	if isResetState(r, s) {
		t.Fatal("protected-mode state taken for the reset state")
	}
}

func TestReasonNames(t *testing.T) {
	for r := ReasonExitPort; r <= ReasonPanic; r++ {
		if s := r.String(); s == "" || strings.HasPrefix(s, "Reason(") {
			t.Errorf("reason %d has no name", int(r))
		}
	}
	if s := Reason(99).String(); s != "Reason(99)" {
		t.Errorf("unknown reason: %q", s)
	}
}

// The DSDT describes the pvpanic device where the bus puts it.
func TestPVPanicPortAgrees(t *testing.T) {
	if machine.PVPanicPort != devices.PVPanicPort {
		t.Fatalf("DSDT pvpanic port %#x, device at %#x", machine.PVPanicPort, devices.PVPanicPort)
	}
}
