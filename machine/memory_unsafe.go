package machine

import (
	"fmt"
	"sync/atomic"
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

// hostAddr is the host virtual address of b's first byte.
func hostAddr(b []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}

// mapAligned maps size bytes of anonymous, lazily allocated memory whose
// start is a multiple of align: it maps align bytes more and unmaps the
// slack at both ends. Release the result with unmap.
func mapAligned(size, align uint64) ([]byte, error) {
	total := uintptr(size + align)
	p, err := unix.MmapPtr(-1, 0, nil, total, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	head := uintptr((align - uint64(uintptr(p))%align) % align)
	start := unsafe.Add(p, head)
	if head > 0 {
		unix.MunmapPtr(p, head)
	}
	if tail := total - head - uintptr(size); tail > 0 {
		unix.MunmapPtr(unsafe.Add(start, size), tail)
	}
	return unsafe.Slice((*byte)(start), size), nil
}

// unmap releases memory from mapAligned.
func unmap(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	return unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(b)), uintptr(len(b)))
}

// atomicWord returns the aligned 32-bit word of guest memory at gpa.
func (m *GuestMemory) atomicWord(gpa uint64) (*uint32, error) {
	if gpa%4 != 0 {
		return nil, fmt.Errorf("guest address %#x: not 4-byte aligned for an atomic access", gpa)
	}
	s, err := m.Slice(gpa, 4)
	if err != nil {
		return nil, err
	}
	return (*uint32)(unsafe.Pointer(unsafe.SliceData(s))), nil
}

// LoadUint32Atomic reads the aligned 32-bit word at gpa with an atomic load,
// ordered against the guest's stores as virtqueue indices need.
func (m *GuestMemory) LoadUint32Atomic(gpa uint64) (uint32, error) {
	w, err := m.atomicWord(gpa)
	if err != nil {
		return 0, err
	}
	return atomic.LoadUint32(w), nil
}

// StoreUint32Atomic writes the aligned 32-bit word at gpa with an atomic
// store: every earlier write to guest memory is visible to the guest
// before it.
func (m *GuestMemory) StoreUint32Atomic(gpa uint64, v uint32) error {
	w, err := m.atomicWord(gpa)
	if err != nil {
		return err
	}
	atomic.StoreUint32(w, v)
	return nil
}

// StoreUint16Atomic writes the aligned 16-bit value at gpa atomically, as
// a compare-and-swap of the 32-bit word around it that leaves its other
// half as it is; like StoreUint32Atomic it orders every earlier write, and
// it also orders every later read (a full barrier on amd64). The whole
// word must lie in guest RAM.
func (m *GuestMemory) StoreUint16Atomic(gpa uint64, v uint16) error {
	if gpa%2 != 0 {
		return fmt.Errorf("guest address %#x: not 2-byte aligned for an atomic access", gpa)
	}
	w, err := m.atomicWord(gpa &^ 3)
	if err != nil {
		return err
	}
	shift := 8 * (gpa % 4) // little-endian: the low half is at the lower address
	mask := uint32(0xffff) << shift
	for {
		old := atomic.LoadUint32(w)
		if atomic.CompareAndSwapUint32(w, old, old&^mask|uint32(v)<<shift) {
			return nil
		}
	}
}
