package bootloader

import (
	"encoding/binary"
	"fmt"

	"github.com/capsule-vm/capsule/machine"
)

// Multiboot version 1 (the Multiboot Specification 0.6.96).
const (
	// MultibootHeaderMagic starts the Multiboot header in the image.
	MultibootHeaderMagic = 0x1badb002
	// MultibootBootloaderMagic is in EAX at entry.
	MultibootBootloaderMagic = 0x2badb002
	// mbSearch: the header lies, 4-byte aligned, in the first 8192 bytes.
	mbSearch = 8192
	mbAlign  = 4

	// Header fields, u32 each, from the magic.
	mbMagic       = 0  // magic
	mbFlags       = 4  // flags
	mbChecksum    = 8  // checksum: magic+flags+checksum = 0 mod 2^32
	mbHeaderAddr  = 12 // header_addr (flag 16): address of the magic
	mbLoadAddr    = 16 // load_addr (flag 16): address of the first loaded byte
	mbLoadEndAddr = 20 // load_end_addr (flag 16): end of the loaded bytes, 0: end of file
	mbBSSEndAddr  = 24 // bss_end_addr (flag 16): end of the bss, 0: none
	mbEntryAddr   = 28 // entry_addr (flag 16)
	mbModeType    = 32 // mode_type (flag 2)
	mbWidth       = 36 // width (flag 2)
	mbHeight      = 40 // height (flag 2)
	mbDepth       = 44 // depth (flag 2)
	mbBaseSize    = 12 // magic, flags, checksum
	mbAddrSize    = 32 // ... and the address fields
	mbVideoSize   = 48 // ... and the video fields

	// Header flags. Bits 0-15 are requirements a loader must meet or
	// refuse the image; bits 16-31 are optional.
	MultibootPageAlign  = 1 << 0  // modules page-aligned: capsule always does
	MultibootMemInfo    = 1 << 1  // mem_* and mmap_* wanted: capsule always gives them
	MultibootVideoMode  = 1 << 2  // a video mode wanted: capsule has no display, ignored
	MultibootAoutKludge = 1 << 16 // the address fields are valid
	mbKnownRequired     = MultibootPageAlign | MultibootMemInfo | MultibootVideoMode
	mbRequiredMask      = 0xffff

	// Multiboot information structure, u32 fields, at machine.BootInfoAddr.
	mbiFlags          = 0  // flags: which fields below are valid
	mbiMemLower       = 4  // mem_lower: KiB of RAM from 0 (flag 0)
	mbiMemUpper       = 8  // mem_upper: KiB of RAM from 1 MiB to the first hole (flag 0)
	mbiCmdline        = 16 // cmdline: address of the command line (flag 2)
	mbiModsCount      = 20 // mods_count (flag 3)
	mbiModsAddr       = 24 // mods_addr (flag 3)
	mbiMmapLength     = 44 // mmap_length: bytes of memory map (flag 6)
	mbiMmapAddr       = 48 // mmap_addr (flag 6)
	mbiBootLoaderName = 64 // boot_loader_name: address of a string (flag 9)

	mbiFlagMem        = 1 << 0
	mbiFlagCmdline    = 1 << 2
	mbiFlagMods       = 1 << 3
	mbiFlagMmap       = 1 << 6
	mbiFlagLoaderName = 1 << 9

	// A module: u32 mod_start, mod_end, string, reserved.
	mbModStart     = 0
	mbModEnd       = 4
	mbModString    = 8
	mbModEntrySize = 16

	// A memory map entry: u32 size (of the rest, 20), u64 base_addr, u64
	// length, u32 type.
	mbMmapSize      = 0
	mbMmapBase      = 4
	mbMmapLength    = 12
	mbMmapType      = 20
	mbMmapEntrySize = 24
	mbMmapRestSize  = mbMmapEntrySize - 4

	// Where the pieces go, all in the 4 KiB page at machine.BootInfoAddr.
	MultibootModsAddr   = machine.BootInfoAddr + 0x400 // the module list
	mbModStringAddr     = machine.BootInfoAddr + 0x440 // the modules' (empty) string
	MultibootLoaderName = machine.BootInfoAddr + 0x800 // "capsule", NUL-terminated
	mbLoaderName        = "capsule"
)

// MultibootHeader is a parsed Multiboot header.
type MultibootHeader struct {
	Offset uint32 // file offset of the header (its magic)
	Flags  uint32
	// The address fields, valid when Flags has MultibootAoutKludge.
	HeaderAddr, LoadAddr, LoadEndAddr, BSSEndAddr, EntryAddr uint32
	// The video fields, valid when Flags has MultibootVideoMode and the
	// header is long enough; capsule ignores them.
	ModeType, Width, Height, Depth uint32
	// LoadOffset and LoadSize are the file bytes loaded at LoadAddr, and
	// MemSize the bytes from LoadAddr to the end of the bss; set when
	// the address fields are.
	LoadOffset, LoadSize, MemSize uint64
}

// HasAddress reports whether the header's address fields are valid (the
// image is loaded by them, not as ELF).
func (h *MultibootHeader) HasAddress() bool { return h.Flags&MultibootAoutKludge != 0 }

// ParseMultiboot finds and checks the Multiboot header of an image: magic
// 0x1BADB002 at a 4-byte aligned offset in the first 8192 bytes, a
// checksum that makes magic+flags+checksum zero, no required feature
// (flag bits 0-15) capsule does not provide. With the address fields
// (flag 16) it also checks them against the file: load_addr <=
// header_addr, the loaded bytes inside the file, load_end_addr and
// bss_end_addr in order, load_addr at or above machine.KernelMin, the
// entry point inside the loaded bytes. Without them the image must be an
// ELF file, which the loader checks. A file with no magic gives an error
// wrapping ErrNotKernel; others wrap ErrBadHeader, ErrUnsupported,
// ErrTruncated or ErrBadLayout. It never panics.
func ParseMultiboot(data []byte) (*MultibootHeader, error) {
	le := binary.LittleEndian
	limit := min(len(data), mbSearch)
	var bad error
	off := -1
	for o := 0; o+mbBaseSize <= limit; o += mbAlign {
		if le.Uint32(data[o:]) != MultibootHeaderMagic {
			continue
		}
		if sum := le.Uint32(data[o:]) + le.Uint32(data[o+mbFlags:]) + le.Uint32(data[o+mbChecksum:]); sum != 0 {
			if bad == nil {
				bad = errorf(ErrBadHeader, "bad Multiboot header at %#x: checksum %#x makes magic+flags+checksum %#x, want 0",
					o, le.Uint32(data[o+mbChecksum:]), sum)
			}
			continue
		}
		off = o
		break
	}
	if off < 0 {
		if bad != nil {
			return nil, bad
		}
		return nil, errorf(ErrNotKernel, "no Multiboot header in the first %d bytes", mbSearch)
	}
	h := &MultibootHeader{Offset: uint32(off), Flags: le.Uint32(data[off+mbFlags:])}
	if req := h.Flags & mbRequiredMask &^ mbKnownRequired; req != 0 {
		return nil, errorf(ErrUnsupported, "unsupported Multiboot kernel: header at %#x requires features %#x (flags %#x) capsule does not provide",
			off, req, h.Flags)
	}
	if h.Flags&MultibootVideoMode != 0 && off+mbVideoSize <= limit {
		h.ModeType = le.Uint32(data[off+mbModeType:])
		h.Width = le.Uint32(data[off+mbWidth:])
		h.Height = le.Uint32(data[off+mbHeight:])
		h.Depth = le.Uint32(data[off+mbDepth:])
	}
	if !h.HasAddress() {
		return h, nil
	}
	if off+mbAddrSize > limit {
		return nil, errorf(ErrTruncated, "truncated Multiboot header: address fields at %#x run past the end of the file or of its first %d bytes",
			off+mbHeaderAddr, mbSearch)
	}
	h.HeaderAddr = le.Uint32(data[off+mbHeaderAddr:])
	h.LoadAddr = le.Uint32(data[off+mbLoadAddr:])
	h.LoadEndAddr = le.Uint32(data[off+mbLoadEndAddr:])
	h.BSSEndAddr = le.Uint32(data[off+mbBSSEndAddr:])
	h.EntryAddr = le.Uint32(data[off+mbEntryAddr:])

	if h.LoadAddr > h.HeaderAddr {
		return nil, errorf(ErrBadLayout, "bad Multiboot address fields: load_addr %#x is above header_addr %#x", h.LoadAddr, h.HeaderAddr)
	}
	if d := uint64(h.HeaderAddr - h.LoadAddr); d > uint64(off) {
		return nil, errorf(ErrBadLayout, "bad Multiboot address fields: load_addr %#x is %#x bytes before header_addr %#x, but the header is at file offset %#x",
			h.LoadAddr, d, h.HeaderAddr, off)
	}
	if h.LoadAddr < machine.KernelMin {
		return nil, errorf(ErrBadLayout, "bad Multiboot address fields: load_addr %#x is below %#x", h.LoadAddr, machine.KernelMin)
	}
	h.LoadOffset = uint64(off) - uint64(h.HeaderAddr-h.LoadAddr)
	avail := uint64(len(data)) - h.LoadOffset
	if h.LoadEndAddr == 0 {
		h.LoadSize = avail
	} else {
		if h.LoadEndAddr <= h.LoadAddr {
			return nil, errorf(ErrBadLayout, "bad Multiboot address fields: load_end_addr %#x is not above load_addr %#x", h.LoadEndAddr, h.LoadAddr)
		}
		h.LoadSize = uint64(h.LoadEndAddr - h.LoadAddr)
		if h.LoadSize > avail {
			return nil, errorf(ErrTruncated, "truncated Multiboot kernel: load_addr %#x to load_end_addr %#x is %d bytes from file offset %#x, past the end of the file (%d bytes)",
				h.LoadAddr, h.LoadEndAddr, h.LoadSize, h.LoadOffset, len(data))
		}
	}
	loadEnd := uint64(h.LoadAddr) + h.LoadSize // below 2^33: no overflow
	h.MemSize = h.LoadSize
	if h.BSSEndAddr != 0 {
		if uint64(h.BSSEndAddr) < loadEnd {
			return nil, errorf(ErrBadLayout, "bad Multiboot address fields: bss_end_addr %#x is below the end of the loaded bytes %#x", h.BSSEndAddr, loadEnd)
		}
		h.MemSize = uint64(h.BSSEndAddr - h.LoadAddr)
	}
	if loadEnd > machine.MMIOGapEnd {
		return nil, errorf(ErrBadLayout, "bad Multiboot address fields: the image ends at %#x, above 4 GiB", loadEnd)
	}
	if e := uint64(h.EntryAddr); e < uint64(h.LoadAddr) || e >= loadEnd {
		return nil, errorf(ErrBadLayout, "bad Multiboot address fields: entry_addr %#x is outside the loaded bytes [%#x, %#x)", h.EntryAddr, h.LoadAddr, loadEnd)
	}
	return h, nil
}

// prepareMultiboot lays out a Multiboot kernel, its module (the initrd),
// the command line, the memory map and the Multiboot information.
func prepareMultiboot(mem *machine.GuestMemory, data []byte, h *MultibootHeader, cfg Config, readInitrd func() (*initrdFile, error)) (*plan, error) {
	var segs []Segment
	var entry uint64
	if h.HasAddress() {
		segs = []Segment{{
			Addr: uint64(h.LoadAddr), VAddr: uint64(h.LoadAddr), Offset: h.LoadOffset,
			FileSize: h.LoadSize, MemSize: h.MemSize, Flags: PFR | PFW | PFX,
			Data: data[h.LoadOffset : h.LoadOffset+h.LoadSize : h.LoadOffset+h.LoadSize],
		}}
		entry = uint64(h.EntryAddr)
	} else {
		if !isELF(data) {
			return nil, kernelErr(cfg, errorf(ErrUnsupported, "unsupported Multiboot kernel: header at %#x has no address fields (flag 16) and the file is not ELF", h.Offset))
		}
		eh, err := readELFHeader(data)
		if err != nil {
			return nil, kernelErr(cfg, err)
		}
		if segs, err = eh.loadSegments(data); err != nil {
			return nil, kernelErr(cfg, err)
		}
		var ok bool
		if entry, ok = physEntry(segs, eh.entry); !ok {
			return nil, kernelErr(cfg, fmt.Errorf("%w: entry point %#x is not inside the file data of a loaded segment", ErrBadLayout, eh.entry))
		}
		if entry >= machine.MMIOGapEnd {
			return nil, kernelErr(cfg, fmt.Errorf("%w: entry point %#x is above 4 GiB", ErrBadLayout, entry))
		}
	}
	if err := checkPhysSegments(mem, segs); err != nil {
		return nil, kernelErr(cfg, err)
	}
	if err := checkCmdline(cfg.Cmdline); err != nil {
		return nil, kernelErr(cfg, err)
	}
	p := &plan{
		entry: Entry{Mode: Mode32, RIP: entry, RAX: MultibootBootloaderMagic, RBX: machine.BootInfoAddr},
		info:  Info{Format: FormatMultiboot, KernelAddr: segs[0].Addr, KernelEnd: segs[len(segs)-1].End()},
	}
	for _, s := range segs {
		p.add(s.Addr, s.Data, s.MemSize-s.FileSize)
	}
	if err := p.placeInitrd(mem, cfg, readInitrd, machine.MMIOGapStart); err != nil {
		return nil, err
	}
	p.addCmdline(cfg.Cmdline)

	le := binary.LittleEndian
	e820 := machine.E820(mem)
	if machine.MemMapAddr+len(e820)*mbMmapEntrySize > machine.PML4Addr {
		return nil, kernelErr(cfg, fmt.Errorf("%w: memory map of %d entries does not fit below %#x", ErrBadLayout, len(e820), machine.PML4Addr))
	}
	mm := make([]byte, len(e820)*mbMmapEntrySize)
	for i, e := range e820 {
		r := mm[i*mbMmapEntrySize:]
		le.PutUint32(r[mbMmapSize:], mbMmapRestSize)
		le.PutUint64(r[mbMmapBase:], e.Addr)
		le.PutUint64(r[mbMmapLength:], e.Size)
		le.PutUint32(r[mbMmapType:], e.Type)
	}
	p.add(machine.MemMapAddr, mm, 0)

	page := make([]byte, pageSize)
	flags := uint32(mbiFlagMem | mbiFlagCmdline | mbiFlagMmap | mbiFlagLoaderName)
	le.PutUint32(page[mbiMemLower:], machine.EBDAStart/1024)
	le.PutUint32(page[mbiMemUpper:], uint32((lowRAMEnd(mem)-machine.KernelMin)/1024))
	le.PutUint32(page[mbiCmdline:], machine.CmdlineAddr)
	le.PutUint32(page[mbiMmapLength:], uint32(len(mm)))
	le.PutUint32(page[mbiMmapAddr:], machine.MemMapAddr)
	le.PutUint32(page[mbiBootLoaderName:], MultibootLoaderName)
	copy(page[MultibootLoaderName-machine.BootInfoAddr:], mbLoaderName+"\x00")
	if p.info.InitrdSize != 0 {
		flags |= mbiFlagMods
		le.PutUint32(page[mbiModsCount:], 1)
		le.PutUint32(page[mbiModsAddr:], MultibootModsAddr)
		mod := page[MultibootModsAddr-machine.BootInfoAddr:]
		le.PutUint32(mod[mbModStart:], uint32(p.info.InitrdAddr))
		le.PutUint32(mod[mbModEnd:], uint32(p.info.InitrdAddr+p.info.InitrdSize))
		le.PutUint32(mod[mbModString:], mbModStringAddr) // an empty string: the page is zeroed
	}
	le.PutUint32(page[mbiFlags:], flags)
	p.add(machine.BootInfoAddr, page, 0)
	return p, nil
}
