package vmm

import (
	"fmt"

	"github.com/capsule-vm/capsule/bootloader"
	"github.com/capsule-vm/capsule/kvm"
	"github.com/capsule-vm/capsule/machine"
)

// bootMode is how the boot vCPU starts in one bootloader.Mode: what to
// write to guest memory before it runs (GDT, page tables) and its
// special registers.
type bootMode struct {
	setupMemory func(*machine.GuestMemory) error
	sregs       func(*kvm.Sregs)
}

// bootModes are the entry modes capsule can start a vCPU in.
var bootModes = map[bootloader.Mode]bootMode{
	bootloader.Mode64: {machine.SetupLongMode, machine.LongModeSregs},
	bootloader.Mode32: {machine.SetupGDT, machine.ProtectedModeSregs},
}

func (v *VM) load() error {
	entry, info, err := bootloader.Load(v.mem, bootloader.Config{
		Kernel: v.cfg.Kernel, Initrd: v.cfg.Initrd, Cmdline: v.cfg.Cmdline, CPUs: v.cfg.CPUs,
	})
	if err != nil {
		return err
	}
	mode, ok := bootModes[entry.Mode]
	if !ok {
		return fmt.Errorf("kernel %s: loader returned entry mode %v", v.cfg.Kernel, entry.Mode)
	}
	if err := mode.setupMemory(v.mem); err != nil {
		return err
	}
	// Kernels find the vCPUs and the I/O APIC in the MP table (without
	// ACPI) or in the ACPI MADT; both describe the same machine.
	if err := machine.WriteMPTable(v.mem, v.cfg.CPUs); err != nil {
		return err
	}
	if err := machine.WriteACPITables(v.mem, v.cfg.CPUs); err != nil {
		return err
	}
	v.entry, v.info = entry, info
	return nil
}

// create opens KVM and builds the VM, its devices and vCPUs.
func (v *VM) create() error {
	sys, err := kvm.Open()
	if err != nil {
		return err
	}
	v.sys = sys
	v.mark("/dev/kvm opened")
	if max := sys.MaxVCPUs(); v.cfg.CPUs > max {
		return fmt.Errorf("%d vCPUs: this host's KVM allows at most %d", v.cfg.CPUs, max)
	}
	if v.vm, err = sys.CreateVM(); err != nil {
		return err
	}
	// Addresses just below 4 GiB, outside RAM and the devices, for the
	// TSS and identity map VT-x needs (harmless on AMD).
	if err := v.vm.SetTSSAddr(0xfffbd000); err != nil {
		return err
	}
	if err := v.vm.SetIdentityMapAddr(0xfffbc000); err != nil {
		return err
	}
	if err := v.vm.CreateIRQChip(); err != nil {
		return err
	}
	if err := v.vm.CreatePIT2(); err != nil {
		return err
	}
	if err := v.mem.MapInto(func(slot uint32, gpa uint64, host []byte) error {
		return v.vm.SetUserMemoryRegion(slot, 0, gpa, host)
	}); err != nil {
		return fmt.Errorf("%d MiB of memory: %w", v.cfg.MemoryMiB, err)
	}
	v.mark("VM with irqchip, PIT and memory created")
	if err := v.addLegacyDevices(); err != nil {
		return err
	}
	if err := v.wireVirtio(v.log); err != nil {
		return err
	}
	return v.createVCPUs()
}

func (v *VM) createVCPUs() error {
	supported, err := v.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	v.mark("supported CPUID read")
	cpuid := machine.CPUIDConfig{CPUs: v.cfg.CPUs, TSCDeadline: v.sys.CheckExtension(kvm.CapTSCDeadline) > 0}
	for id := range v.cfg.CPUs {
		c, err := v.vm.CreateVCPU(id)
		if err != nil {
			return fmt.Errorf("%d vCPUs: %w", v.cfg.CPUs, err)
		}
		v.vcpus = append(v.vcpus, c)
		if id == 0 && v.sys.CheckExtension(kvm.CapGetTSCKHz) > 0 {
			if khz, err := c.TSCKHz(); err == nil {
				cpuid.TSCKHz = khz
			}
		}
		if err := c.SetCPUID(machine.CPUID(supported, id, cpuid)); err != nil {
			return err
		}
		if err := c.SetMSRs(machine.BootMSRs()); err != nil {
			return err
		}
		l, err := c.LAPIC()
		if err != nil {
			return err
		}
		machine.SetLINTs(&l)
		if err := c.SetLAPIC(l); err != nil {
			return err
		}
	}
	return nil
}

// setBootState puts the boot vCPU at the kernel's entry, once the loader
// has said where that is; the others wait for INIT/SIPI in the in-kernel
// local APIC, as on hardware.
func (v *VM) setBootState() error {
	boot := v.vcpus[0]
	s, err := boot.Sregs()
	if err != nil {
		return err
	}
	bootModes[v.entry.Mode].sregs(&s) // load checked the mode
	if err := boot.SetSregs(s); err != nil {
		return err
	}
	e := v.entry
	return boot.SetRegs(kvm.Regs{RIP: e.RIP, RSP: e.RSP, RAX: e.RAX, RBX: e.RBX, RDI: e.RDI, RSI: e.RSI, RFLAGS: 2})
}
