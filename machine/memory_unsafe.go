package machine

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// mincore reports which pages of the mapping b are resident: vec gets one
// byte per page, bit 0 set for a resident page.
func mincore(b, vec []byte) error {
	if len(b) == 0 {
		return nil
	}
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), uintptr(unsafe.Pointer(unsafe.SliceData(vec))))
	if errno != 0 {
		return errno
	}
	return nil
}
