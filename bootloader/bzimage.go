package bootloader

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/capsule-vm/capsule/machine"
)

// The Linux x86 boot protocol (Documentation/arch/x86/boot.rst). Offsets
// of the setup header are file offsets in the bzImage; the same header is
// copied to the same offsets of struct boot_params (the zero page).
const (
	bzSetupSects      = 0x1f1 // u8 setup_sects: 512-byte sectors of setup code after the boot sector; 0 means 4
	bzSyssize         = 0x1f4 // u32 syssize: protected-mode code size in 16-byte paragraphs (2.04+)
	bzBootFlag        = 0x1fe // u16 boot_flag: 0xAA55
	bzJump            = 0x200 // u8 0xEB (short jmp); the byte at 0x201 is the header length past 0x202
	bzHeaderMagic     = 0x202 // u32 header: "HdrS"
	bzVersion         = 0x206 // u16 version: boot protocol, major<<8 | minor
	bzKernelVersion   = 0x20e // u16 kernel_version: pointer to the version string, minus 0x200
	bzTypeOfLoader    = 0x210 // u8 type_of_loader, written by the loader
	bzLoadflags       = 0x211 // u8 loadflags
	bzCode32Start     = 0x214 // u32 code32_start
	bzRamdiskImage    = 0x218 // u32 ramdisk_image: initrd address, written by the loader
	bzRamdiskSize     = 0x21c // u32 ramdisk_size, written by the loader
	bzHeapEndPtr      = 0x224 // u16 heap_end_ptr, written by the loader
	bzCmdLinePtr      = 0x228 // u32 cmd_line_ptr, written by the loader (2.02+)
	bzInitrdAddrMax   = 0x22c // u32 initrd_addr_max: highest address the initrd may occupy (2.03+)
	bzKernelAlignment = 0x230 // u32 kernel_alignment (2.05+)
	bzRelocatable     = 0x234 // u8 relocatable_kernel (2.05+)
	bzMinAlignment    = 0x235 // u8 min_alignment, as a power of two (2.10+)
	bzXLoadflags      = 0x236 // u16 xloadflags (2.12+)
	bzCmdlineSize     = 0x238 // u32 cmdline_size: longest command line, NUL excluded (2.06+)
	bzPrefAddress     = 0x258 // u64 pref_address (2.10+)
	bzInitSize        = 0x260 // u32 init_size (2.10+)

	bzMagic         = "HdrS"
	bzBootFlagValue = 0xaa55
	bzJumpOpcode    = 0xeb
	bzSetupHdrStart = bzSetupSects // the setup header starts at setup_sects
	// bzHeaderEnd206 and bzHeaderEnd210 are the least header end (0x202
	// plus the byte at 0x201) for the fields capsule reads: up to
	// cmdline_size for 2.06, up to init_size for 2.10.
	bzHeaderEnd206 = bzCmdlineSize + 4
	bzHeaderEnd210 = bzInitSize + 4
	// bzHeaderEndMax is where boot_params has edd_mbr_sig_buffer, after
	// the setup header and its padding.
	bzHeaderEndMax = 0x290
	bzSectorSize   = 512
	// bzVersionMax is the most bytes of the kernel version string read.
	bzVersionMax = 256

	// loadflags bits.
	LoadedHigh  = 1 << 0 // LOADED_HIGH: the protected-mode code loads at 0x100000
	CanUseHeap  = 1 << 7 // CAN_USE_HEAP: heap_end_ptr is valid
	XLFKernel64 = 1 << 0 // xloadflags XLF_KERNEL_64: 64-bit entry at +0x200

	// bzMinVersion is the oldest boot protocol capsule boots, 2.06 (it
	// has cmdline_size); bz64Version is the first with xloadflags.
	bzMinVersion = 0x0206
	bz64Version  = 0x020c
	bz210Version = 0x020a

	// Struct boot_params (the zero page), outside the setup header.
	ZeroPageSize        = 4096
	bpExtRamdiskImage   = 0x0c0 // u32 ext_ramdisk_image: high 32 bits of the initrd address
	bpExtRamdiskSize    = 0x0c4 // u32 ext_ramdisk_size: high 32 bits of its size
	bpExtCmdLinePtr     = 0x0c8 // u32 ext_cmd_line_ptr: high 32 bits of cmd_line_ptr
	bpE820Entries       = 0x1e8 // u8 e820_entries
	bpE820Table         = 0x2d0 // struct boot_e820_entry e820_table[128]
	bpE820EntrySize     = 20    // u64 addr, u64 size, u32 type, packed
	bpE820Max           = 128   // E820_MAX_ENTRIES_ZEROPAGE
	bzLoaderType        = 0xff  // type_of_loader: undefined loader
	bzHeapEnd           = 0xfe00
	bz64EntryOffset     = 0x200 // startup_64 is 0x200 past the protected-mode code
	bzKernelVersionBase = 0x200 // kernel_version is relative to 0x200

	// LinuxStackTop is the stack pointer a bzImage starts with: the
	// kernel uses it only for its first calls, before setting its own.
	LinuxStackTop = 0x8000
)

// BzImage is a parsed Linux bzImage setup header.
type BzImage struct {
	Version         uint16 // boot protocol, e.g. 0x020f for 2.15
	SetupSects      int    // sectors of setup code after the boot sector (a 0 in the file reads as 4)
	LoadFlags       uint8
	XLoadFlags      uint16 // 0 before 2.12
	CmdlineSize     uint32 // longest command line, NUL excluded
	InitrdAddrMax   uint32 // highest address the initrd may occupy
	Relocatable     bool
	KernelAlignment uint32
	MinAlignment    uint8  // log2 of the least alignment (2.10+)
	PrefAddress     uint64 // preferred load address (2.10+, else 0)
	InitSize        uint32 // memory the kernel needs from its run address (2.10+, else 0)
	Code32Start     uint32
	// KernelVersion is the version string the kernel_version field points
	// to, cut at the first non-printable byte; "" if it has none.
	KernelVersion string
	// Header is the setup header as the kernel sizes it: file bytes 0x1F1
	// up to 0x202 plus the byte at 0x201.
	Header []byte
	// Payload is the protected-mode code: the file from
	// (SetupSects+1)*512, syssize*16 bytes of it when syssize is set.
	Payload []byte
}

// VersionString is the boot protocol version as boot.rst writes it, such
// as "2.15".
func (b *BzImage) VersionString() string { return protoVersion(b.Version) }

// Has64BitEntry reports whether the kernel has the 64-bit entry point
// (boot protocol 2.12 or later with XLF_KERNEL_64).
func (b *BzImage) Has64BitEntry() bool {
	return b.Version >= bz64Version && b.XLoadFlags&XLFKernel64 != 0
}

func protoVersion(v uint16) string { return fmt.Sprintf("%d.%02d", v>>8, v&0xff) }

// ParseBzImage parses and checks the setup header of a Linux bzImage held
// in data: the "HdrS" magic and boot flag, a boot protocol of 2.06 or
// later, a kernel that loads high, a setup area and protected-mode code
// that are inside the file. It does not require the 64-bit entry point
// (see [BzImage.Has64BitEntry]); [Load] does. Errors wrap ErrNotKernel (no
// magic), ErrBadHeader, ErrUnsupported or ErrTruncated. It never panics.
func ParseBzImage(data []byte) (*BzImage, error) {
	le := binary.LittleEndian
	if len(data) < bzHeaderMagic+4 || string(data[bzHeaderMagic:][:4]) != bzMagic {
		return nil, errorf(ErrNotKernel, "not a Linux bzImage (no HdrS magic at 0x202)")
	}
	if f := le.Uint16(data[bzBootFlag:]); f != bzBootFlagValue {
		return nil, errorf(ErrBadHeader, "bad bzImage header: boot flag %#04x at 0x1fe, want 0xaa55", f)
	}
	b := &BzImage{SetupSects: int(data[bzSetupSects])}
	if b.SetupSects == 0 {
		b.SetupSects = 4
	}
	// At least 5 sectors, 2560 bytes: every header field below lies in it.
	setupSize := uint64(b.SetupSects+1) * bzSectorSize
	if uint64(len(data)) < setupSize {
		return nil, errorf(ErrTruncated, "truncated bzImage: file of %d bytes is shorter than its %d-byte setup area (setup_sects %d)",
			len(data), setupSize, b.SetupSects)
	}
	b.Version = le.Uint16(data[bzVersion:])
	if b.Version < bzMinVersion {
		return nil, errorf(ErrUnsupported, "unsupported bzImage: boot protocol %s is older than %s", protoVersion(b.Version), protoVersion(bzMinVersion))
	}
	if data[bzJump] != bzJumpOpcode || data[bzJump+1] >= 0x80 {
		return nil, errorf(ErrBadHeader, "bad bzImage header: no short forward jump at 0x200 (%#02x %#02x) to size the header", data[bzJump], data[bzJump+1])
	}
	hdrEnd := bzHeaderMagic + int(data[bzJump+1])
	need := bzHeaderEnd206
	if b.Version >= bz210Version {
		need = bzHeaderEnd210
	}
	if hdrEnd < need || hdrEnd > bzHeaderEndMax {
		return nil, errorf(ErrBadHeader, "bad bzImage header: header ends at %#x, boot protocol %s needs %#x to %#x",
			hdrEnd, protoVersion(b.Version), need, bzHeaderEndMax)
	}
	b.Header = data[bzSetupHdrStart:hdrEnd:hdrEnd]

	b.LoadFlags = data[bzLoadflags]
	if b.LoadFlags&LoadedHigh == 0 {
		return nil, errorf(ErrUnsupported, "unsupported bzImage: loads low (a zImage, LOADED_HIGH clear in loadflags %#x)", b.LoadFlags)
	}
	b.Code32Start = le.Uint32(data[bzCode32Start:])
	b.InitrdAddrMax = le.Uint32(data[bzInitrdAddrMax:])
	b.KernelAlignment = le.Uint32(data[bzKernelAlignment:])
	b.Relocatable = data[bzRelocatable] != 0
	b.CmdlineSize = le.Uint32(data[bzCmdlineSize:])
	if b.Version >= bz64Version {
		b.XLoadFlags = le.Uint16(data[bzXLoadflags:])
	}
	if b.Version >= bz210Version {
		b.MinAlignment = data[bzMinAlignment]
		b.PrefAddress = le.Uint64(data[bzPrefAddress:])
		b.InitSize = le.Uint32(data[bzInitSize:])
	}

	rest := uint64(len(data)) - setupSize
	if rest == 0 {
		return nil, errorf(ErrTruncated, "truncated bzImage: no protected-mode code after the %d-byte setup area", setupSize)
	}
	if sys := uint64(le.Uint32(data[bzSyssize:])); sys != 0 {
		n := sys * 16 // sys < 2^32: no overflow
		if n > rest {
			return nil, errorf(ErrTruncated, "truncated bzImage: protected-mode code of %d bytes (syssize) cut at %d bytes",
				n, rest)
		}
		rest = n
	}
	b.Payload = data[setupSize : setupSize+rest : setupSize+rest]

	if p := uint64(le.Uint16(data[bzKernelVersion:])); p != 0 {
		off := p + bzKernelVersionBase
		if off < setupSize {
			s := data[off:min(setupSize, off+bzVersionMax)]
			n := 0
			for n < len(s) && s[n] >= 0x20 && s[n] < 0x7f {
				n++
			}
			b.KernelVersion = string(s[:n])
		}
	}
	return b, nil
}

// runtimeRange is where the kernel runs and how much memory it needs
// there, by boot.rst's rule for init_size: a relocatable kernel loaded
// below pref_address runs at pref_address, aligned up to kernel_alignment;
// a non-relocatable one runs at pref_address. Before 2.10 (no init_size)
// the loaded code alone is counted.
func (b *BzImage) runtimeRange(load uint64) (start, end uint64, err error) {
	if b.Version < bz210Version {
		return load, load + uint64(len(b.Payload)), nil
	}
	start = b.PrefAddress
	if b.Relocatable {
		a := uint64(b.KernelAlignment)
		if a == 0 || a&(a-1) != 0 || a > machine.GiB {
			return 0, 0, fmt.Errorf("%w: kernel_alignment %#x is not a power of two up to 1 GiB", ErrBadLayout, a)
		}
		start = max(load, b.PrefAddress)
		if start > machine.MMIOGapStart {
			return 0, 0, fmt.Errorf("%w: pref_address %#x is above the MMIO gap at %#x", ErrBadLayout, b.PrefAddress, uint64(machine.MMIOGapStart))
		}
		start = alignUp(start, a)
	} else if start == 0 {
		start = load
	}
	if start > machine.MMIOGapStart {
		return 0, 0, fmt.Errorf("%w: pref_address %#x is above the MMIO gap at %#x", ErrBadLayout, start, uint64(machine.MMIOGapStart))
	}
	return start, start + uint64(b.InitSize), nil
}

// prepareBzImage lays out a bzImage for the 64-bit boot protocol: the
// protected-mode code at machine.KernelMin, the zero page at
// machine.BootInfoAddr, the command line, the initrd.
func prepareBzImage(mem *machine.GuestMemory, b *BzImage, cfg Config, readInitrd func() (*initrdFile, error)) (*plan, error) {
	if b.Version < bz64Version {
		return nil, kernelErr(cfg, errorf(ErrUnsupported, "unsupported bzImage: boot protocol %s has no 64-bit entry point (2.12 and XLF_KERNEL_64 needed)",
			b.VersionString()))
	}
	if b.XLoadFlags&XLFKernel64 == 0 {
		return nil, kernelErr(cfg, errorf(ErrUnsupported, "unsupported bzImage: no 64-bit entry point (XLF_KERNEL_64 clear in xloadflags %#x); capsule boots x86-64 kernels only",
			b.XLoadFlags))
	}
	if err := checkCmdline(cfg.Cmdline); err != nil {
		return nil, kernelErr(cfg, err)
	}
	if uint64(len(cfg.Cmdline)) > uint64(b.CmdlineSize) {
		return nil, kernelErr(cfg, fmt.Errorf("%w: %d bytes, the kernel accepts at most %d (cmdline_size)", ErrCmdlineTooLong, len(cfg.Cmdline), b.CmdlineSize))
	}

	const load = machine.KernelMin
	payloadEnd := load + uint64(len(b.Payload)) // the file is at most RAM-sized
	start, end, err := b.runtimeRange(load)
	if err != nil {
		return nil, kernelErr(cfg, err)
	}
	kernelEnd := max(payloadEnd, end)
	if low := lowRAMEnd(mem); kernelEnd > low {
		return nil, kernelErr(cfg, errorf(ErrBadLayout, "kernel needs guest RAM up to %#x (%s of code at %#x, init_size %s at %#x), but RAM below the MMIO gap ends at %#x; give more --memory",
			kernelEnd, sizeString(uint64(len(b.Payload))), load, sizeString(uint64(b.InitSize)), start, low))
	}

	version := "boot protocol " + b.VersionString()
	if v, _, _ := strings.Cut(b.KernelVersion, " "); v != "" {
		version = v + ", " + version
	}
	p := &plan{
		entry: Entry{Mode: Mode64, RIP: load + bz64EntryOffset, RSP: LinuxStackTop, RSI: machine.BootInfoAddr},
		info:  Info{Format: FormatBzImage, Linux: true, Version: version, KernelAddr: load, KernelEnd: kernelEnd},
	}
	p.add(load, b.Payload, 0)
	limit := uint64(b.InitrdAddrMax) + 1
	if err := p.placeInitrd(mem, cfg, readInitrd, limit); err != nil {
		return nil, err
	}
	p.addCmdline(cfg.Cmdline)

	zp := make([]byte, ZeroPageSize)
	copy(zp[bzSetupHdrStart:], b.Header)
	zp[bzLoadflags] |= CanUseHeap
	binary.LittleEndian.PutUint16(zp[bzHeapEndPtr:], bzHeapEnd)
	if err := putLoaderFields(zp, mem, p.info); err != nil {
		return nil, kernelErr(cfg, err)
	}
	p.add(machine.BootInfoAddr, zp, 0)
	return p, nil
}

// putLoaderFields writes the zero-page fields a boot loader fills, the
// same for a bzImage and a plain ELF64 kernel: type_of_loader 0xFF,
// cmd_line_ptr machine.CmdlineAddr (never 0: an empty command line is an
// empty string there), ramdisk_image and ramdisk_size (high halves in
// ext_ramdisk_image and ext_ramdisk_size) from info, and the e820 table of
// machine.E820(mem).
func putLoaderFields(zp []byte, mem *machine.GuestMemory, info Info) error {
	e820 := machine.E820(mem)
	if len(e820) > bpE820Max {
		return fmt.Errorf("%w: %d memory map entries, the zero page holds %d", ErrBadLayout, len(e820), bpE820Max)
	}
	le := binary.LittleEndian
	zp[bzTypeOfLoader] = bzLoaderType
	le.PutUint32(zp[bzCmdLinePtr:], machine.CmdlineAddr)
	le.PutUint32(zp[bpExtCmdLinePtr:], 0)
	ia, is := info.InitrdAddr, info.InitrdSize
	le.PutUint32(zp[bzRamdiskImage:], uint32(ia))
	le.PutUint32(zp[bzRamdiskSize:], uint32(is))
	le.PutUint32(zp[bpExtRamdiskImage:], uint32(ia>>32))
	le.PutUint32(zp[bpExtRamdiskSize:], uint32(is>>32))
	zp[bpE820Entries] = uint8(len(e820))
	for i, e := range e820 {
		r := zp[bpE820Table+i*bpE820EntrySize:]
		le.PutUint64(r[0:], e.Addr)
		le.PutUint64(r[8:], e.Size)
		le.PutUint32(r[16:], e.Type)
	}
	return nil
}
