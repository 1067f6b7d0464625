package bootloader

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
)

// ELF constants used by the parser (System V gABI, x86-64 psABI).
const (
	elfHeaderSize = 64 // ELF64 file header
	elfPhdrSize   = 56 // ELF64 program header

	elfClass64   = 2  // EI_CLASS: ELFCLASS64
	elfDataLSB   = 1  // EI_DATA: ELFDATA2LSB
	elfVersion   = 1  // EI_VERSION: EV_CURRENT
	elfTypeExec  = 2  // e_type: ET_EXEC
	elfTypeDyn   = 3  // e_type: ET_DYN
	elfMachineX8 = 62 // e_machine: EM_X86_64

	ptLoad   = 1 // p_type: PT_LOAD
	ptInterp = 3 // p_type: PT_INTERP

	// PF_X, PF_W, PF_R: segment permission flags.
	PFX = 1
	PFW = 2
	PFR = 4

	// MaxProgramHeaders is the most program headers ParseELF accepts.
	MaxProgramHeaders = 64
)

// Segment is one PT_LOAD segment of an ELF image.
type Segment struct {
	Addr     uint64 // physical load address, p_paddr
	VAddr    uint64 // virtual address, p_vaddr
	Offset   uint64 // file offset of the data, p_offset
	FileSize uint64 // bytes taken from the file, p_filesz (== len(Data))
	MemSize  uint64 // bytes in memory, p_memsz; the rest past FileSize is zero
	Flags    uint32 // p_flags: PFX, PFW, PFR
	Data     []byte // the file bytes; aliases the slice given to ParseELF
}

// End is the first physical address past the segment.
func (s Segment) End() uint64 { return s.Addr + s.MemSize }

// ELFImage is a parsed, structurally valid ELF64 x86-64 executable.
type ELFImage struct {
	Entry    uint64    // e_entry
	Segments []Segment // the non-empty PT_LOAD segments, sorted by Addr
}

// ParseELF parses an ELF64 little-endian x86-64 ET_EXEC image held in
// data, with the same reader the PVH and Multiboot loaders use. It returns
// an error, never panics, on any input. An image it accepts satisfies:
//
//   - 1 to MaxProgramHeaders segments, sorted by Addr, not overlapping
//     (in physical addresses), each with 0 < MemSize, FileSize <= MemSize,
//     Offset+FileSize <= len(data), and neither Addr+MemSize nor
//     VAddr+MemSize overflowing;
//   - Entry inside [Addr, Addr+FileSize) of a segment with PFX set: the
//     entry point is a physical address, as in a Linux vmlinux (linked
//     at 0xffffffff81000000, loaded and entered at 16 MiB); for a segment
//     with VAddr == Addr the virtual range is the same.
//
// PT_LOAD segments with p_memsz 0 are ignored. Checks that depend on the
// guest (RAM size, machine.KernelMin) are left to the loaders. Errors wrap
// ErrNotELF, ErrUnsupported, ErrTruncated or ErrBadLayout.
func ParseELF(data []byte) (*ELFImage, error) {
	h, err := readELFHeader(data)
	if err != nil {
		return nil, err
	}
	if h.class != elfClass64 {
		return nil, fmt.Errorf("%w: 32-bit (ELFCLASS32), want 64-bit x86-64", ErrUnsupported)
	}
	if h.machine != elfMachineX8 {
		return nil, fmt.Errorf("%w: machine %s, want x86-64", ErrUnsupported, machineName(h.machine))
	}
	segs, err := h.loadSegments(data)
	if err != nil {
		return nil, err
	}
	for _, s := range segs {
		if _, ok := add(s.VAddr, s.MemSize); !ok {
			return nil, fmt.Errorf("%w: segment at %#x: virtual address %#x+%#x overflows", ErrBadLayout, s.Addr, s.VAddr, s.MemSize)
		}
	}
	img := &ELFImage{Entry: h.entry, Segments: segs}
	if img.entrySegment() < 0 {
		return nil, fmt.Errorf("%w: entry point %#x is not inside the file data of an executable segment's physical addresses", ErrBadLayout, h.entry)
	}
	return img, nil
}

// entrySegment is the index of the executable segment whose file data
// holds the entry point, a physical address, or -1.
func (img *ELFImage) entrySegment() int {
	for i, s := range img.Segments {
		if s.Flags&PFX != 0 && img.Entry >= s.Addr && img.Entry-s.Addr < s.FileSize {
			return i
		}
	}
	return -1
}

// add returns a+b and whether it did not overflow.
func add(a, b uint64) (uint64, bool) {
	s := a + b
	return s, s >= a
}

func machineName(m uint16) string {
	switch m {
	case 3:
		return "3 (i386)"
	case 40:
		return "40 (ARM)"
	case 183:
		return "183 (AArch64)"
	case 243:
		return "243 (RISC-V)"
	}
	return fmt.Sprint(m)
}

// The one ELF reader of the package: readELFHeader and loadSegments serve
// every ELF kernel (ParseELF, PVH, Multiboot). They accept ELF32 and ELF64,
// i386 and x86-64, and load segments at their physical address p_paddr
// whatever their virtual address; ParseELF narrows them to ELF64 x86-64.
// Offsets are from the System V gABI.
const (
	elfClass32    = 1  // EI_CLASS: ELFCLASS32
	elfMachine386 = 3  // e_machine: EM_386
	elf32HdrSize  = 52 // ELF32 file header
	elf32PhdrSize = 32 // ELF32 program header
	elf32ShdrSize = 40 // ELF32 section header
	elf64ShdrSize = 64 // ELF64 section header

	ptNote  = 4 // p_type: PT_NOTE
	shtNote = 7 // sh_type: SHT_NOTE

	// ELF32 file header field offsets (e_ident, e_type and e_machine are
	// at the same offsets, 0, 16 and 18, in both classes).
	elf32Entry     = 24 // e_entry, u32
	elf32Phoff     = 28 // e_phoff, u32
	elf32Shoff     = 32 // e_shoff, u32
	elf32Phentsize = 42 // e_phentsize, u16
	elf32Phnum     = 44 // e_phnum, u16
	elf32Shentsize = 46 // e_shentsize, u16
	elf32Shnum     = 48 // e_shnum, u16

	// ELF64 file header field offsets.
	elf64Entry     = 24 // e_entry, u64
	elf64Phoff     = 32 // e_phoff, u64
	elf64Shoff     = 40 // e_shoff, u64
	elf64Phentsize = 54 // e_phentsize, u16
	elf64Phnum     = 56 // e_phnum, u16
	elf64Shentsize = 58 // e_shentsize, u16
	elf64Shnum     = 60 // e_shnum, u16

	// ELF32 program header: p_type, p_offset, p_vaddr, p_paddr,
	// p_filesz, p_memsz, p_flags, p_align, all u32.
	ph32Type   = 0
	ph32Offset = 4
	ph32VAddr  = 8
	ph32PAddr  = 12
	ph32Filesz = 16
	ph32Memsz  = 20
	ph32Flags  = 24
	ph32Align  = 28

	// ELF64 program header: p_type u32, p_flags u32, then p_offset,
	// p_vaddr, p_paddr, p_filesz, p_memsz, p_align as u64.
	ph64Type   = 0
	ph64Flags  = 4
	ph64Offset = 8
	ph64VAddr  = 16
	ph64PAddr  = 24
	ph64Filesz = 32
	ph64Memsz  = 40
	ph64Align  = 48

	// Section header fields: sh_type u32 at 4 in both classes; ELF32
	// sh_offset, sh_size, sh_addralign are u32 at 16, 20, 32; ELF64 they
	// are u64 at 24, 32, 48.
	shType        = 4
	sh32Offset    = 16
	sh32Size      = 20
	sh32Addralign = 32
	sh64Offset    = 24
	sh64Size      = 32
	sh64Addralign = 48

	// An ELF note: u32 namesz, u32 descsz, u32 type, then the name
	// (namesz bytes, NUL included) and the descriptor (descsz bytes), each
	// padded to the note alignment (4, or 8 in an 8-aligned section).
	noteHeaderSize = 12
)

// elfHeader is the class-independent content of an ELF file header.
type elfHeader struct {
	class     byte // elfClass32 or elfClass64
	machine   uint16
	entry     uint64
	phoff     uint64
	phentsize uint64
	phnum     uint64
	shoff     uint64
	shentsize uint64
	shnum     uint64
}

// progHeader is one program header, widened to 64 bits.
type progHeader struct {
	typ, flags                                 uint32
	offset, vaddr, paddr, filesz, memsz, align uint64
}

// isELF reports whether data starts with the ELF magic.
func isELF(data []byte) bool { return len(data) >= 4 && string(data[:4]) == "\x7fELF" }

// readELFHeader checks the file header of a little-endian i386 or x86-64
// ET_EXEC file of either class and that its program headers lie inside
// the file. The section header table is not checked here.
func readELFHeader(data []byte) (*elfHeader, error) {
	if !isELF(data) {
		return nil, fmt.Errorf("%w (bad magic)", ErrNotELF)
	}
	if len(data) < 6 {
		return nil, fmt.Errorf("%w: header cut at %d bytes", ErrTruncated, len(data))
	}
	h := &elfHeader{class: data[4]}
	size := uint64(elfHeaderSize)
	switch h.class {
	case elfClass32:
		size = elf32HdrSize
	case elfClass64:
	default:
		return nil, fmt.Errorf("%w: unknown class %d, want ELFCLASS64 or ELFCLASS32", ErrUnsupported, h.class)
	}
	switch data[5] {
	case elfDataLSB:
	case 2:
		return nil, fmt.Errorf("%w: big-endian, want little-endian", ErrUnsupported)
	default:
		return nil, fmt.Errorf("%w: unknown data encoding %d, want little-endian", ErrUnsupported, data[5])
	}
	if uint64(len(data)) < size {
		return nil, fmt.Errorf("%w: header cut at %d of %d bytes", ErrTruncated, len(data), size)
	}
	if data[6] != elfVersion {
		return nil, fmt.Errorf("%w: ELF version %d, want 1", ErrUnsupported, data[6])
	}
	le := binary.LittleEndian
	h.machine = le.Uint16(data[18:])
	if h.machine != elfMachineX8 && h.machine != elfMachine386 {
		return nil, fmt.Errorf("%w: machine %s, want x86-64 or i386", ErrUnsupported, machineName(h.machine))
	}
	switch t := le.Uint16(data[16:]); t {
	case elfTypeExec:
	case elfTypeDyn:
		return nil, fmt.Errorf("%w: ET_DYN (shared object or position-independent executable), want ET_EXEC", ErrUnsupported)
	default:
		return nil, fmt.Errorf("%w: type %d, want ET_EXEC", ErrUnsupported, t)
	}
	phdrSize := uint64(elfPhdrSize)
	if h.class == elfClass32 {
		h.entry = uint64(le.Uint32(data[elf32Entry:]))
		h.phoff = uint64(le.Uint32(data[elf32Phoff:]))
		h.shoff = uint64(le.Uint32(data[elf32Shoff:]))
		h.phentsize = uint64(le.Uint16(data[elf32Phentsize:]))
		h.phnum = uint64(le.Uint16(data[elf32Phnum:]))
		h.shentsize = uint64(le.Uint16(data[elf32Shentsize:]))
		h.shnum = uint64(le.Uint16(data[elf32Shnum:]))
		phdrSize = elf32PhdrSize
	} else {
		h.entry = le.Uint64(data[elf64Entry:])
		h.phoff = le.Uint64(data[elf64Phoff:])
		h.shoff = le.Uint64(data[elf64Shoff:])
		h.phentsize = uint64(le.Uint16(data[elf64Phentsize:]))
		h.phnum = uint64(le.Uint16(data[elf64Phnum:]))
		h.shentsize = uint64(le.Uint16(data[elf64Shentsize:]))
		h.shnum = uint64(le.Uint16(data[elf64Shnum:]))
	}
	if h.phnum > MaxProgramHeaders {
		return nil, fmt.Errorf("%w: %d program headers, at most %d", ErrUnsupported, h.phnum, MaxProgramHeaders)
	}
	if h.phnum > 0 {
		if h.phentsize < phdrSize {
			return nil, fmt.Errorf("%w: program header size %d, want %d", ErrUnsupported, h.phentsize, phdrSize)
		}
		// phnum <= 64 and phentsize < 64 Ki: the product cannot overflow.
		phsize := h.phnum * h.phentsize
		if end, ok := add(h.phoff, phsize); !ok || end > uint64(len(data)) {
			return nil, fmt.Errorf("%w: program headers at %#x+%#x past end of file (%d bytes)", ErrTruncated, h.phoff, phsize, len(data))
		}
	}
	return h, nil
}

// programHeaders decodes the program headers readELFHeader checked.
func (h *elfHeader) programHeaders(data []byte) []progHeader {
	le := binary.LittleEndian
	phs := make([]progHeader, 0, h.phnum)
	for i := range h.phnum {
		b := data[h.phoff+i*h.phentsize:]
		var p progHeader
		if h.class == elfClass32 {
			p = progHeader{
				typ:    le.Uint32(b[ph32Type:]),
				offset: uint64(le.Uint32(b[ph32Offset:])),
				vaddr:  uint64(le.Uint32(b[ph32VAddr:])),
				paddr:  uint64(le.Uint32(b[ph32PAddr:])),
				filesz: uint64(le.Uint32(b[ph32Filesz:])),
				memsz:  uint64(le.Uint32(b[ph32Memsz:])),
				flags:  le.Uint32(b[ph32Flags:]),
				align:  uint64(le.Uint32(b[ph32Align:])),
			}
		} else {
			p = progHeader{
				typ:    le.Uint32(b[ph64Type:]),
				flags:  le.Uint32(b[ph64Flags:]),
				offset: le.Uint64(b[ph64Offset:]),
				vaddr:  le.Uint64(b[ph64VAddr:]),
				paddr:  le.Uint64(b[ph64PAddr:]),
				filesz: le.Uint64(b[ph64Filesz:]),
				memsz:  le.Uint64(b[ph64Memsz:]),
				align:  le.Uint64(b[ph64Align:]),
			}
		}
		phs = append(phs, p)
	}
	return phs
}

// noteBlock is the bytes of one PT_NOTE segment or SHT_NOTE section and
// the alignment of the notes in it.
type noteBlock struct {
	what  string // "PT_NOTE segment 2", for errors
	data  []byte
	align uint64
}

// noteBlocks returns the PT_NOTE segments of the file or, when it has
// none, its SHT_NOTE sections. A note segment or section whose bytes are
// not inside the file is an error; a section header table that is not
// inside the file is ignored (loaders do not need section headers).
func (h *elfHeader) noteBlocks(data []byte) ([]noteBlock, error) {
	var blocks []noteBlock
	for i, p := range h.programHeaders(data) {
		if p.typ != ptNote {
			continue
		}
		end, ok := add(p.offset, p.filesz)
		if !ok || end > uint64(len(data)) {
			return nil, fmt.Errorf("%w: PT_NOTE segment %d at %#x+%#x past end of file (%d bytes)", ErrTruncated, i, p.offset, p.filesz, len(data))
		}
		blocks = append(blocks, noteBlock{fmt.Sprintf("PT_NOTE segment %d", i), data[p.offset:end], noteAlign(p.align)})
	}
	if len(blocks) > 0 {
		return blocks, nil
	}
	shdrSize, le := uint64(elf64ShdrSize), binary.LittleEndian
	if h.class == elfClass32 {
		shdrSize = elf32ShdrSize
	}
	if h.shoff == 0 || h.shnum == 0 || h.shentsize < shdrSize {
		return nil, nil
	}
	// shnum and shentsize are below 64 Ki: the product cannot overflow.
	if end, ok := add(h.shoff, h.shnum*h.shentsize); !ok || end > uint64(len(data)) {
		return nil, nil
	}
	for i := range h.shnum {
		sh := data[h.shoff+i*h.shentsize:][:shdrSize]
		if le.Uint32(sh[shType:]) != shtNote {
			continue
		}
		var off, size, align uint64
		if h.class == elfClass32 {
			off, size, align = uint64(le.Uint32(sh[sh32Offset:])), uint64(le.Uint32(sh[sh32Size:])), uint64(le.Uint32(sh[sh32Addralign:]))
		} else {
			off, size, align = le.Uint64(sh[sh64Offset:]), le.Uint64(sh[sh64Size:]), le.Uint64(sh[sh64Addralign:])
		}
		end, ok := add(off, size)
		if !ok || end > uint64(len(data)) {
			return nil, fmt.Errorf("%w: SHT_NOTE section %d at %#x+%#x past end of file (%d bytes)", ErrTruncated, i, off, size, len(data))
		}
		blocks = append(blocks, noteBlock{fmt.Sprintf("SHT_NOTE section %d", i), data[off:end], noteAlign(align)})
	}
	return blocks, nil
}

// noteAlign is the note alignment of a block aligned to a: 8 for an
// 8-aligned block (as GNU property notes are), else 4.
func noteAlign(a uint64) uint64 {
	if a == 8 {
		return 8
	}
	return 4
}

// walkNotes calls fn for each note of b until fn returns true. It checks
// every size against b; padding missing after the last note, and fewer
// than noteHeaderSize zero bytes at the end, are tolerated.
func walkNotes(b noteBlock, fn func(name []byte, typ uint32, desc []byte) bool) error {
	le, n := binary.LittleEndian, uint64(len(b.data))
	for off := uint64(0); off < n; {
		if n-off < noteHeaderSize {
			if slices.ContainsFunc(b.data[off:], func(c byte) bool { return c != 0 }) {
				return fmt.Errorf("%w: %s: note header at offset %#x cut after %d bytes", ErrTruncated, b.what, off, n-off)
			}
			return nil
		}
		h := b.data[off:]
		namesz, descsz, typ := uint64(le.Uint32(h[0:])), uint64(le.Uint32(h[4:])), le.Uint32(h[8:])
		// off < n <= MaxInt and the sizes are u32: no sum below overflows.
		nameEnd := off + noteHeaderSize + namesz
		if nameEnd > n {
			return fmt.Errorf("%w: %s: note at offset %#x: name of %d bytes runs past the end (%d bytes)", ErrBadLayout, b.what, off, namesz, n)
		}
		end, desc := nameEnd, []byte(nil)
		if descsz > 0 {
			descOff := alignUp(nameEnd, b.align)
			end = descOff + descsz
			if end > n {
				return fmt.Errorf("%w: %s: note at offset %#x: descriptor of %d bytes runs past the end (%d bytes)", ErrBadLayout, b.what, off, descsz, n)
			}
			desc = b.data[descOff:end:end]
		}
		if fn(b.data[off+noteHeaderSize:nameEnd:nameEnd], typ, desc) {
			return nil
		}
		off = min(alignUp(end, b.align), n)
	}
	return nil
}

// alignUp rounds v up to a multiple of a (a power of two); v must be far
// enough from the top of the range not to overflow (callers check).
func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// alignDown rounds v down to a multiple of a (a power of two).
func alignDown(v, a uint64) uint64 { return v &^ (a - 1) }

// loadSegments returns the non-empty PT_LOAD segments, with Addr the
// physical address p_paddr, sorted by Addr: file data inside the file,
// p_filesz <= p_memsz, no address overflow, no overlap in physical
// addresses. A PT_INTERP header is an error.
func (h *elfHeader) loadSegments(data []byte) ([]Segment, error) {
	var segs []Segment
	for i, p := range h.programHeaders(data) {
		if p.typ == ptInterp {
			return nil, fmt.Errorf("%w: dynamically linked (has PT_INTERP), want a static kernel", ErrUnsupported)
		}
		if p.typ != ptLoad {
			continue
		}
		if p.filesz > p.memsz {
			return nil, fmt.Errorf("%w: segment %d: file size %#x above memory size %#x", ErrBadLayout, i, p.filesz, p.memsz)
		}
		if p.memsz == 0 {
			continue
		}
		if _, ok := add(p.paddr, p.memsz); !ok {
			return nil, fmt.Errorf("%w: segment %d: physical address %#x+%#x overflows", ErrBadLayout, i, p.paddr, p.memsz)
		}
		end, ok := add(p.offset, p.filesz)
		if !ok || end > uint64(len(data)) {
			return nil, fmt.Errorf("%w: segment %d: data at %#x+%#x past end of file (%d bytes)", ErrTruncated, i, p.offset, p.filesz, len(data))
		}
		segs = append(segs, Segment{
			Addr: p.paddr, VAddr: p.vaddr, Offset: p.offset, FileSize: p.filesz, MemSize: p.memsz,
			Flags: p.flags, Data: data[p.offset:end:end],
		})
	}
	if len(segs) == 0 {
		return nil, fmt.Errorf("%w: no PT_LOAD segment", ErrUnsupported)
	}
	slices.SortStableFunc(segs, func(a, b Segment) int { return cmp.Compare(a.Addr, b.Addr) })
	for i := 1; i < len(segs); i++ {
		p, s := segs[i-1], segs[i]
		if s.Addr < p.End() {
			return nil, fmt.Errorf("%w: segments [%#x, %#x) and [%#x, %#x) overlap", ErrBadLayout, p.Addr, p.End(), s.Addr, s.End())
		}
	}
	return segs, nil
}

// physEntry translates an ELF entry point to the physical address to jump
// to with paging off: e_entry itself when it lies in the file data of a
// segment's physical range, else e_entry moved by p_paddr-p_vaddr when it
// lies in a segment's virtual range (a kernel linked high). ok is false
// when the entry is in neither.
func physEntry(segs []Segment, entry uint64) (uint64, bool) {
	for _, s := range segs {
		if entry >= s.Addr && entry-s.Addr < s.FileSize {
			return entry, true
		}
	}
	for _, s := range segs {
		if entry >= s.VAddr && entry-s.VAddr < s.FileSize {
			return s.Addr + (entry - s.VAddr), true
		}
	}
	return 0, false
}
