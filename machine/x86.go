package machine

import (
	"encoding/binary"
	"fmt"

	"github.com/capsule-vm/capsule/kvm"
)

// Fixed guest-physical addresses capsule uses below 1 MiB. Loaded images
// must start at or above KernelMin.
const (
	GDTAddr      = 0x0500 // GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18), 32-bit code (0x28)
	BootInfoAddr = 0x1000 // boot-protocol block: zero page, hvm_start_info or Multiboot info (4 KiB)
	// CapsuleInfoAddr is the capsule boot-info block of a kernel entered
	// in 64-bit mode from an ELF64 file (RDI at entry), next to the zero
	// page at BootInfoAddr (RSI).
	CapsuleInfoAddr = 0x2000
	MemMapAddr      = 0x3000 // memory map (capsule boot info, PVH, Multiboot)
	PML4Addr        = 0x9000 // page tables: PML4, PDPT, then 4 page directories
	pdptAddr        = PML4Addr + 0x1000
	pdAddr          = PML4Addr + 0x2000
	CmdlineAddr     = 0x20000 // kernel command line, NUL-terminated
	CmdlineMax      = 0x10000 // room for the command line, NUL included
	StackTop        = 0x80000 // initial stack pointer of a unikernel
	EBDAStart       = 0x9fc00 // top of low RAM: the extended BIOS data area, reserved up to VGAStart
	VGAStart        = 0xa0000 // the legacy VGA window [VGAStart, VGAEnd): not in the memory map
	VGAEnd          = 0xc0000
	BIOSStart       = 0xf0000 // the system BIOS area, reserved up to KernelMin: MP and ACPI tables
	KernelMin       = 0x100000
	// IdentityMapped is how much of the address space the boot page
	// tables identity-map (with 2 MiB pages), MMIO gap included.
	IdentityMapped = 4 * GiB

	CodeSelector   = 0x08
	DataSelector   = 0x10
	TSSSelector    = 0x18
	Code32Selector = 0x28
)

// E820 memory types.
const (
	E820RAM      = 1
	E820Reserved = 2
)

// E820Entry is one range of the guest's memory map.
type E820Entry struct {
	Addr uint64
	Size uint64
	Type uint32
}

// E820 returns the memory map of mem, shaped as a PC's: RAM from 0 up to
// the EBDA, the EBDA reserved [EBDAStart, VGAStart), nothing for the VGA
// window and option ROMs [VGAStart, BIOSStart), the BIOS area reserved
// [BIOSStart, 1 MiB) (the MP and ACPI tables are there), and RAM from
// 1 MiB on, split by the MMIO gap when RAM is that large. A guest of 1 MiB
// or less gets its low RAM only. Every boot protocol's memory map (the
// zero page's e820 table, PVH, Multiboot, the capsule memory map) is this
// one.
func E820(mem *GuestMemory) []E820Entry {
	var m []E820Entry
	for _, r := range mem.Regions() {
		if r.GPA == 0 {
			m = append(m, E820Entry{0, min(r.Size, EBDAStart), E820RAM})
			if r.Size > KernelMin {
				m = append(m,
					E820Entry{EBDAStart, VGAStart - EBDAStart, E820Reserved},
					E820Entry{BIOSStart, KernelMin - BIOSStart, E820Reserved},
					E820Entry{KernelMin, r.Size - KernelMin, E820RAM})
			}
			continue
		}
		m = append(m, E820Entry{r.GPA, r.Size, E820RAM})
	}
	return m
}

// MinMemory is the least guest RAM capsule can boot with: the fixed
// low-memory layout plus room for a kernel.
const MinMemory = 2 * MiB

// gdt holds flat 64-bit segments and a TSS descriptor for the boot CPU.
var gdt = []uint64{
	0,                  // null
	0x00af9b000000ffff, // 0x08: code, 64-bit, present, DPL 0, accessed
	0x00cf93000000ffff, // 0x10: data, 4 GiB, present, writable, accessed
	0x00808b0000000067, // 0x18: 64-bit TSS (busy), base 0, limit 0x67
	0,                  //       TSS descriptor, upper half
	0x00cf9b000000ffff, // 0x28: code, 32-bit, 4 GiB, present, accessed
}

// SetupGDT writes the boot GDT at GDTAddr.
func SetupGDT(mem *GuestMemory) error {
	b := make([]byte, 0, 8*len(gdt))
	for _, d := range gdt {
		b = binary.LittleEndian.AppendUint64(b, d)
	}
	if err := mem.WriteAt(b, GDTAddr); err != nil {
		return fmt.Errorf("write GDT: %w", err)
	}
	return nil
}

// SetupLongMode writes the GDT and page tables that identity-map the first
// IdentityMapped bytes, for entering a guest directly in 64-bit mode.
func SetupLongMode(mem *GuestMemory) error {
	if mem.Size() < MinMemory {
		return fmt.Errorf("guest memory %d KiB is below the %d MiB minimum", mem.Size()>>10, MinMemory/MiB)
	}
	if err := SetupGDT(mem); err != nil {
		return err
	}
	const present, writable, huge = 1, 2, 0x80
	tables := make([]byte, 6*4096)
	binary.LittleEndian.PutUint64(tables[0:], pdptAddr|present|writable)
	for i := range uint64(4) {
		binary.LittleEndian.PutUint64(tables[4096+8*i:], (pdAddr+i*4096)|present|writable)
	}
	for i := range uint64(IdentityMapped / (2 * MiB)) {
		binary.LittleEndian.PutUint64(tables[2*4096+8*i:], i*2*MiB|present|writable|huge)
	}
	if err := mem.WriteAt(tables, PML4Addr); err != nil {
		return fmt.Errorf("write page tables: %w", err)
	}
	return nil
}

// Control-register and EFER bits used at entry.
const (
	CR0PE   = 1 << 0
	CR0MP   = 1 << 1
	CR0ET   = 1 << 4
	CR0NE   = 1 << 5
	CR0WP   = 1 << 16
	CR0AM   = 1 << 18
	CR0PG   = 1 << 31
	CR4PAE  = 1 << 5
	EFERLME = 1 << 8
	EFERLMA = 1 << 10
)

// LongModeSregs puts s in 64-bit mode with the GDT and page tables of
// SetupLongMode: flat segments, paging on, interrupts described by an empty
// IDT (any exception before the guest loads its own triple-faults).
func LongModeSregs(s *kvm.Sregs) {
	flatSegments(s, kvm.Segment{Limit: 0xffffffff, Selector: CodeSelector, Type: 11, Present: 1, S: 1, L: 1, G: 1})
	s.CR0 = CR0PE | CR0MP | CR0ET | CR0NE | CR0WP | CR0AM | CR0PG
	s.CR3 = PML4Addr
	s.CR4 = CR4PAE
	s.EFER = EFERLME | EFERLMA
}

// flatSegments loads code into CS, flat 4 GiB data segments into the
// others, the boot TSS into TR and the boot GDT, with an empty IDT.
func flatSegments(s *kvm.Sregs, code kvm.Segment) {
	data := kvm.Segment{Limit: 0xffffffff, Selector: DataSelector, Type: 3, Present: 1, S: 1, DB: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = kvm.Segment{Limit: 0x67, Selector: TSSSelector, Type: 11, Present: 1}
	s.GDT = kvm.DTable{Base: GDTAddr, Limit: uint16(8*len(gdt) - 1)}
	s.IDT = kvm.DTable{}
}

// ProtectedModeSregs puts s in 32-bit protected mode with paging off and
// flat 4 GiB segments from the GDT of SetupGDT: the state PVH and Multiboot
// kernels are entered in.
func ProtectedModeSregs(s *kvm.Sregs) {
	flatSegments(s, kvm.Segment{Limit: 0xffffffff, Selector: Code32Selector, Type: 11, Present: 1, S: 1, DB: 1, G: 1})
	s.CR0 = CR0PE | CR0ET
	s.CR3, s.CR4, s.EFER = 0, 0, 0
}

// MSRs and local APIC registers set on every vCPU before boot.
const (
	msrSysenterCS   = 0x174
	msrSysenterESP  = 0x175
	msrSysenterEIP  = 0x176
	msrTSC          = 0x10
	msrMiscEnable   = 0x1a0
	msrSTAR         = 0xc0000081
	msrLSTAR        = 0xc0000082
	msrCSTAR        = 0xc0000083
	msrSyscallMask  = 0xc0000084
	msrKernelGSBase = 0xc0000102

	miscEnableFastString = 1

	lapicLVTLINT0   = 0x350
	lapicLVTLINT1   = 0x360
	lapicModeMask   = 0x700
	lapicModeExtINT = 0x700
	lapicModeNMI    = 0x400
	lapicMasked     = 1 << 16
)

// BootMSRs are the MSR values a vCPU starts with: system-call MSRs
// cleared, TSC at 0 and fast string operations enabled.
func BootMSRs() []kvm.MSR {
	return []kvm.MSR{
		{Index: msrSysenterCS}, {Index: msrSysenterESP}, {Index: msrSysenterEIP},
		{Index: msrSTAR}, {Index: msrCSTAR}, {Index: msrKernelGSBase},
		{Index: msrSyscallMask}, {Index: msrLSTAR},
		{Index: msrTSC},
		{Index: msrMiscEnable, Data: miscEnableFastString},
	}
}

// SetLINTs wires a local APIC's LINT0 to ExtINT (the 8259 PIC) and LINT1
// to NMI, unmasked, as a PC's BIOS leaves them.
func SetLINTs(l *kvm.LAPICState) {
	set := func(off int, mode uint32) {
		v := binary.LittleEndian.Uint32(l.Regs[off:])
		v = v&^(lapicModeMask|lapicMasked) | mode
		binary.LittleEndian.PutUint32(l.Regs[off:], v)
	}
	set(lapicLVTLINT0, lapicModeExtINT)
	set(lapicLVTLINT1, lapicModeNMI)
}
