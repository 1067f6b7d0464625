package bootloader

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error the loader returns names the file and the
// problem on one line and wraps one of these, so callers can test with
// [errors.Is]. Errors about a bzImage or a Multiboot image wrap
// ErrUnsupported, ErrTruncated and ErrBadLayout without repeating their
// ELF wording ("unsupported bzImage: ..." rather than "unsupported ELF").
var (
	// ErrNotFound: the image file does not exist.
	ErrNotFound = errors.New("no such file")
	// ErrNotELF: the file is not an ELF file (bad magic, a directory, not
	// a regular file).
	ErrNotELF = errors.New("not an ELF file")
	// ErrNotKernel: [Load] recognised no kernel format in the file: no
	// bzImage setup header, no ELF header, no Multiboot header (or it is
	// a directory or not a regular file). An error that wraps ErrNotKernel
	// also matches ErrNotELF, so callers that test for ErrNotELF keep
	// working when they move from [LoadUnikernel] to [Load].
	ErrNotKernel error = notKernelError{}
	// ErrUnsupported: a valid image capsule cannot boot: for an ELF file
	// not 64-bit, not x86-64, not little-endian, not ET_EXEC, dynamically
	// linked, too many program headers, no PT_LOAD segment; for a bzImage
	// a boot protocol older than 2.06, no 64-bit entry point, a kernel
	// that does not load high; for Multiboot a required feature flag
	// capsule does not know.
	ErrUnsupported = errors.New("unsupported ELF")
	// ErrTruncated: a header, a table or the data it describes runs past
	// the end of the file (ELF headers and segments, ELF notes, the
	// bzImage setup area and payload, Multiboot load addresses).
	ErrTruncated = errors.New("truncated ELF")
	// ErrBadLayout: the image does not fit the guest: a segment outside
	// guest RAM or below machine.KernelMin, overlapping segments, p_filesz
	// above p_memsz, an address range that overflows, an entry point
	// outside the loaded code, a file larger than guest RAM, a kernel or
	// initrd that does not fit in guest RAM, malformed ELF notes or
	// Multiboot address fields.
	ErrBadLayout = errors.New("bad memory layout")
	// ErrCmdlineTooLong: the command line does not fit in
	// machine.CmdlineMax bytes with its terminating NUL, or is longer
	// than a Linux kernel's cmdline_size.
	ErrCmdlineTooLong = errors.New("command line too long")
	// ErrBadCmdline: the command line contains a NUL byte.
	ErrBadCmdline = errors.New("bad command line")
	// ErrBadInitrd: the initrd cannot be used: an empty file, a directory
	// or other non-regular file, or for a Linux bzImage or PVH vmlinux
	// not a (compressed) cpio archive.
	ErrBadInitrd = errors.New("not a usable initrd")
	// ErrBadHeader: a Multiboot header with a bad checksum, or a bzImage
	// setup header that is malformed (bad boot flag, header length).
	ErrBadHeader = errors.New("bad kernel header")
	// ErrChanged: the kernel or initrd file changed (was truncated) while
	// capsule was reading it.
	ErrChanged = errors.New("changed while being read")
)

// errEmpty is the error for a kernel file of 0 bytes: it is no kernel.
var errEmpty = errorf(ErrNotKernel, "empty file (0 bytes), not a kernel")

// notKernelError is the type of ErrNotKernel: it also matches ErrNotELF.
type notKernelError struct{}

func (notKernelError) Error() string { return "not a Linux bzImage, ELF or Multiboot kernel" }

func (notKernelError) Is(target error) bool { return target == ErrNotELF }

// plainError is an error whose message is exactly msg but which still
// wraps a sentinel for errors.Is: for messages whose wording is fixed.
type plainError struct {
	msg string
	err error
}

// errorf formats a message that wraps sentinel without quoting its text.
func errorf(sentinel error, format string, args ...any) error {
	return &plainError{msg: fmt.Sprintf(format, args...), err: sentinel}
}

func (e *plainError) Error() string { return e.msg }
func (e *plainError) Unwrap() error { return e.err }
