package bootloader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"io/fs"
	"os"
	"strings"

	"github.com/capsule-vm/capsule/machine"
)

// Mode is the CPU mode the boot vCPU starts in.
type Mode uint8

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

// Boot-info block written at machine.BootInfoAddr for a unikernel.
const (
	// BootMagic is the first u64 of the boot-info block: the bytes
	// "CAPSULE1" read little-endian.
	BootMagic = 0x31454c5553504143
	// BootInfoSize is the size of the boot-info block in bytes.
	BootInfoSize = 0x38
	// MemMapEntrySize is the size of one memory-map record.
	MemMapEntrySize = 24
)

// LoadUnikernel loads the ELF64 unikernel at path into mem, writes the
// command line, memory map and boot-info block for a guest with cpus
// vCPUs, and returns the entry state. The package documentation describes
// the image requirements and the state at entry. Nothing is written to mem
// unless the image is valid and fits. Errors name the file and wrap one of
// the package's sentinel errors.
func LoadUnikernel(mem *machine.GuestMemory, path string, cmdline string, cpus int) (Entry, error) {
	if mem == nil {
		return Entry{}, fmt.Errorf("kernel %s: no guest memory", path)
	}
	if cpus < 1 {
		return Entry{}, fmt.Errorf("kernel %s: vCPU count %d is not positive", path, cpus)
	}
	if err := checkCmdline(cmdline); err != nil {
		return Entry{}, fmt.Errorf("kernel %s: %w", path, err)
	}
	var maps mappings
	defer maps.release()
	data, err := readImage(path, mem.Size(), ErrNotELF, &maps)
	if err != nil {
		return Entry{}, fmt.Errorf("kernel %s: %w", path, err)
	}
	img, err := ParseELF(data)
	if err != nil {
		return Entry{}, fmt.Errorf("kernel %s: %w", path, err)
	}
	if err := checkUnikernelLayout(mem, img); err != nil {
		return Entry{}, fmt.Errorf("kernel %s: %w", path, err)
	}
	p, err := unikernelPlan(mem, img, cmdline, cpus)
	if err == nil {
		err = p.check(mem)
	}
	if err == nil {
		err = p.apply(mem)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("kernel %s: %w", path, err)
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
	maps.add(data)
	return data, nil
}

// mappings are file mappings to unmap once an image has been loaded. A
// file truncated while mapped faults on access; capsule reads images it
// was just given, before the guest runs, so that window is small.
type mappings struct{ m [][]byte }

func (m *mappings) add(b []byte) { m.m = append(m.m, b) }

func (m *mappings) release() {
	for _, b := range m.m {
		unix.Munmap(b)
	}
	m.m = nil
}

func tooLarge(size, limit uint64) error {
	return fmt.Errorf("%w: file is %d bytes, larger than the %d MiB of guest RAM", ErrBadLayout, size, limit/machine.MiB)
}

func openError(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return ErrNotFound
	}
	return unwrapPath(err)
}

// unwrapPath drops the operation and path of a *fs.PathError: callers
// already name the file.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// checkUnikernelLayout checks img against the guest: every segment linked
// where it is loaded (the guest runs identity-mapped), at or above
// machine.KernelMin, inside one RAM region and below machine.IdentityMapped.
func checkUnikernelLayout(mem *machine.GuestMemory, img *ELFImage) error {
	for _, s := range img.Segments {
		if s.VAddr != s.Addr {
			return fmt.Errorf("%w: segment at physical %#x is linked at virtual %#x; a unikernel runs identity-mapped, the two must be equal",
				ErrBadLayout, s.Addr, s.VAddr)
		}
		if s.Addr < machine.KernelMin {
			return fmt.Errorf("%w: segment [%#x, %#x) starts below %#x", ErrBadLayout, s.Addr, s.End(), machine.KernelMin)
		}
		if s.End() > machine.IdentityMapped || !mem.Contains(s.Addr, s.MemSize) {
			return fmt.Errorf("%w: segment [%#x, %#x) is outside guest RAM (%d MiB)", ErrBadLayout, s.Addr, s.End(), mem.Size()/machine.MiB)
		}
	}
	return nil
}

// unikernelPlan lays out a parsed and checked unikernel: its segments,
// the command line, the memory map and the boot-info block.
func unikernelPlan(mem *machine.GuestMemory, img *ELFImage, cmdline string, cpus int) (*plan, error) {
	p := &plan{
		entry: Entry{
			Mode: Mode64,
			RIP:  img.Entry,
			RSP:  machine.StackTop,
			RDI:  machine.BootInfoAddr,
			RSI:  machine.CmdlineAddr,
		},
		info: Info{Format: FormatUnikernel, KernelAddr: img.Segments[0].Addr, KernelEnd: img.Segments[len(img.Segments)-1].End()},
	}
	for _, s := range img.Segments {
		p.add(s.Addr, s.Data, s.MemSize-s.FileSize)
	}
	p.addCmdline(cmdline)
	n, err := p.addMemMap(mem)
	if err != nil {
		return nil, err
	}
	bi := make([]byte, 0, BootInfoSize)
	for _, v := range []uint64{
		BootMagic,
		machine.CmdlineAddr, uint64(len(cmdline)),
		machine.MemMapAddr, uint64(n),
		uint64(cpus), mem.Size(),
	} {
		bi = binary.LittleEndian.AppendUint64(bi, v)
	}
	p.add(machine.BootInfoAddr, bi, 0)
	return p, nil
}
