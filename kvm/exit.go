package kvm

import "fmt"

// Exit is why [VCPU.Run] returned. The concrete types are *IOExit,
// *MMIOExit, *HaltExit, *ShutdownExit, *FailEntryExit, *InternalErrorExit,
// *SystemEventExit, *InterruptedExit and *UnknownExit. The values, and the
// Data slices of IO and MMIO exits, belong to the vCPU and are valid only
// until its next Run.
type Exit interface {
	fmt.Stringer
	isExit()
}

// IOExit is a guest IN or OUT instruction (KVM_EXIT_IO). Data holds
// Size*Count bytes; for an OUT they are the bytes written, for an IN the
// handler fills them in before the next Run.
type IOExit struct {
	Port  uint16
	Size  uint8 // 1, 2 or 4
	Out   bool
	Count uint32 // >1 for REP INS/OUTS
	Data  []byte
}

// MMIOExit is a guest access to an address backed by no memory slot
// (KVM_EXIT_MMIO). Data has Len bytes; for a read, fill it in.
type MMIOExit struct {
	Addr  uint64
	Len   uint32
	Write bool
	Data  []byte
}

// HaltExit is a HLT with no in-kernel irqchip to wait for an interrupt.
type HaltExit struct{}

// ShutdownExit is a triple fault (KVM_EXIT_SHUTDOWN).
type ShutdownExit struct{}

// FailEntryExit means the hardware refused to enter the guest: its state is
// invalid (KVM_EXIT_FAIL_ENTRY).
type FailEntryExit struct {
	Reason uint64 // hardware_entry_failure_reason
	CPU    uint32
}

// InternalErrorExit is KVM_EXIT_INTERNAL_ERROR, typically an instruction
// KVM could not emulate.
type InternalErrorExit struct {
	Suberror uint32
	Data     []uint64
}

// System event types of a [SystemEventExit].
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
)

// SystemEventExit is KVM_EXIT_SYSTEM_EVENT (shutdown, reset, crash).
type SystemEventExit struct {
	Type uint32
	Data []uint64
}

// InterruptedExit means KVM_RUN returned EINTR: a signal arrived or the vCPU
// was kicked (see [VCPU.Kick]).
type InterruptedExit struct{}

// UnknownExit is an exit reason this package does not decode.
type UnknownExit struct {
	Reason         uint32
	HardwareReason uint64
}

func (*IOExit) isExit()            {}
func (*MMIOExit) isExit()          {}
func (*HaltExit) isExit()          {}
func (*ShutdownExit) isExit()      {}
func (*FailEntryExit) isExit()     {}
func (*InternalErrorExit) isExit() {}
func (*SystemEventExit) isExit()   {}
func (*InterruptedExit) isExit()   {}
func (*UnknownExit) isExit()       {}

func (e *IOExit) String() string {
	dir := "in"
	if e.Out {
		dir = "out"
	}
	return fmt.Sprintf("io %s port %#x size %d count %d", dir, e.Port, e.Size, e.Count)
}

func (e *MMIOExit) String() string {
	dir := "read"
	if e.Write {
		dir = "write"
	}
	return fmt.Sprintf("mmio %s %#x len %d", dir, e.Addr, e.Len)
}

func (*HaltExit) String() string     { return "hlt" }
func (*ShutdownExit) String() string { return "shutdown (triple fault)" }
func (e *FailEntryExit) String() string {
	return fmt.Sprintf("fail entry: hardware reason %#x on cpu %d", e.Reason, e.CPU)
}
func (e *InternalErrorExit) String() string {
	return fmt.Sprintf("internal error: suberror %d data %#x", e.Suberror, e.Data)
}
func (e *SystemEventExit) String() string {
	name := map[uint32]string{SystemEventShutdown: "shutdown", SystemEventReset: "reset", SystemEventCrash: "crash"}[e.Type]
	if name == "" {
		name = fmt.Sprint(e.Type)
	}
	return "system event " + name
}
func (*InterruptedExit) String() string { return "interrupted" }
func (e *UnknownExit) String() string {
	return fmt.Sprintf("unhandled exit reason %d (hardware reason %#x)", e.Reason, e.HardwareReason)
}
