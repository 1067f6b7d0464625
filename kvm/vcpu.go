package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// VCPU is one virtual CPU. Run it from a single goroutine locked to its OS
// thread (runtime.LockOSThread); other goroutines may only call Kick.
type VCPU struct {
	id  int
	fd  int
	run []byte // the mmap'd struct kvm_run

	tid    atomic.Int64 // OS thread of the first Run, 0 before
	closed sync.Once

	io   IOExit
	mmio MMIOExit
}

// ID is the vCPU index given to CreateVCPU.
func (c *VCPU) ID() int { return c.id }

// Close unmaps kvm_run and closes the vCPU. Its VM calls it on Close.
func (c *VCPU) Close() error {
	var err error
	c.closed.Do(func() {
		err = errors.Join(unix.Munmap(c.run), unix.Close(c.fd))
	})
	return err
}

// Run enters the guest until the next exit that needs user space and
// returns it. EAGAIN is retried; EINTR (a signal or a [VCPU.Kick]) comes
// back as *InterruptedExit so that the caller can check why it was woken.
// Every other KVM_RUN failure is returned as an error.
//
// Call Run from one OS thread (runtime.LockOSThread): the first call
// records it as the thread Kick signals. (Recording it once, not on every
// call, saves a gettid system call per exit.)
func (c *VCPU) Run() (Exit, error) {
	if c.tid.Load() == 0 {
		c.tid.Store(int64(unix.Gettid()))
	}
	for {
		_, err := ioctl(c.fd, ioctlRun, 0)
		switch err {
		case nil:
			return c.decode()
		case unix.EINTR:
			return &InterruptedExit{}, nil
		case unix.EAGAIN:
			continue
		default:
			return nil, fmt.Errorf("KVM_RUN vcpu %d: %w", c.id, err)
		}
	}
}

// Kick makes the vCPU return from Run with *InterruptedExit as soon as
// possible, and every later Run return at once, until ClearKick. It is safe
// from any goroutine.
func (c *VCPU) Kick() {
	c.run[runImmediateExit] = 1
	if tid := c.tid.Load(); tid > 0 {
		// SIGURG is the signal the Go runtime already expects to arrive
		// spuriously; it interrupts KVM_RUN with EINTR.
		_ = unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
	}
}

// ClearKick undoes [VCPU.Kick] so that Run enters the guest again.
func (c *VCPU) ClearKick() { c.run[runImmediateExit] = 0 }

func (c *VCPU) u8(off int) uint8   { return c.run[off] }
func (c *VCPU) u16(off int) uint16 { return binary.LittleEndian.Uint16(c.run[off:]) }
func (c *VCPU) u32(off int) uint32 { return binary.LittleEndian.Uint32(c.run[off:]) }
func (c *VCPU) u64(off int) uint64 { return binary.LittleEndian.Uint64(c.run[off:]) }

func (c *VCPU) u64s(off, n int) []uint64 {
	n = min(n, 16)
	out := make([]uint64, n)
	for i := range out {
		out[i] = c.u64(off + 8*i)
	}
	return out
}

func (c *VCPU) decode() (Exit, error) {
	u := runUnion
	switch reason := c.u32(runExitReason); reason {
	case exitIO:
		size, count, off := uint64(c.u8(u+1)), uint64(c.u32(u+4)), c.u64(u+8)
		n := size * count
		if size == 0 || off > uint64(len(c.run)) || n > uint64(len(c.run))-off {
			return nil, fmt.Errorf("vcpu %d: KVM_EXIT_IO data (offset %#x, %d bytes) outside kvm_run", c.id, off, n)
		}
		c.io = IOExit{Out: c.u8(u) == 1, Size: uint8(size), Port: c.u16(u + 2), Count: uint32(count), Data: c.run[off : off+n]}
		return &c.io, nil
	case exitMMIO:
		l := c.u32(u + 16)
		if l > 8 {
			return nil, fmt.Errorf("vcpu %d: KVM_EXIT_MMIO length %d", c.id, l)
		}
		c.mmio = MMIOExit{Addr: c.u64(u), Len: l, Write: c.u8(u+20) != 0, Data: c.run[u+8 : u+8+int(l)]}
		return &c.mmio, nil
	case exitHLT:
		return &HaltExit{}, nil
	case exitShutdown:
		return &ShutdownExit{}, nil
	case exitFailEntry:
		return &FailEntryExit{Reason: c.u64(u), CPU: c.u32(u + 8)}, nil
	case exitInternalError:
		return &InternalErrorExit{Suberror: c.u32(u), Data: c.u64s(u+8, int(c.u32(u+4)))}, nil
	case exitSystemEvent:
		return &SystemEventExit{Type: c.u32(u), Data: c.u64s(u+8, int(c.u32(u+4)))}, nil
	case exitIntr:
		return &InterruptedExit{}, nil
	default:
		return &UnknownExit{Reason: reason, HardwareReason: c.u64(u)}, nil
	}
}

// Regs returns the general-purpose registers.
func (c *VCPU) Regs() (Regs, error) {
	var r Regs
	if _, err := ioctlPtr(c.fd, ioctlGetRegs, &r); err != nil {
		return r, fmt.Errorf("KVM_GET_REGS vcpu %d: %w", c.id, err)
	}
	return r, nil
}

// SetRegs sets the general-purpose registers.
func (c *VCPU) SetRegs(r Regs) error {
	if _, err := ioctlPtr(c.fd, ioctlSetRegs, &r); err != nil {
		return fmt.Errorf("KVM_SET_REGS vcpu %d: %w", c.id, err)
	}
	return nil
}

// Sregs returns the special registers.
func (c *VCPU) Sregs() (Sregs, error) {
	var s Sregs
	if _, err := ioctlPtr(c.fd, ioctlGetSregs, &s); err != nil {
		return s, fmt.Errorf("KVM_GET_SREGS vcpu %d: %w", c.id, err)
	}
	return s, nil
}

// SetSregs sets the special registers.
func (c *VCPU) SetSregs(s Sregs) error {
	if _, err := ioctlPtr(c.fd, ioctlSetSregs, &s); err != nil {
		return fmt.Errorf("KVM_SET_SREGS vcpu %d: %w", c.id, err)
	}
	return nil
}

// FPU returns the x87/SSE state.
func (c *VCPU) FPU() (FPU, error) {
	var f FPU
	if _, err := ioctlPtr(c.fd, ioctlGetFPU, &f); err != nil {
		return f, fmt.Errorf("KVM_GET_FPU vcpu %d: %w", c.id, err)
	}
	return f, nil
}

// SetFPU sets the x87/SSE state.
func (c *VCPU) SetFPU(f FPU) error {
	if _, err := ioctlPtr(c.fd, ioctlSetFPU, &f); err != nil {
		return fmt.Errorf("KVM_SET_FPU vcpu %d: %w", c.id, err)
	}
	return nil
}

// LAPIC returns the local APIC state (needs the in-kernel irqchip).
func (c *VCPU) LAPIC() (LAPICState, error) {
	var l LAPICState
	if _, err := ioctlPtr(c.fd, ioctlGetLAPIC, &l); err != nil {
		return l, fmt.Errorf("KVM_GET_LAPIC vcpu %d: %w", c.id, err)
	}
	return l, nil
}

// SetLAPIC sets the local APIC state.
func (c *VCPU) SetLAPIC(l LAPICState) error {
	if _, err := ioctlPtr(c.fd, ioctlSetLAPIC, &l); err != nil {
		return fmt.Errorf("KVM_SET_LAPIC vcpu %d: %w", c.id, err)
	}
	return nil
}

// SetCPUID sets the CPUID leaves the guest sees (KVM_SET_CPUID2).
func (c *VCPU) SetCPUID(entries []CPUIDEntry) error {
	buf := make([]byte, 8+len(entries)*sizeofCPUIDEntry2)
	binary.LittleEndian.PutUint32(buf, uint32(len(entries)))
	copy(buf[8:], entriesBytes(entries))
	if _, err := ioctlBuf(c.fd, ioctlSetCPUID2, buf); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2 vcpu %d (%d entries): %w", c.id, len(entries), err)
	}
	return nil
}

// CPUID returns the CPUID leaves set on the vCPU (KVM_GET_CPUID2).
func (c *VCPU) CPUID() ([]CPUIDEntry, error) {
	for n := 128; n <= 4096; n *= 2 {
		e, err := getCPUID(c.fd, ioctlGetCPUID2, n)
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_CPUID2 vcpu %d: %w", c.id, err)
		}
		return e, nil
	}
	return nil, fmt.Errorf("KVM_GET_CPUID2 vcpu %d: more than 4096 entries", c.id)
}

func msrBuf(msrs []MSR) []byte {
	buf := make([]byte, 8+len(msrs)*sizeofMSREntry)
	binary.LittleEndian.PutUint32(buf, uint32(len(msrs)))
	copy(buf[8:], entriesBytes(msrs))
	return buf
}

// SetMSRs writes model-specific registers; all must be accepted.
func (c *VCPU) SetMSRs(msrs []MSR) error {
	if len(msrs) == 0 {
		return nil
	}
	n, err := ioctlBuf(c.fd, ioctlSetMSRs, msrBuf(msrs))
	if err != nil {
		return fmt.Errorf("KVM_SET_MSRS vcpu %d: %w", c.id, err)
	}
	if int(n) != len(msrs) {
		return fmt.Errorf("KVM_SET_MSRS vcpu %d: MSR %#x refused", c.id, msrs[n].Index)
	}
	return nil
}

// MSRs reads the MSRs whose indices are given.
func (c *VCPU) MSRs(indices ...uint32) ([]MSR, error) {
	msrs := make([]MSR, len(indices))
	for i, idx := range indices {
		msrs[i].Index = idx
	}
	if len(msrs) == 0 {
		return msrs, nil
	}
	buf := msrBuf(msrs)
	n, err := ioctlBuf(c.fd, ioctlGetMSRs, buf)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_MSRS vcpu %d: %w", c.id, err)
	}
	if int(n) != len(msrs) {
		return nil, fmt.Errorf("KVM_GET_MSRS vcpu %d: MSR %#x unreadable", c.id, indices[n])
	}
	copy(entriesBytes(msrs), buf[8:])
	return msrs, nil
}

// MP states for [VCPU.SetMPState].
const (
	MPStateRunnable      = 0
	MPStateUninitialized = 1
	MPStateInitReceived  = 2
	MPStateHalted        = 3
	MPStateSIPIReceived  = 4
)

// MPState returns the vCPU's multiprocessing state.
func (c *VCPU) MPState() (uint32, error) {
	var s uint32
	if _, err := ioctlPtr(c.fd, ioctlGetMPState, &s); err != nil {
		return 0, fmt.Errorf("KVM_GET_MP_STATE vcpu %d: %w", c.id, err)
	}
	return s, nil
}

// SetMPState sets the vCPU's multiprocessing state.
func (c *VCPU) SetMPState(s uint32) error {
	if _, err := ioctlPtr(c.fd, ioctlSetMPState, &s); err != nil {
		return fmt.Errorf("KVM_SET_MP_STATE vcpu %d: %w", c.id, err)
	}
	return nil
}

// TSCKHz returns the vCPU's TSC frequency in kHz (KVM_GET_TSC_KHZ).
func (c *VCPU) TSCKHz() (uint32, error) {
	r, err := ioctl(c.fd, ioctlGetTSCKHz, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_TSC_KHZ vcpu %d: %w", c.id, err)
	}
	return uint32(r), nil
}
