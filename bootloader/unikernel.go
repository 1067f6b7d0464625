package bootloader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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
)

func (m Mode) String() string {
	switch m {
	case Mode64:
		return "64-bit long mode"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// Entry is the CPU state the boot vCPU starts in.
type Entry struct {
	Mode               Mode
	RIP, RSP, RDI, RSI uint64
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
	data, err := readImage(path, mem.Size())
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
	if err := writeSegments(mem, img); err != nil {
		return Entry{}, fmt.Errorf("kernel %s: %w", path, err)
	}
	if err := writeBootInfo(mem, cmdline, cpus); err != nil {
		return Entry{}, fmt.Errorf("kernel %s: %w", path, err)
	}
	return Entry{
		Mode: Mode64,
		RIP:  img.Entry,
		RSP:  machine.StackTop,
		RDI:  machine.BootInfoAddr,
		RSI:  machine.CmdlineAddr,
	}, nil
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

// readImage reads a regular file of at most limit bytes.
func readImage(path string, limit uint64) ([]byte, error) {
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
		return nil, fmt.Errorf("%w: is a directory", ErrNotELF)
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("%w: not a regular file (%s)", ErrNotELF, st.Mode().Type())
	case st.Size() < 0 || uint64(st.Size()) > limit:
		return nil, tooLarge(uint64(st.Size()), limit)
	}
	// The file may have grown since Stat: read at most one byte past the
	// limit to notice.
	data, err := io.ReadAll(io.LimitReader(f, int64(min(limit, 1<<62))+1))
	if err != nil {
		return nil, fmt.Errorf("read: %w", unwrapPath(err))
	}
	if uint64(len(data)) > limit {
		return nil, tooLarge(uint64(len(data)), limit)
	}
	return data, nil
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

// writeSegments copies each segment's file bytes and zeroes its bss.
func writeSegments(mem *machine.GuestMemory, img *ELFImage) error {
	for _, s := range img.Segments {
		if err := mem.WriteAt(s.Data, s.Addr); err != nil {
			return fmt.Errorf("write segment at %#x: %w", s.Addr, err)
		}
		if err := mem.Zero(s.Addr+s.FileSize, s.MemSize-s.FileSize); err != nil {
			return fmt.Errorf("zero bss at %#x: %w", s.Addr+s.FileSize, err)
		}
	}
	return nil
}

// writeBootInfo writes the command line, the memory map and the boot-info
// block that points at both.
func writeBootInfo(mem *machine.GuestMemory, cmdline string, cpus int) error {
	if err := mem.WriteAt(append([]byte(cmdline), 0), machine.CmdlineAddr); err != nil {
		return fmt.Errorf("write command line: %w", err)
	}
	e820 := machine.E820(mem)
	if machine.MemMapAddr+len(e820)*MemMapEntrySize > machine.PML4Addr {
		return fmt.Errorf("memory map of %d entries does not fit below %#x", len(e820), machine.PML4Addr)
	}
	mm := make([]byte, 0, len(e820)*MemMapEntrySize)
	for _, e := range e820 {
		mm = binary.LittleEndian.AppendUint64(mm, e.Addr)
		mm = binary.LittleEndian.AppendUint64(mm, e.Size)
		mm = binary.LittleEndian.AppendUint32(mm, e.Type)
		mm = binary.LittleEndian.AppendUint32(mm, 0)
	}
	if err := mem.WriteAt(mm, machine.MemMapAddr); err != nil {
		return fmt.Errorf("write memory map: %w", err)
	}
	bi := make([]byte, 0, BootInfoSize)
	for _, v := range []uint64{
		BootMagic,
		machine.CmdlineAddr, uint64(len(cmdline)),
		machine.MemMapAddr, uint64(len(e820)),
		uint64(cpus), mem.Size(),
	} {
		bi = binary.LittleEndian.AppendUint64(bi, v)
	}
	if err := mem.WriteAt(bi, machine.BootInfoAddr); err != nil {
		return fmt.Errorf("write boot info: %w", err)
	}
	return nil
}
