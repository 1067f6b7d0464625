package kvm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// VM is one KVM virtual machine. It owns its file descriptor and every
// [VCPU] it creates.
type VM struct {
	fd       int
	mmapSize int

	mu    sync.Mutex
	vcpus []*VCPU
}

// Close closes every vCPU of the VM and then the VM itself.
func (vm *VM) Close() error {
	vm.mu.Lock()
	vcpus := vm.vcpus
	vm.vcpus = nil
	vm.mu.Unlock()
	var errs []error
	for _, c := range vcpus {
		errs = append(errs, c.Close())
	}
	if vm.fd >= 0 {
		errs = append(errs, unix.Close(vm.fd))
		vm.fd = -1
	}
	return errors.Join(errs...)
}

// MemoryFlags are KVM memory-slot flags.
type MemoryFlags uint32

const (
	MemLogDirtyPages MemoryFlags = 1 << 0
	MemReadonly      MemoryFlags = 1 << 1
)

// SetUserMemoryRegion maps host memory mem (which must stay mapped while the
// VM uses it, and be page aligned) into the guest at guest-physical gpa.
func (vm *VM) SetUserMemoryRegion(slot uint32, flags MemoryFlags, gpa uint64, mem []byte) error {
	if len(mem) == 0 || len(mem)%4096 != 0 || gpa%4096 != 0 {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d: gpa %#x size %#x not page aligned", slot, gpa, len(mem))
	}
	r := userspaceMemoryRegion{
		Slot:          slot,
		Flags:         uint32(flags),
		GuestPhysAddr: gpa,
		MemorySize:    uint64(len(mem)),
		UserspaceAddr: hostAddr(mem),
	}
	if _, err := ioctlPtr(vm.fd, ioctlSetUserMemoryRegion, &r); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d gpa %#x size %#x: %w", slot, gpa, len(mem), err)
	}
	return nil
}

// SetTSSAddr places the three-page TSS region Intel VT-x needs for real
// mode; it must not overlap guest RAM or MMIO.
func (vm *VM) SetTSSAddr(addr uint32) error {
	if _, err := ioctl(vm.fd, ioctlSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR %#x: %w", addr, err)
	}
	return nil
}

// SetIdentityMapAddr places the one-page identity-map table VT-x needs.
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	if _, err := ioctlPtr(vm.fd, ioctlSetIdentityMapAddr, &addr); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR %#x: %w", addr, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PIC, IOAPIC and local APICs. Call it
// before creating vCPUs.
func (vm *VM) CreateIRQChip() error {
	if _, err := ioctl(vm.fd, ioctlCreateIRQChip, 0); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// CreatePIT2 creates the in-kernel i8254 timer.
func (vm *VM) CreatePIT2() error {
	var c pitConfig
	if _, err := ioctlPtr(vm.fd, ioctlCreatePIT2, &c); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// SetIRQLine drives the in-kernel irqchip's input irq high or low.
func (vm *VM) SetIRQLine(irq uint32, high bool) error {
	l := irqLevel{IRQ: irq}
	if high {
		l.Level = 1
	}
	if _, err := ioctlPtr(vm.fd, ioctlIRQLine, &l); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE %d: %w", irq, err)
	}
	return nil
}

// PulseIRQ raises and lowers an edge-triggered interrupt line.
func (vm *VM) PulseIRQ(irq uint32) error {
	if err := vm.SetIRQLine(irq, true); err != nil {
		return err
	}
	return vm.SetIRQLine(irq, false)
}

// IOEventSpace says whether an ioeventfd watches port I/O or MMIO.
type IOEventSpace int

const (
	IOEventMMIO IOEventSpace = iota
	IOEventPIO
)

// IOEvent describes an ioeventfd: a guest write of Len bytes to Addr (of
// Value, when Match is set) signals the eventfd FD without a vCPU exit.
type IOEvent struct {
	Space IOEventSpace
	Addr  uint64
	Len   uint32 // 0 (any width), 1, 2, 4 or 8
	Match bool
	Value uint64
	FD    int
}

func (e IOEvent) raw() ioEventFD {
	r := ioEventFD{DataMatch: e.Value, Addr: e.Addr, Len: e.Len, FD: int32(e.FD)}
	if e.Match {
		r.Flags |= ioEventFDFlagDataMatch
	}
	if e.Space == IOEventPIO {
		r.Flags |= ioEventFDFlagPIO
	}
	return r
}

// AddIOEventFD registers e.
func (vm *VM) AddIOEventFD(e IOEvent) error {
	r := e.raw()
	if _, err := ioctlPtr(vm.fd, ioctlIOEventFD, &r); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD %#x: %w", e.Addr, err)
	}
	return nil
}

// RemoveIOEventFD unregisters e, which must match a registered one exactly.
func (vm *VM) RemoveIOEventFD(e IOEvent) error {
	r := e.raw()
	r.Flags |= ioEventFDFlagDeassign
	if _, err := ioctlPtr(vm.fd, ioctlIOEventFD, &r); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD deassign %#x: %w", e.Addr, err)
	}
	return nil
}

// AddIRQFD makes a write to the eventfd fd raise interrupt gsi.
func (vm *VM) AddIRQFD(fd int, gsi uint32) error {
	r := irqFD{FD: uint32(fd), GSI: gsi}
	if _, err := ioctlPtr(vm.fd, ioctlIRQFD, &r); err != nil {
		return fmt.Errorf("KVM_IRQFD gsi %d: %w", gsi, err)
	}
	return nil
}

// RemoveIRQFD undoes [VM.AddIRQFD].
func (vm *VM) RemoveIRQFD(fd int, gsi uint32) error {
	r := irqFD{FD: uint32(fd), GSI: gsi, Flags: irqFDFlagDeassign}
	if _, err := ioctlPtr(vm.fd, ioctlIRQFD, &r); err != nil {
		return fmt.Errorf("KVM_IRQFD deassign gsi %d: %w", gsi, err)
	}
	return nil
}

// Clock returns the VM's kvmclock (KVM_GET_CLOCK).
func (vm *VM) Clock() (ClockData, error) {
	var c ClockData
	if _, err := ioctlPtr(vm.fd, ioctlGetClock, &c); err != nil {
		return c, fmt.Errorf("KVM_GET_CLOCK: %w", err)
	}
	return c, nil
}

// SetClock sets the VM's kvmclock (KVM_SET_CLOCK); only Clock (ns) is used.
func (vm *VM) SetClock(ns uint64) error {
	c := ClockData{Clock: ns}
	if _, err := ioctlPtr(vm.fd, ioctlSetClock, &c); err != nil {
		return fmt.Errorf("KVM_SET_CLOCK: %w", err)
	}
	return nil
}

// CreateVCPU creates vCPU id and maps its kvm_run area. The VM closes it.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := ioctl(vm.fd, ioctlCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	run, err := unix.Mmap(int(fd), 0, vm.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("mmap kvm_run of vCPU %d: %w", id, err)
	}
	c := &VCPU{id: id, fd: int(fd), run: run}
	vm.mu.Lock()
	vm.vcpus = append(vm.vcpus, c)
	vm.mu.Unlock()
	return c, nil
}

// getCPUID runs a KVM_GET_*CPUID* ioctl with room for n entries.
// KVM_GET_CPUID2 does not write the entry count back on success, so the
// buffer is pre-filled with 0xff bytes and the entries KVM wrote are those
// before the first untouched one (KVM zeroes an entry's padding, so no
// real entry is all ones).
func getCPUID(fd int, req uintptr, n int) ([]CPUIDEntry, error) {
	buf := make([]byte, 8+n*sizeofCPUIDEntry2)
	for i := range buf {
		buf[i] = 0xff
	}
	binary.LittleEndian.PutUint32(buf, uint32(n))
	binary.LittleEndian.PutUint32(buf[4:], 0)
	if _, err := ioctlBuf(fd, req, buf); err != nil {
		return nil, err
	}
	got := min(int(binary.LittleEndian.Uint32(buf)), n)
	untouched := bytes.Repeat([]byte{0xff}, sizeofCPUIDEntry2)
	for i := range got {
		if bytes.Equal(buf[8+i*sizeofCPUIDEntry2:8+(i+1)*sizeofCPUIDEntry2], untouched) {
			got = i
			break
		}
	}
	e := make([]CPUIDEntry, got)
	copy(entriesBytes(e), buf[8:])
	return e, nil
}
