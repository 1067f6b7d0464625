package bootloader

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"

	"github.com/capsule-vm/capsule/machine"
)

// Config names what to boot.
type Config struct {
	Kernel  string // path of the kernel image
	Initrd  string // path of the initial ramdisk; "" for none
	Cmdline string // kernel command line
	CPUs    int    // vCPU count, at least 1
}

// Format is the kind of kernel image [Load] found.
type Format uint8

const (
	_ Format = iota
	// FormatUnikernel is an ELF64 file with neither a PVH note nor a
	// Multiboot header (a capsule unikernel, a Firecracker-style Linux
	// vmlinux), entered in 64-bit long mode with a zero page and a
	// capsule boot-info block.
	FormatUnikernel
	FormatBzImage   // a Linux bzImage, booted through the 64-bit boot protocol
	FormatPVH       // an ELF vmlinux with a Xen PVH entry note
	FormatMultiboot // a Multiboot (version 1) kernel
)

func (f Format) String() string {
	switch f {
	case FormatUnikernel:
		return "ELF64 (64-bit boot protocol)"
	case FormatBzImage:
		return "Linux bzImage"
	case FormatPVH:
		return "ELF vmlinux (PVH)"
	case FormatMultiboot:
		return "Multiboot"
	}
	return fmt.Sprintf("Format(%d)", uint8(f))
}

// Info describes what [Load] loaded, for logs.
type Info struct {
	Format Format
	// Version is, for a bzImage, the kernel's version string (up to its
	// first space) and the boot protocol version, such as
	// "6.1.0-57-cloud-amd64, boot protocol 2.15"; empty for other formats.
	Version string
	// KernelAddr and KernelEnd bound the memory the kernel occupies: its
	// segments, or for a bzImage the loaded code and the init_size bytes
	// it needs to decompress itself.
	KernelAddr, KernelEnd uint64
	// InitrdAddr and InitrdSize place the initrd; both 0 without one.
	InitrdAddr, InitrdSize uint64
	// Linux is set for a Linux kernel: a bzImage, a PVH vmlinux, or an
	// ELF64 file with Linux's own ELF notes (a vmlinux booted without PVH).
	Linux bool
}

// pageSize is the x86 page size; the initrd is placed on a page boundary.
const pageSize = 4096

// Load reads the kernel image cfg.Kernel, recognises its format, and
// writes it, the initrd cfg.Initrd (if any), the command line and the
// boot-protocol structures into mem. It returns the state the boot vCPU
// must start in and a description of what it loaded. The formats are
// tried in this order: a Linux bzImage ("HdrS" at 0x202 and the boot
// flag 0xAA55 at 0x1FE), an ELF file with a PVH entry note, a Multiboot
// header in the first 8192 bytes, an ELF64 kernel entered in 64-bit mode
// (any other ELF64 file).
// The package documentation describes each format's memory layout and
// entry state.
//
// Nothing is written to mem unless the kernel, initrd and command line
// are all valid and fit. Errors are one line, start with "kernel PATH:"
// or "initrd PATH:", and wrap one of the package's sentinel errors.
func Load(mem *machine.GuestMemory, cfg Config) (_ Entry, _ Info, err error) {
	var maps mappings
	defer maps.release()
	defer maps.recoverFault(cfg, &err)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	p, err := prepare(mem, cfg, &maps)
	if err != nil {
		return Entry{}, Info{}, err
	}
	if err := p.check(mem); err != nil {
		return Entry{}, Info{}, kernelErr(cfg, err)
	}
	if err := p.apply(mem); err != nil {
		return Entry{}, Info{}, kernelErr(cfg, err)
	}
	return p.entry, p.info, nil
}

// prepare reads and validates everything and returns what to write.
func prepare(mem *machine.GuestMemory, cfg Config, maps *mappings) (*plan, error) {
	if mem == nil {
		return nil, kernelErr(cfg, errors.New("no guest memory"))
	}
	if cfg.CPUs < 1 {
		return nil, kernelErr(cfg, fmt.Errorf("vCPU count %d is not positive", cfg.CPUs))
	}
	data, err := readImage(cfg.Kernel, mem.Size(), ErrNotKernel, maps)
	if err != nil {
		return nil, kernelErr(cfg, err)
	}

	return prepareImage(mem, data, cfg, func() (*initrdFile, error) { return readInitrd(mem, cfg.Initrd, maps) })
}

// prepareImage recognises the kernel image in data and lays it out;
// readInitrd reads cfg.Initrd once the kernel is known to take one.
func prepareImage(mem *machine.GuestMemory, data []byte, cfg Config, readInitrd func() (*initrdFile, error)) (*plan, error) {
	if len(data) == 0 {
		return nil, kernelErr(cfg, errEmpty)
	}
	if isBzImage(data) {
		bz, err := ParseBzImage(data)
		if err != nil {
			return nil, kernelErr(cfg, err)
		}
		return prepareBzImage(mem, bz, cfg, readInitrd)
	}

	elf := isELF(data)
	if elf {
		if _, err := readELFHeader(data); err == nil {
			entry, ok, err := FindPVHEntry(data)
			if err != nil {
				return nil, kernelErr(cfg, err)
			}
			if ok {
				return preparePVH(mem, data, entry, cfg, readInitrd)
			}
		}
	}

	mb, err := ParseMultiboot(data)
	switch {
	case err == nil:
		return prepareMultiboot(mem, data, mb, cfg, readInitrd)
	case !errors.Is(err, ErrNotKernel):
		return nil, kernelErr(cfg, err)
	}

	if !elf {
		return nil, kernelErr(cfg, notKernel(data))
	}
	return prepareUnikernel(mem, data, cfg, readInitrd)
}

// isBzImage reports whether data has the setup header magic "HdrS" at
// 0x202 and the boot flag 0xAA55 at 0x1FE.
func isBzImage(data []byte) bool {
	return len(data) >= bzHeaderMagic+4 && string(data[bzHeaderMagic:][:4]) == bzMagic &&
		binary.LittleEndian.Uint16(data[bzBootFlag:]) == bzBootFlagValue
}

// notKernel is the error for a file in no known format.
func notKernel(data []byte) error {
	why := "no HdrS magic at 0x202"
	if len(data) >= bzHeaderMagic+4 && string(data[bzHeaderMagic:][:4]) == bzMagic {
		why = fmt.Sprintf("HdrS magic at 0x202 but boot flag %#04x at 0x1fe, not 0xaa55", binary.LittleEndian.Uint16(data[bzBootFlag:]))
	}
	return errorf(ErrNotKernel, "%v (%s, no ELF header, no Multiboot header)", ErrNotKernel, why)
}

// prepareUnikernel validates an ELF64 kernel with neither a PVH note nor a
// Multiboot header, entered in 64-bit mode (see prepareELF64).
func prepareUnikernel(mem *machine.GuestMemory, data []byte, cfg Config, readInitrd func() (*initrdFile, error)) (*plan, error) {
	img, err := parseELF64(mem, data)
	if err != nil {
		// An unsupported or misplaced ELF may be a kernel meant for
		// another format: say how it was taken.
		if errors.Is(err, ErrUnsupported) || errors.Is(err, ErrBadLayout) {
			err = errorf(err, "%v (an ELF file without a PVH note or Multiboot header is entered as an ELF64 kernel in 64-bit mode)", err)
		}
		return nil, kernelErr(cfg, err)
	}
	p, err := prepareELF64(mem, img, cfg, readInitrd)
	if p != nil {
		p.info.Linux = hasLinuxNote(data)
	}
	return p, err
}

// hasLinuxNote reports whether an ELF file carries a note named "Linux",
// as every vmlinux does (its version and build notes).
func hasLinuxNote(data []byte) bool {
	h, err := readELFHeader(data)
	if err != nil {
		return false
	}
	blocks, err := h.noteBlocks(data)
	if err != nil {
		return false
	}
	for _, b := range blocks {
		found := false
		walkNotes(b, func(name []byte, _ uint32, _ []byte) bool {
			found = string(name) == "Linux\x00"
			return found
		})
		if found {
			return true
		}
	}
	return false
}

func kernelErr(cfg Config, err error) error { return fmt.Errorf("kernel %s: %w", cfg.Kernel, err) }

// initrdFile is an initrd read into host memory.
type initrdFile struct {
	path string
	data []byte
}

// readInitrd reads the initrd at path, if path is not empty.
func readInitrd(mem *machine.GuestMemory, path string, maps *mappings) (*initrdFile, error) {
	if path == "" {
		return nil, nil
	}
	data, err := readImage(path, mem.Size(), ErrBadInitrd, maps)
	if err != nil {
		return nil, fmt.Errorf("initrd %s: %w", path, err)
	}
	if len(data) == 0 {
		return nil, errorf(ErrBadInitrd, "initrd %s: empty file", path)
	}
	return &initrdFile{path: path, data: data}, nil
}

// lowRAMEnd is the end of the RAM that starts at address 0: the guest's
// RAM below the MMIO gap, all a 32-bit kernel can reach at entry.
func lowRAMEnd(mem *machine.GuestMemory) uint64 {
	for _, r := range mem.Regions() {
		if r.GPA == 0 {
			return r.End()
		}
	}
	return 0
}

// placeInitrd reads the initrd, if any, and puts it page-aligned as high
// as possible below limit and the end of low RAM, above p.info.KernelEnd.
// The loaders call it once the kernel has passed its checks.
func (p *plan) placeInitrd(mem *machine.GuestMemory, cfg Config, readInitrd func() (*initrdFile, error), limit uint64) error {
	initrd, err := readInitrd()
	if err != nil || initrd == nil {
		return err
	}
	// Only a bzImage or a PVH vmlinux is surely Linux; a Multiboot module
	// or the initrd of an ELF64 kernel may hold anything.
	if p.info.Format == FormatBzImage || p.info.Format == FormatPVH {
		if err := checkLinuxInitrd(initrd.data); err != nil {
			return fmt.Errorf("initrd %s: %w", cfg.Initrd, err)
		}
	}
	size := uint64(len(initrd.data))
	top := min(limit, lowRAMEnd(mem))
	bottom := alignUp(p.info.KernelEnd, pageSize) // KernelEnd < 4 GiB: no overflow
	if size > top || alignDown(top-size, pageSize) < bottom {
		return errorf(ErrBadLayout, "initrd %s: %s does not fit in guest RAM below %#x next to the kernel; give more --memory",
			cfg.Initrd, sizeString(size), top-1)
	}
	addr := alignDown(top-size, pageSize)
	p.info.InitrdAddr, p.info.InitrdSize = addr, size
	p.add(addr, initrd.data, 0)
	return nil
}

// checkPhysSegments checks segments loaded at physical addresses for a
// kernel entered with paging off: at or above machine.KernelMin and inside
// the RAM below the MMIO gap.
func checkPhysSegments(mem *machine.GuestMemory, segs []Segment) error {
	end := lowRAMEnd(mem)
	for _, s := range segs {
		if s.Addr < machine.KernelMin {
			return fmt.Errorf("%w: segment [%#x, %#x) starts below %#x", ErrBadLayout, s.Addr, s.End(), machine.KernelMin)
		}
		if s.End() > end {
			return fmt.Errorf("%w: segment [%#x, %#x) is outside the guest RAM below %#x (%d MiB of RAM)",
				ErrBadLayout, s.Addr, s.End(), end, mem.Size()/machine.MiB)
		}
	}
	return nil
}

// sizeString formats a byte count for messages: "300 MiB", "1.5 MiB",
// "12 KiB", "100 bytes".
func sizeString(n uint64) string {
	switch {
	case n >= machine.MiB && n%machine.MiB == 0:
		return fmt.Sprintf("%d MiB", n/machine.MiB)
	case n >= machine.MiB:
		return fmt.Sprintf("%.1f MiB", float64(n)/machine.MiB)
	case n >= 1024:
		return fmt.Sprintf("%d KiB", (n+1023)/1024)
	}
	return fmt.Sprintf("%d bytes", n)
}

// plan is everything a loader will write, collected while validating so
// that nothing is written before all checks have passed.
type plan struct {
	entry  Entry
	info   Info
	writes []memWrite
}

// memWrite is data written at addr followed by zero bytes of zeroes.
type memWrite struct {
	addr uint64
	data []byte
	zero uint64
}

func (p *plan) add(addr uint64, data []byte, zero uint64) {
	p.writes = append(p.writes, memWrite{addr, data, zero})
}

// addCmdline writes the command line, NUL-terminated, at
// machine.CmdlineAddr.
func (p *plan) addCmdline(cmdline string) {
	p.add(machine.CmdlineAddr, append([]byte(cmdline), 0), 0)
}

// addMemMap writes machine.E820(mem) at machine.MemMapAddr as 24-byte
// records (u64 address, u64 size, u32 type, u32 zero): the capsule
// memory map and PVH's hvm_memmap_table_entry. It returns the count.
func (p *plan) addMemMap(mem *machine.GuestMemory) (int, error) {
	e820 := machine.E820(mem)
	if machine.MemMapAddr+len(e820)*MemMapEntrySize > machine.PML4Addr {
		return 0, fmt.Errorf("%w: memory map of %d entries does not fit below %#x", ErrBadLayout, len(e820), machine.PML4Addr)
	}
	mm := make([]byte, 0, len(e820)*MemMapEntrySize)
	for _, e := range e820 {
		mm = binary.LittleEndian.AppendUint64(mm, e.Addr)
		mm = binary.LittleEndian.AppendUint64(mm, e.Size)
		mm = binary.LittleEndian.AppendUint32(mm, e.Type)
		mm = binary.LittleEndian.AppendUint32(mm, 0)
	}
	p.add(machine.MemMapAddr, mm, 0)
	return len(e820), nil
}

// Low-memory ranges the VMM fills after loading, which no loader write may
// touch: room for its GDT, its boot page tables (machine.SetupLongMode)
// and everything from the EBDA to 1 MiB: the EBDA and BIOS area the memory
// map reserves, where the MP and ACPI tables go (machine.WriteMPTable,
// machine.WriteACPITables), and the VGA window between them, which it
// leaves out.
const (
	gdtReserve        = 0x100  // bytes kept for the GDT at machine.GDTAddr
	pageTablesReserve = 0x6000 // PML4, PDPT and 4 page directories at machine.PML4Addr
)

// check makes sure every write lies in guest RAM, that none overlaps
// another or the VMM's GDT, page tables and MP table. The loaders lay
// things out so that this holds; check is the last line of defence.
func (p *plan) check(mem *machine.GuestMemory) error {
	type span struct {
		start, end uint64
		what       string
	}
	spans := []span{
		{machine.GDTAddr, machine.GDTAddr + gdtReserve, "the GDT"},
		{machine.PML4Addr, machine.PML4Addr + pageTablesReserve, "the page tables"},
		{machine.EBDAStart, machine.KernelMin, "the legacy area (MP and ACPI tables)"},
	}
	for _, w := range p.writes {
		n, ok := add(uint64(len(w.data)), w.zero)
		if !ok {
			return fmt.Errorf("%w: %#x+%#x+%#x bytes overflow", ErrBadLayout, w.addr, len(w.data), w.zero)
		}
		if n == 0 {
			continue
		}
		if !mem.Contains(w.addr, n) {
			return fmt.Errorf("%w: [%#x, %#x) is outside guest RAM (%d MiB)", ErrBadLayout, w.addr, w.addr+n, mem.Size()/machine.MiB)
		}
		spans = append(spans, span{w.addr, w.addr + n, fmt.Sprintf("[%#x, %#x)", w.addr, w.addr+n)})
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	for i := 1; i < len(spans); i++ {
		if spans[i].start < spans[i-1].end {
			return fmt.Errorf("%w: %s overlaps %s", ErrBadLayout, spans[i].what, spans[i-1].what)
		}
	}
	return nil
}

// apply performs the writes.
func (p *plan) apply(mem *machine.GuestMemory) error {
	for _, w := range p.writes {
		if err := mem.WriteAt(w.data, w.addr); err != nil {
			return fmt.Errorf("write at %#x: %w", w.addr, err)
		}
		if w.zero > 0 {
			if err := mem.Zero(w.addr+uint64(len(w.data)), w.zero); err != nil {
				return fmt.Errorf("zero at %#x: %w", w.addr+uint64(len(w.data)), err)
			}
		}
	}
	return nil
}

// initrdMagics are the formats Linux unpacks as an initramfs: a newc or
// old-binary cpio archive, or one compressed with a decompressor Linux may
// have built in.
var initrdMagics = []struct {
	name  string
	magic string
}{
	{"cpio (newc)", "070701"}, {"cpio (newc, crc)", "070702"}, {"cpio (binary)", "\xc7\x71"},
	{"gzip", "\x1f\x8b"}, {"gzip (old)", "\x1f\x9e"}, {"bzip2", "BZh"}, {"xz", "\xfd7zXZ\x00"},
	{"lzma", "\x5d\x00\x00"}, {"lzo", "\x89LZO"}, {"lz4", "\x02\x21\x4c\x18"}, {"zstd", "\x28\xb5\x2f\xfd"},
}

// checkLinuxInitrd rejects an initrd Linux could not unpack, which would
// otherwise surface only as a kernel panic deep in the boot.
func checkLinuxInitrd(data []byte) error {
	for _, m := range initrdMagics {
		if len(data) >= len(m.magic) && string(data[:len(m.magic)]) == m.magic {
			return nil
		}
	}
	head := data[:min(len(data), 6)]
	return errorf(ErrBadInitrd, "not a cpio archive nor a compressed one (starts with % x; want cpio, gzip, bzip2, xz, lzma, lzo, lz4 or zstd)", head)
}
