package bootloader

import "errors"

// Sentinel errors. Every error the loader returns names the file and the
// problem on one line and wraps one of these, so callers can test with
// [errors.Is].
var (
	// ErrNotFound: the image file does not exist.
	ErrNotFound = errors.New("no such file")
	// ErrNotELF: the file is not an ELF file (bad magic, a directory, not
	// a regular file).
	ErrNotELF = errors.New("not an ELF file")
	// ErrUnsupported: a valid ELF file capsule cannot boot: not 64-bit,
	// not x86-64, not little-endian, not ET_EXEC, dynamically linked, too
	// many program headers, no PT_LOAD segment.
	ErrUnsupported = errors.New("unsupported ELF")
	// ErrTruncated: the ELF header, program headers or segment data run
	// past the end of the file.
	ErrTruncated = errors.New("truncated ELF")
	// ErrBadLayout: the image does not fit the guest: a segment outside
	// guest RAM or below machine.KernelMin, overlapping segments, p_filesz
	// above p_memsz, an address range that overflows, an entry point
	// outside the loaded code, a file larger than guest RAM.
	ErrBadLayout = errors.New("bad memory layout")
	// ErrCmdlineTooLong: the command line does not fit in
	// machine.CmdlineMax bytes with its terminating NUL.
	ErrCmdlineTooLong = errors.New("command line too long")
	// ErrBadCmdline: the command line contains a NUL byte.
	ErrBadCmdline = errors.New("bad command line")
)
