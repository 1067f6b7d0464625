package main

import (
	"fmt"
	"io"

	"github.com/capsule-vm/capsule/vmm"
)

func cmdProbe(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("probe", "probe", `Says what kind of KVM backs /dev/kvm on this host, lists the capabilities
capsule uses, and what will and will not work. The first line starts with
"kvm: hardware" (Intel VT-x or AMD-V), "kvm: pvm" (the kvm_pvm module, which
emulates guest supervisor mode) or "kvm: none". Exits 0 when KVM is usable,
1 when not.
`, stdout, stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	h := vmm.Probe()
	report(stdout, h)
	if h.Kind == vmm.KVMNone {
		return exitError{1}
	}
	return nil
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func report(w io.Writer, h vmm.HostInfo) {
	switch h.Kind {
	case vmm.KVMNone:
		if h.Err != nil {
			fmt.Fprintf(w, "kvm: none (%v)\n", h.Err)
		} else {
			fmt.Fprintf(w, "kvm: none\n")
		}
		fmt.Fprintf(w, "works:      nothing that needs KVM on this host\n")
		fmt.Fprintf(w, "instead:    make test-rig runs capsule's KVM tests on nested kvm_amd under QEMU (TCG)\n")
		return
	case vmm.KVMHardware:
		nested := ""
		if h.Nested != "" {
			nested = ", nested=" + h.Nested
		}
		module := "built-in"
		if h.Vendor != "" {
			module = "kvm_" + h.Vendor
		}
		fmt.Fprintf(w, "kvm: hardware (%s%s)\n", module, nested)
	case vmm.KVMPVM:
		fmt.Fprintf(w, "kvm: pvm (kvm_pvm: guest supervisor mode is emulated, about 1M instructions/s)\n")
	default:
		fmt.Fprintf(w, "kvm: hardware? (/dev/kvm works but its module is not kvm_intel, kvm_amd or kvm_pvm)\n")
	}
	fmt.Fprintf(w, "api:        %d\n", h.APIVersion)
	fmt.Fprintf(w, "vcpus:      %d max, %d recommended\n", h.MaxVCPUs, h.NrVCPUs)
	fmt.Fprintf(w, "memslots:   %d\n", h.MemSlots)
	fmt.Fprintf(w, "irqchip:    %s, pit2: %s, irqfd: %s, ioeventfd: %s, immediate exit: %s\n",
		yes(h.IRQChip), yes(h.PIT2), yes(h.IRQFD), yes(h.IOEventFD), yes(h.ImmediateExt))
	fmt.Fprintf(w, "nested state: %d\n", h.NestedState)
	switch h.Kind {
	case vmm.KVMPVM:
		fmt.Fprintf(w, "works:      unikernels and tiny guests (port I/O, MMIO, HLT, short loops)\n")
		fmt.Fprintf(w, "won't work: Linux kernels (the emulator lacks int3, cmpxchg16b, xrstor); use make test-rig\n")
	default:
		fmt.Fprintf(w, "works:      unikernels, tiny guests and Linux kernels\n")
	}
}
