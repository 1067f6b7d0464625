package bootloader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"io/fs"
	"os"
	"reflect"
	"runtime/debug"
	"strings"

	"github.com/capsule-vm/capsule/internal/patherr"
	"github.com/capsule-vm/capsule/machine"
)

// Mode is the CPU mode the boot vCPU starts in.
type Mode uint8

// elf64KernelAlignment is kernel_alignment in the zero page of an ELF64
// kernel.
const elf64KernelAlignment = 0x1000000

const (
	_ Mode = iota // the zero Mode is invalid, so a zero Entry is not bootable
	// Mode64 is 64-bit long mode with paging on and the first
	// machine.IdentityMapped bytes identity-mapped (machine.SetupLongMode,
	// machine.LongModeSregs).
	Mode64
	// Mode32 is 32-bit protected mode with paging off: flat 4 GiB code
	// and data segments (base 0, limit 0xffffffff, 32-bit), CR0 = PE|ET,
	// CR4 = 0, EFER = 0, interrupts off. PVH and Multiboot kernels start
	// in it.
	Mode32
)

func (m Mode) String() string {
	switch m {
	case Mode64:
		return "64-bit long mode"
	case Mode32:
		return "32-bit protected mode"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// Entry is the CPU state the boot vCPU starts in: its mode and the
// general-purpose registers that matter. All other general-purpose
// registers are zero and RFLAGS is 0x2.
type Entry struct {
	Mode                         Mode
	RIP, RSP, RAX, RBX, RSI, RDI uint64
}

// The capsule boot-info block, written at machine.CapsuleInfoAddr for a
// kernel entered from an ELF64 file (RDI at entry).
const (
	// BootMagic is the first u64 of the boot-info block: the bytes
	// "CAPSULE1" read little-endian.
	BootMagic = 0x31454c5553504143
	// BootInfoSize is the size of the boot-info block in bytes: nine
	// u64s.
	BootInfoSize = 0x48
	// MemMapEntrySize is the size of one memory-map record.
	MemMapEntrySize = 24
)

// LoadUnikernel loads the ELF64 kernel at path into mem, without an
// initrd, as [Load] loads an ELF64 file with neither a PVH note nor a
// Multiboot header, and returns the entry state. The package documentation
// describes the image requirements and the state at entry. Nothing is
// written to mem unless the image is valid and fits. Errors name the file
// and wrap one of the package's sentinel errors.
func LoadUnikernel(mem *machine.GuestMemory, path string, cmdline string, cpus int) (_ Entry, err error) {
	cfg := Config{Kernel: path, Cmdline: cmdline, CPUs: cpus}
	if mem == nil {
		return Entry{}, kernelErr(cfg, errors.New("no guest memory"))
	}
	if cpus < 1 {
		return Entry{}, kernelErr(cfg, fmt.Errorf("vCPU count %d is not positive", cpus))
	}
	if err := checkCmdline(cmdline); err != nil {
		return Entry{}, kernelErr(cfg, err)
	}
	var maps mappings
	defer maps.release()
	defer maps.recoverFault(cfg, &err)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	data, err := readImage(path, mem.Size(), ErrNotELF, &maps)
	if err == nil && len(data) == 0 {
		err = errEmpty
	}
	if err != nil {
		return Entry{}, kernelErr(cfg, err)
	}
	img, err := parseELF64(mem, data)
	if err != nil {
		return Entry{}, kernelErr(cfg, err)
	}
	p, err := prepareELF64(mem, img, cfg, func() (*initrdFile, error) { return nil, nil })
	if err == nil {
		err = p.check(mem)
		if err == nil {
			err = p.apply(mem)
		}
		if err != nil {
			err = kernelErr(cfg, err)
		}
	}
	if err != nil {
		return Entry{}, err
	}
	return p.entry, nil
}

// checkCmdline checks that cmdline fits at machine.CmdlineAddr with its
// NUL and holds no NUL itself.
func checkCmdline(cmdline string) error {
	if len(cmdline) > machine.CmdlineMax-1 {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrCmdlineTooLong, len(cmdline), machine.CmdlineMax-1)
	}
	if i := strings.IndexByte(cmdline, 0); i >= 0 {
		return fmt.Errorf("%w: NUL byte at offset %d", ErrBadCmdline, i)
	}
	return nil
}

// readImage maps a regular file of at most limit bytes read-only into
// memory and records the mapping in maps, whose release unmaps it. Mapping
// instead of reading spares a copy and leaves no file-sized garbage in the
// heap. A directory or other non-regular file is an error wrapping
// notRegular.
func readImage(path string, limit uint64, notRegular error, maps *mappings) ([]byte, error) {
	// Stat before opening: opening a FIFO would block.
	if st, err := os.Stat(path); err != nil {
		return nil, openError(err)
	} else if !st.Mode().IsRegular() && !st.IsDir() {
		return nil, fmt.Errorf("%w: not a regular file (%s)", notRegular, st.Mode().Type())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, openError(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, openError(err)
	}
	switch {
	case st.IsDir():
		return nil, fmt.Errorf("%w: is a directory", notRegular)
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("%w: not a regular file (%s)", notRegular, st.Mode().Type())
	case st.Size() < 0 || uint64(st.Size()) > limit:
		return nil, tooLarge(uint64(st.Size()), limit)
	case st.Size() == 0:
		return []byte{}, nil
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map: %w", err)
	}
	maps.add(path, data)
	if afterMap != nil {
		afterMap(path)
	}
	return data, nil
}

// afterMap, when set (by tests), runs after readImage maps a file.
var afterMap func(path string)

// mappings are file mappings to unmap once an image has been loaded. A
// file truncated while mapped faults (SIGBUS) on the next access past its
// new end, wherever the loader is; the loaders therefore run with
// debug.SetPanicOnFault, and recoverFault turns a fault inside a mapping
// into an error naming the file.
type mappings struct{ m []mapping }

type mapping struct {
	path string
	b    []byte
}

func (m *mappings) add(path string, b []byte) { m.m = append(m.m, mapping{path, b}) }

func (m *mappings) release() {
	for _, x := range m.m {
		unix.Munmap(x.b)
	}
	m.m = nil
}

// recoverFault, deferred by a loader (after release, so that it runs
// first) that turned faults into panics, makes a memory fault inside one
// of the mappings the loader's error: "kernel P: changed while being
// read" (or "initrd P: ..."). Any other panic goes on.
func (m *mappings) recoverFault(cfg Config, err *error) {
	r := recover()
	if r == nil {
		return
	}
	if f, ok := r.(interface{ Addr() uintptr }); ok {
		for _, x := range m.m {
			start := reflect.ValueOf(x.b).Pointer()
			if f.Addr() >= start && f.Addr()-start < uintptr(len(x.b)) {
				what := "initrd"
				if x.path == cfg.Kernel {
					what = "kernel"
				}
				*err = errorf(ErrChanged, "%s %s: changed while being read", what, x.path)
				return
			}
		}
	}
	// invariant: a panic that is not a fault in the loader's own mappings
	// is a bug of capsule's, not guest or user data: it goes on as it was.
	panic(r)
}

func tooLarge(size, limit uint64) error {
	return fmt.Errorf("%w: file is %d bytes, larger than the %d MiB of guest RAM", ErrBadLayout, size, limit/machine.MiB)
}

func openError(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return ErrNotFound
	}
	return patherr.Unwrap(err)
}

// parseELF64 parses an ELF64 kernel and checks that its segments lie in
// the low RAM the boot page tables identity-map, at or above
// machine.KernelMin.
func parseELF64(mem *machine.GuestMemory, data []byte) (*ELFImage, error) {
	img, err := ParseELF(data)
	if err != nil {
		return nil, err
	}
	if err := checkPhysSegments(mem, img.Segments); err != nil {
		return nil, err
	}
	return img, nil
}

// prepareELF64 lays out a parsed and checked ELF64 kernel for the 64-bit entry: its
// segments at their physical addresses, the initrd, the command line, the
// memory map, the zero page at machine.BootInfoAddr (RSI) and the capsule
// boot-info block at machine.CapsuleInfoAddr (RDI).
func prepareELF64(mem *machine.GuestMemory, img *ELFImage, cfg Config, readInitrd func() (*initrdFile, error)) (*plan, error) {
	if err := checkCmdline(cfg.Cmdline); err != nil {
		return nil, kernelErr(cfg, err)
	}
	p := &plan{
		entry: Entry{
			Mode: Mode64,
			RIP:  img.Entry,
			RSP:  machine.StackTop,
			RSI:  machine.BootInfoAddr,
			RDI:  machine.CapsuleInfoAddr,
		},
		info: Info{Format: FormatUnikernel, KernelAddr: img.Segments[0].Addr, KernelEnd: img.Segments[len(img.Segments)-1].End()},
	}
	for _, s := range img.Segments {
		p.add(s.Addr, s.Data, s.MemSize-s.FileSize)
	}
	if err := p.placeInitrd(mem, cfg, readInitrd, machine.MMIOGapStart); err != nil {
		return nil, err
	}
	p.addCmdline(cfg.Cmdline)
	n, err := p.addMemMap(mem)
	if err != nil {
		return nil, kernelErr(cfg, err)
	}

	// The zero page as Firecracker fills it for an ELF vmlinux: the boot
	// flag and header magic a kernel checks, kernel_alignment (16 MiB, as
	// Firecracker gives it), the loader fields, and cmdline_size the
	// bytes at cmd_line_ptr, NUL included.
	zp := make([]byte, ZeroPageSize)
	le := binary.LittleEndian
	le.PutUint16(zp[bzBootFlag:], bzBootFlagValue)
	copy(zp[bzHeaderMagic:], bzMagic)
	le.PutUint32(zp[bzKernelAlignment:], elf64KernelAlignment)
	le.PutUint32(zp[bzCmdlineSize:], uint32(len(cfg.Cmdline)+1))
	if err := putLoaderFields(zp, mem, p.info); err != nil {
		return nil, kernelErr(cfg, err)
	}
	p.add(machine.BootInfoAddr, zp, 0)

	bi := make([]byte, 0, BootInfoSize)
	for _, v := range []uint64{
		BootMagic,
		machine.CmdlineAddr, uint64(len(cfg.Cmdline)),
		machine.MemMapAddr, uint64(n),
		uint64(cfg.CPUs), mem.Size(),
		p.info.InitrdAddr, p.info.InitrdSize,
	} {
		bi = le.AppendUint64(bi, v)
	}
	p.add(machine.CapsuleInfoAddr, bi, 0)
	return p, nil
}
