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
// data. It returns an error, never panics, on any input. An image it
// accepts satisfies:
//
//   - 1 to MaxProgramHeaders segments, sorted by Addr, not overlapping
//     (in physical addresses), each with 0 < MemSize, FileSize <= MemSize,
//     Offset+FileSize <= len(data), and neither Addr+MemSize nor
//     VAddr+MemSize overflowing;
//   - Entry inside [VAddr, VAddr+FileSize) of a segment with PFX set.
//
// PT_LOAD segments with p_memsz 0 are ignored. Checks that depend on the
// guest (RAM size, machine.KernelMin) are left to the loaders. Errors wrap
// ErrNotELF, ErrUnsupported, ErrTruncated or ErrBadLayout.
func ParseELF(data []byte) (*ELFImage, error) {
	if len(data) < 4 || string(data[:4]) != "\x7fELF" {
		return nil, fmt.Errorf("%w (bad magic)", ErrNotELF)
	}
	if len(data) < 6 {
		return nil, fmt.Errorf("%w: header cut at %d bytes", ErrTruncated, len(data))
	}
	switch data[4] {
	case elfClass64:
	case 1:
		return nil, fmt.Errorf("%w: 32-bit (ELFCLASS32), want 64-bit x86-64", ErrUnsupported)
	default:
		return nil, fmt.Errorf("%w: unknown class %d, want ELFCLASS64", ErrUnsupported, data[4])
	}
	switch data[5] {
	case elfDataLSB:
	case 2:
		return nil, fmt.Errorf("%w: big-endian, want little-endian", ErrUnsupported)
	default:
		return nil, fmt.Errorf("%w: unknown data encoding %d, want little-endian", ErrUnsupported, data[5])
	}
	if len(data) < elfHeaderSize {
		return nil, fmt.Errorf("%w: header cut at %d of %d bytes", ErrTruncated, len(data), elfHeaderSize)
	}
	le := binary.LittleEndian
	if data[6] != elfVersion {
		return nil, fmt.Errorf("%w: ELF version %d, want 1", ErrUnsupported, data[6])
	}
	if m := le.Uint16(data[18:]); m != elfMachineX8 {
		return nil, fmt.Errorf("%w: machine %s, want x86-64", ErrUnsupported, machineName(m))
	}
	switch t := le.Uint16(data[16:]); t {
	case elfTypeExec:
	case elfTypeDyn:
		return nil, fmt.Errorf("%w: ET_DYN (shared object or position-independent executable), want ET_EXEC", ErrUnsupported)
	default:
		return nil, fmt.Errorf("%w: type %d, want ET_EXEC", ErrUnsupported, t)
	}
	entry := le.Uint64(data[24:])
	phoff := le.Uint64(data[32:])
	phentsize := uint64(le.Uint16(data[54:]))
	phnum := uint64(le.Uint16(data[56:]))
	if phnum == 0 {
		return nil, fmt.Errorf("%w: no program headers (no PT_LOAD segment)", ErrUnsupported)
	}
	if phnum > MaxProgramHeaders {
		return nil, fmt.Errorf("%w: %d program headers, at most %d", ErrUnsupported, phnum, MaxProgramHeaders)
	}
	if phentsize < elfPhdrSize {
		return nil, fmt.Errorf("%w: program header size %d, want %d", ErrUnsupported, phentsize, elfPhdrSize)
	}
	// phnum <= 64 and phentsize < 64 Ki, so the product cannot overflow.
	phsize := phnum * phentsize
	if phend, ok := add(phoff, phsize); !ok || phend > uint64(len(data)) {
		return nil, fmt.Errorf("%w: program headers at %#x+%#x past end of file (%d bytes)", ErrTruncated, phoff, phsize, len(data))
	}

	img := &ELFImage{Entry: entry}
	for i := range phnum {
		ph := data[phoff+i*phentsize:][:elfPhdrSize]
		typ := le.Uint32(ph[0:])
		if typ == ptInterp {
			return nil, fmt.Errorf("%w: dynamically linked (has PT_INTERP), want a static executable", ErrUnsupported)
		}
		if typ != ptLoad {
			continue
		}
		s := Segment{
			Flags:    le.Uint32(ph[4:]),
			Offset:   le.Uint64(ph[8:]),
			VAddr:    le.Uint64(ph[16:]),
			Addr:     le.Uint64(ph[24:]),
			FileSize: le.Uint64(ph[32:]),
			MemSize:  le.Uint64(ph[40:]),
		}
		if s.FileSize > s.MemSize {
			return nil, fmt.Errorf("%w: segment %d: file size %#x above memory size %#x", ErrBadLayout, i, s.FileSize, s.MemSize)
		}
		if s.MemSize == 0 {
			continue
		}
		if _, ok := add(s.Addr, s.MemSize); !ok {
			return nil, fmt.Errorf("%w: segment %d: physical address %#x+%#x overflows", ErrBadLayout, i, s.Addr, s.MemSize)
		}
		if _, ok := add(s.VAddr, s.MemSize); !ok {
			return nil, fmt.Errorf("%w: segment %d: virtual address %#x+%#x overflows", ErrBadLayout, i, s.VAddr, s.MemSize)
		}
		end, ok := add(s.Offset, s.FileSize)
		if !ok || end > uint64(len(data)) {
			return nil, fmt.Errorf("%w: segment %d: data at %#x+%#x past end of file (%d bytes)", ErrTruncated, i, s.Offset, s.FileSize, len(data))
		}
		s.Data = data[s.Offset:end:end]
		img.Segments = append(img.Segments, s)
	}
	if len(img.Segments) == 0 {
		return nil, fmt.Errorf("%w: no PT_LOAD segment", ErrUnsupported)
	}

	slices.SortStableFunc(img.Segments, func(a, b Segment) int { return cmp.Compare(a.Addr, b.Addr) })
	for i := 1; i < len(img.Segments); i++ {
		p, s := img.Segments[i-1], img.Segments[i]
		if s.Addr < p.End() {
			return nil, fmt.Errorf("%w: segments [%#x, %#x) and [%#x, %#x) overlap", ErrBadLayout, p.Addr, p.End(), s.Addr, s.End())
		}
	}
	if img.entrySegment() < 0 {
		return nil, fmt.Errorf("%w: entry point %#x is not inside the file data of an executable segment", ErrBadLayout, entry)
	}
	return img, nil
}

// entrySegment is the index of the executable segment whose file data
// holds the entry point, or -1.
func (img *ELFImage) entrySegment() int {
	for i, s := range img.Segments {
		if s.Flags&PFX != 0 && img.Entry >= s.VAddr && img.Entry-s.VAddr < s.FileSize {
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
