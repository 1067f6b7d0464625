// Package bootloader turns a guest image file into bytes placed in guest
// RAM and the CPU state the boot vCPU starts in. It makes no KVM calls:
// everything it writes goes through [machine.GuestMemory], and the caller
// (the VMM) turns the returned [Entry] into registers.
//
// [Load] recognises four kinds of kernel, tried in this order:
//
//  1. a Linux bzImage ("HdrS" at file offset 0x202 and the boot flag
//     0xAA55 at 0x1FE), booted through the 64-bit boot protocol;
//  2. an ELF file (such as a Linux vmlinux) with a Xen PVH entry note,
//     booted through PVH;
//  3. a Multiboot (version 1) kernel: a Multiboot header in the first
//     8192 bytes;
//  4. any other ELF64 file, entered in 64-bit long mode the way
//     Firecracker enters an ELF vmlinux, with a Linux zero page and a
//     capsule boot-info block ([FormatUnikernel], "ELF64 (64-bit boot
//     protocol)"): a capsule unikernel, a unikernel built for
//     Firecracker, or a Linux vmlinux without its PVH note.
//     [LoadUnikernel] loads only these, without an initrd.
//
// A kernel file of 0 bytes is refused as empty.
//
// Every loader validates the whole layout (kernel, initrd, command line,
// boot structures) before it writes anything, checks every offset and size
// read from a file against the file and for overflow, and never panics.
// Errors are one line and start with "kernel PATH:" or "initrd PATH:".
//
// # Guest memory used by the loaders
//
// All formats share the low-memory layout of package machine. The loaders
// never write the GDT at [machine.GDTAddr] (0x500), the page tables at
// [machine.PML4Addr] (0x9000–0xEFFF) nor the range from [machine.EBDAStart]
// (0x9FC00) to 1 MiB, where the VMM writes the MP and ACPI tables (in the
// BIOS area from [machine.BIOSStart], 0xF0000).
//
//	0x1000  machine.BootInfoAddr     boot structure: Linux zero page (bzImage,
//	                                 ELF64), hvm_start_info, Multiboot info
//	0x2000  machine.CapsuleInfoAddr  capsule boot info (ELF64)
//	0x3000  machine.MemMapAddr       memory map (ELF64, PVH, Multiboot)
//	0x8000  LinuxStackTop            initial stack of a bzImage (grows down)
//	0x20000 machine.CmdlineAddr      command line, NUL-terminated
//	0x80000 machine.StackTop         initial stack of an ELF64 kernel (grows down)
//	0x100000 machine.KernelMin       lowest address a kernel is loaded at
//
// The memory map is [machine.E820] of guest RAM, shaped as a PC's: RAM
// [0, 0x9FC00), the EBDA reserved [0x9FC00, 0xA0000), no entry for the VGA
// window and option ROMs [0xA0000, 0xF0000), the BIOS area reserved
// [0xF0000, 0x100000), RAM from 1 MiB to the end of RAM or to the MMIO gap
// at 3 GiB, and RAM from 4 GiB for the rest. Every form of it a loader
// hands over (zero-page e820 table, PVH memmap, Multiboot mmap, capsule
// memory map) has these entries.
//
// The initrd (Linux) or module (Multiboot) is placed page-aligned as high
// as possible in the RAM below the MMIO gap, above the end of the kernel,
// and for a bzImage at or below its initrd_addr_max. Only for a bzImage or
// a PVH vmlinux, which are surely Linux, must it be a (compressed) cpio
// archive.
//
// # ELF64 kernels entered in 64-bit mode (capsule unikernels)
//
// An ELF64 kernel is a freestanding, statically linked ELF64 x86-64
// executable (ET_EXEC, little-endian, no PT_INTERP) with neither a PVH
// note nor a Multiboot header. Each PT_LOAD segment is copied to its
// physical address p_paddr, which must lie at or above
// [machine.KernelMin] and end inside the RAM below the MMIO gap (so below
// [machine.IdentityMapped]); the bytes from p_filesz to p_memsz (bss) are
// zeroed. Segments may not overlap. The entry point e_entry is a physical
// address: it must lie in the file-backed part of an executable (PF_X)
// segment's physical range [p_paddr, p_paddr+p_filesz), which for a
// segment with p_vaddr == p_paddr is its virtual range too. A Linux
// vmlinux (p_vaddr 0xffffffff81000000, p_paddr and e_entry 0x1000000)
// qualifies; the guest runs identity-mapped, so code linked elsewhere must
// run position-independent until it sets up its own page tables, as
// Linux's startup_64 does. The ELF is read with this package's one ELF
// reader ([ParseELF]). An initrd is accepted and placed as for Linux.
//
// Before entry the loader writes, in low memory:
//
//   - the command line, NUL-terminated, at [machine.CmdlineAddr] (at most
//     [machine.CmdlineMax]-1 bytes, no NUL inside; an empty one is a lone
//     NUL);
//   - the memory map at [machine.MemMapAddr] as 24-byte little-endian
//     records: u64 address, u64 size, u32 type (1 RAM, 2 reserved), u32
//     zero;
//   - the zero page (struct boot_params, 4 KiB, Documentation/arch/x86/
//     zero-page.rst) at [machine.BootInfoAddr], zeroed and then filled as
//     Firecracker fills it for an ELF vmlinux: boot_flag 0xAA55 at 0x1FE,
//     header "HdrS" at 0x202, type_of_loader 0xFF, cmd_line_ptr
//     [machine.CmdlineAddr] (never 0, even for an empty command line),
//     cmdline_size the bytes there with the NUL, ramdisk_image and
//     ramdisk_size (the initrd, 0 without one; high halves in
//     ext_ramdisk_image and ext_ramdisk_size), e820_entries at 0x1E8 and
//     the e820 table (20-byte entries) at 0x2D0; the boot protocol
//     version is left 0;
//   - the capsule boot-info block at [machine.CapsuleInfoAddr] (below),
//     which points at the command line and memory map.
//
// The boot-info block is nine little-endian u64s:
//
//	0x00 magic 0x31454c5553504143 (the bytes "CAPSULE1")
//	0x08 command-line address    0x10 command-line length (no NUL)
//	0x18 memory-map address      0x20 memory-map entry count
//	0x28 vCPU count              0x30 RAM size in bytes
//	0x38 initrd address          0x40 initrd size (both 0 without one)
//
// The boot vCPU starts in 64-bit long mode ([Mode64]) with:
//
//   - RIP = e_entry, RSP = [machine.StackTop] (the stack grows down into
//     free low memory), RSI = [machine.BootInfoAddr] (the zero page, as
//     Linux's 64-bit boot protocol and Firecracker give it), RDI =
//     [machine.CapsuleInfoAddr] (the capsule boot info); all other
//     general-purpose registers zero, RFLAGS = 0x2 (interrupts off, DF
//     clear);
//   - paging on, the first [machine.IdentityMapped] bytes (4 GiB, MMIO gap
//     included) identity-mapped with 2 MiB pages ([machine.SetupLongMode]);
//   - flat segments: CS = 0x08 (64-bit code), DS, ES, FS, GS, SS = 0x10;
//   - an empty IDT: any exception before the guest installs its own
//     triple-faults and stops the VM.
//
// The guest stops the VM with a byte written to I/O port 0xf4 (the exit
// status); a byte to port 0xf5 marks the end of boot.
//
// # Linux bzImage (64-bit boot protocol)
//
// [ParseBzImage] reads the setup header (Documentation/arch/x86/boot.rst):
// boot protocol 2.06 or later, LOADED_HIGH, and for booting 2.12 or later
// with XLF_KERNEL_64 in xloadflags. The loader
//
//   - copies the protected-mode code (the file from (setup_sects+1)*512,
//     syssize*16 bytes) to [machine.KernelMin] (1 MiB); the kernel then
//     needs init_size bytes from its run address (pref_address, aligned
//     up to kernel_alignment, for a relocatable kernel), which must also
//     lie in the RAM below the MMIO gap;
//   - writes the zero page (struct boot_params, 4 KiB) at
//     [machine.BootInfoAddr]: zeroed, the setup header copied from the
//     file to offset 0x1F1 (as long as the kernel says, 0x202 plus the
//     byte at 0x201), then type_of_loader 0xFF, CAN_USE_HEAP with
//     heap_end_ptr 0xFE00, cmd_line_ptr, ramdisk_image and ramdisk_size
//     (high halves in ext_ramdisk_image and ext_ramdisk_size), and the
//     E820 table (e820_entries at 0x1E8, 20-byte entries at 0x2D0);
//   - writes the command line at [machine.CmdlineAddr] (at most the
//     kernel's cmdline_size bytes) and the initrd.
//
// The boot vCPU starts in [Mode64], as for a unikernel (identity-mapped
// 4 GiB, flat code and data segments, interrupts off), with RIP = 1 MiB +
// 0x200 (startup_64), RSI = [machine.BootInfoAddr] (the zero page), RSP =
// [LinuxStackTop], all other general-purpose registers zero.
//
// # ELF vmlinux with PVH
//
// [FindPVHEntry] finds the Xen note XEN_ELFNOTE_PHYS32_ENTRY (name "Xen",
// type 18) in the PT_NOTE segments, or the SHT_NOTE sections, of an ELF32
// or ELF64 i386 or x86-64 executable. Its PT_LOAD segments are copied to
// their physical addresses p_paddr (their virtual addresses do not
// matter), at or above [machine.KernelMin] and inside the RAM below the
// MMIO gap, bss zeroed. The loader writes
//
//   - struct hvm_start_info version 1 at [machine.BootInfoAddr]: magic
//     0x336EC578, flags 0, nr_modules and modlist_paddr (the initrd, if
//     any), cmdline_paddr [machine.CmdlineAddr], rsdp_paddr 0 (the
//     kernel looks for ACPI tables itself), memmap_paddr
//     [machine.MemMapAddr] and memmap_entries;
//   - one struct hvm_modlist_entry (u64 paddr, size, cmdline_paddr 0,
//     reserved) for the initrd at [PVHModlistAddr] (BootInfoAddr+0x800);
//   - the memory map as struct hvm_memmap_table_entry (the 24-byte records
//     above) at [machine.MemMapAddr];
//   - the command line and the initrd.
//
// The boot vCPU starts in [Mode32] with RIP = the PVH entry, RBX =
// [machine.BootInfoAddr] (the start info), all other general-purpose
// registers zero (no stack: RSP = 0).
//
// # Multiboot
//
// [ParseMultiboot] finds the Multiboot header (magic 0x1BADB002, 4-byte
// aligned in the first 8192 bytes, valid checksum). Of the required
// feature flags (bits 0–15) only page-aligned modules (0), memory
// information (1) and a video mode (2, ignored: capsule has no display) are
// accepted. With the address fields (flag 16) the file bytes from the
// load_addr position to load_end_addr (or the end of the file) are copied
// to load_addr, zeroes up to bss_end_addr, and the entry point is
// entry_addr; otherwise the file must be ELF32 or ELF64, its PT_LOAD
// segments are copied to p_paddr and the entry is e_entry (moved from the
// virtual to the physical range when it lies in a segment's virtual
// addresses only). The loader writes
//
//   - the Multiboot information at [machine.BootInfoAddr]: flags MEM,
//     CMDLINE, MMAP, BOOT_LOADER_NAME, and MODS with an initrd; mem_lower
//     639 KiB, mem_upper the KiB from 1 MiB to the end of the RAM below
//     the MMIO gap, cmdline [machine.CmdlineAddr], mmap_length and
//     mmap_addr [machine.MemMapAddr], boot_loader_name "capsule" at
//     [MultibootLoaderName] (BootInfoAddr+0x800);
//   - with an initrd, one module (mod_start, mod_end, string pointing at
//     an empty string, reserved) at [MultibootModsAddr]
//     (BootInfoAddr+0x400);
//   - the memory map at [machine.MemMapAddr] as Multiboot entries: u32
//     size 20, u64 base_addr, u64 length, u32 type;
//   - the command line (given as is: capsule does not prepend the kernel's
//     name) and the module.
//
// The boot vCPU starts in [Mode32] with RIP = the entry point, RAX =
// 0x2BADB002, RBX = [machine.BootInfoAddr], all other general-purpose
// registers zero; the kernel sets up its own stack.
//
// # 32-bit entry (Mode32)
//
// PVH and Multiboot kernels start in 32-bit protected mode with paging
// off: CR0 = PE|ET (no PG), CR4 = 0, EFER = 0; CS a 32-bit execute/read
// code segment and DS, ES, FS, GS, SS 32-bit read/write data segments, all
// with base 0 and limit 4 GiB; TR a 32-bit TSS; RFLAGS = 0x2 (interrupts
// off); the kernel loads its own GDT and IDT before it relies on them.
//
// This is the boot vCPU's state only; how the others start is the VMM's
// business.
package bootloader
