package kvm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl issues an ioctl whose argument is a plain integer.
func ioctl(fd int, req uintptr, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// ioctlPtr issues an ioctl whose argument points at *p.
func ioctlPtr[T any](fd int, req uintptr, p *T) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(p)))
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// ioctlBuf issues an ioctl whose argument is a variable-length structure
// held in buf (a header followed by entries).
func ioctlBuf(fd int, req uintptr, buf []byte) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// hostAddr is the host virtual address of mem's first byte, as
// KVM_SET_USER_MEMORY_REGION wants it. mem must be an mmap'd region that
// outlives its registration.
func hostAddr(mem []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem))))
}

// sizeOf reports the in-memory size of a value, for the ABI tests.
func sizeOf[T any]() uintptr {
	var v T
	return unsafe.Sizeof(v)
}

// entriesBytes views a slice of fixed-size entries as bytes so that it can be
// copied to or from a variable-length ioctl buffer.
func entriesBytes[T any](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	var v T
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), len(s)*int(unsafe.Sizeof(v)))
}
