// Package bootloader turns a guest image file into bytes placed in guest
// RAM and the CPU state the boot vCPU starts in. It makes no KVM calls:
// everything it writes goes through [machine.GuestMemory], and the caller
// (the VMM) turns the returned [Entry] into registers.
//
// For now it loads unikernels only ([LoadUnikernel]); Linux (bzImage, PVH,
// Multiboot) is to follow, which is why [Entry] carries a [Mode].
//
// # Unikernels
//
// A unikernel is a freestanding, statically linked ELF64 x86-64 executable
// (ET_EXEC, little-endian, no PT_INTERP). Each PT_LOAD segment is copied
// to its physical address p_paddr, which must equal its virtual address
// p_vaddr (the guest runs identity-mapped), lie at or above
// [machine.KernelMin] and end inside guest RAM below
// [machine.IdentityMapped]; the bytes from p_filesz to p_memsz (bss) are
// zeroed. Segments may not overlap, and the entry point e_entry must lie in
// the file-backed part of an executable (PF_X) segment. The ELF is read
// with this package's own parser ([ParseELF]), which checks every offset
// and size against the file and for overflow, and never panics.
//
// Before entry the loader writes, in low memory:
//
//   - the command line, NUL-terminated, at [machine.CmdlineAddr] (at most
//     [machine.CmdlineMax]-1 bytes, no NUL inside);
//   - the memory map, [machine.E820] of guest RAM, at [machine.MemMapAddr]
//     as 24-byte little-endian records: u64 address, u64 size, u32 type
//     (1 RAM, 2 reserved), u32 zero;
//   - the boot-info block at [machine.BootInfoAddr] (below), which points
//     at both.
//
// The boot-info block is seven little-endian u64s:
//
//	0x00 magic 0x31454c5553504143 (the bytes "CAPSULE1")
//	0x08 command-line address    0x10 command-line length (no NUL)
//	0x18 memory-map address      0x20 memory-map entry count
//	0x28 vCPU count              0x30 RAM size in bytes
//
// The boot vCPU starts in 64-bit long mode ([Mode64]) with:
//
//   - RIP = e_entry, RSP = [machine.StackTop] (the stack grows down into
//     free low memory), RDI = [machine.BootInfoAddr] (boot info), RSI =
//     [machine.CmdlineAddr] (command line); all other general-purpose
//     registers zero, RFLAGS = 0x2 (interrupts off, DF clear);
//   - paging on, the first [machine.IdentityMapped] bytes (4 GiB, MMIO gap
//     included) identity-mapped with 2 MiB pages ([machine.SetupLongMode]);
//   - flat segments: CS = 0x08 (64-bit code), DS, ES, FS, GS, SS = 0x10;
//   - an empty IDT: any exception before the guest installs its own
//     triple-faults and stops the VM.
//
// This is the boot vCPU's state only; how the others start is the VMM's
// business. The guest stops the VM with a byte written to I/O port 0xf4
// (the exit status); a byte to port 0xf5 marks the end of boot.
package bootloader
