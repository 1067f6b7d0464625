package bootloader

import (
	"encoding/binary"
	"fmt"

	"github.com/capsule-vm/capsule/machine"
)

// The PVH boot ABI (Xen's xen/include/public/arch-x86/hvm/start_info.h and
// xen/include/public/elfnote.h), as Linux implements it for vmlinux.
const (
	// xenNoteName is the name of Xen ELF notes, NUL included.
	xenNoteName = "Xen\x00"
	// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY: the note whose
	// descriptor is the 32-bit physical address of the PVH entry point.
	xenElfnotePhys32Entry = 18

	// PVHStartMagic is hvm_start_info.magic: "xEn3" with the top bit of
	// the 'E' set.
	PVHStartMagic = 0x336ec578
	// pvhStartVersion: version 1 of hvm_start_info has the memory map.
	pvhStartVersion = 1

	// struct hvm_start_info, little-endian, 0x38 bytes in version 1.
	pvhMagic         = 0x00 // u32 magic
	pvhVersion       = 0x04 // u32 version
	pvhFlags         = 0x08 // u32 flags (SIF_*), 0
	pvhNrModules     = 0x0c // u32 number of modules
	pvhModlistPaddr  = 0x10 // u64 physical address of hvm_modlist_entry[]
	pvhCmdlinePaddr  = 0x18 // u64 physical address of the command line
	pvhRsdpPaddr     = 0x20 // u64 physical address of the ACPI RSDP, 0: none given
	pvhMemmapPaddr   = 0x28 // u64 physical address of hvm_memmap_table_entry[] (version 1)
	pvhMemmapEntries = 0x30 // u32 entries in the memory map (version 1)
	pvhStartInfoSize = 0x38 // u32 reserved at 0x34 ends the structure

	// struct hvm_modlist_entry: u64 paddr, u64 size, u64 cmdline_paddr,
	// u64 reserved.
	pvhModPaddr     = 0x00
	pvhModSize      = 0x08
	pvhModCmdline   = 0x10
	pvhModEntrySize = 0x20

	// struct hvm_memmap_table_entry: u64 addr, u64 size, u32 type, u32
	// reserved; the same record as the capsule memory map.
	pvhMemmapEntrySize = MemMapEntrySize

	// PVHModlistAddr is where the loader puts the module list (the
	// initrd's hvm_modlist_entry): in the page of the start info.
	PVHModlistAddr = machine.BootInfoAddr + 0x800
)

// FindPVHEntry looks for the PVH entry point of an ELF file: the Xen note
// XEN_ELFNOTE_PHYS32_ENTRY (name "Xen", type 18) in its PT_NOTE segments,
// or in its SHT_NOTE sections when it has no PT_NOTE segment. The note's
// descriptor is the 32-bit physical entry address, stored in 4 or 8 bytes
// (the high half must then be zero). It returns false and no error for a
// valid ELF file without the note; an error (wrapping ErrNotELF,
// ErrUnsupported, ErrTruncated or ErrBadLayout) when data is not a
// little-endian i386 or x86-64 ET_EXEC file, or its notes are malformed.
// It never panics.
func FindPVHEntry(data []byte) (uint32, bool, error) {
	h, err := readELFHeader(data)
	if err != nil {
		return 0, false, err
	}
	blocks, err := h.noteBlocks(data)
	if err != nil {
		return 0, false, err
	}
	for _, b := range blocks {
		var desc []byte
		found := false
		err := walkNotes(b, func(name []byte, typ uint32, d []byte) bool {
			if typ == xenElfnotePhys32Entry && string(name) == xenNoteName {
				desc, found = d, true
			}
			return found
		})
		if err != nil {
			return 0, false, err
		}
		if !found {
			continue
		}
		le := binary.LittleEndian
		switch len(desc) {
		case 4:
			return le.Uint32(desc), true, nil
		case 8:
			v := le.Uint64(desc)
			if v>>32 != 0 {
				return 0, false, fmt.Errorf("%w: %s: PVH entry %#x is above 4 GiB", ErrBadLayout, b.what, v)
			}
			return uint32(v), true, nil
		}
		return 0, false, fmt.Errorf("%w: %s: PVH entry note has %d bytes of descriptor, want 4 or 8", ErrBadLayout, b.what, len(desc))
	}
	return 0, false, nil
}

// preparePVH validates a vmlinux with a PVH entry point and lays out its
// segments, the initrd, the command line, the memory map and the
// hvm_start_info.
func preparePVH(mem *machine.GuestMemory, data []byte, entry uint32, cfg Config, readInitrd func() (*initrdFile, error)) (*plan, error) {
	h, err := readELFHeader(data)
	if err != nil {
		return nil, kernelErr(cfg, err)
	}
	segs, err := h.loadSegments(data)
	if err != nil {
		return nil, kernelErr(cfg, err)
	}
	inCode := false
	for _, s := range segs {
		if uint64(entry) >= s.Addr && uint64(entry)-s.Addr < s.FileSize {
			inCode = true
		}
	}
	if !inCode {
		return nil, kernelErr(cfg, fmt.Errorf("%w: PVH entry %#x is not inside the file data of a loaded segment", ErrBadLayout, entry))
	}
	if err := checkPhysSegments(mem, segs); err != nil {
		return nil, kernelErr(cfg, err)
	}
	if err := checkCmdline(cfg.Cmdline); err != nil {
		return nil, kernelErr(cfg, err)
	}
	p := &plan{
		entry: Entry{Mode: Mode32, RIP: uint64(entry), RBX: machine.BootInfoAddr},
		info:  Info{Format: FormatPVH, Linux: true, KernelAddr: segs[0].Addr, KernelEnd: segs[len(segs)-1].End()},
	}
	for _, s := range segs {
		p.add(s.Addr, s.Data, s.MemSize-s.FileSize)
	}
	if err := p.placeInitrd(mem, cfg, readInitrd, machine.MMIOGapStart); err != nil {
		return nil, err
	}
	p.addCmdline(cfg.Cmdline)
	nmm, err := p.addMemMap(mem)
	if err != nil {
		return nil, kernelErr(cfg, err)
	}

	page := make([]byte, pageSize) // hvm_start_info, then the module list at +0x800
	le := binary.LittleEndian
	le.PutUint32(page[pvhMagic:], PVHStartMagic)
	le.PutUint32(page[pvhVersion:], pvhStartVersion)
	le.PutUint32(page[pvhFlags:], 0)
	le.PutUint64(page[pvhCmdlinePaddr:], machine.CmdlineAddr)
	le.PutUint64(page[pvhRsdpPaddr:], 0)
	le.PutUint64(page[pvhMemmapPaddr:], machine.MemMapAddr)
	le.PutUint32(page[pvhMemmapEntries:], uint32(nmm))
	if p.info.InitrdSize != 0 {
		le.PutUint32(page[pvhNrModules:], 1)
		le.PutUint64(page[pvhModlistPaddr:], PVHModlistAddr)
		mod := page[PVHModlistAddr-machine.BootInfoAddr:]
		le.PutUint64(mod[pvhModPaddr:], p.info.InitrdAddr)
		le.PutUint64(mod[pvhModSize:], p.info.InitrdSize)
		le.PutUint64(mod[pvhModCmdline:], 0)
	}
	p.add(machine.BootInfoAddr, page, 0)
	return p, nil
}
