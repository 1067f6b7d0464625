package virtio

import "github.com/capsule-vm/capsule/machine"

// Type is a virtio device ID (virtio 1.2, 5).
type Type uint32

// Device types capsule implements.
const (
	TypeNet   Type = 1
	TypeBlock Type = 2
	TypeRNG   Type = 4
	TypeP9    Type = 9
	TypeVsock Type = 19
)

func (t Type) String() string {
	switch t {
	case TypeNet:
		return "virtio-net"
	case TypeBlock:
		return "virtio-blk"
	case TypeRNG:
		return "virtio-rng"
	case TypeP9:
		return "virtio-9p"
	case TypeVsock:
		return "virtio-vsock"
	}
	return "virtio-unknown"
}

// Feature bits that are not device-specific (virtio 1.2, 6).
const (
	FeatureIndirectDesc = 1 << 28
	FeatureEventIdx     = 1 << 29
	FeatureVersion1     = 1 << 32
)

// Device is what a virtio device implements; a [MMIO] transport drives it.
// The transport calls ReadConfig, WriteConfig, Activate and Reset with its
// own lock held, never concurrently.
type Device interface {
	Type() Type
	// Features are the device-specific feature bits it offers; the
	// transport adds FeatureVersion1, FeatureIndirectDesc and
	// FeatureEventIdx (so a device must call Queue.ArmNotify before it
	// waits for a kick).
	Features() uint64
	// QueueMaxSizes gives each queue's maximum size, a power of two.
	QueueMaxSizes() []uint16
	// ReadConfig fills p from the device configuration space at off; bytes
	// beyond its end read as zero. WriteConfig writes to it; the device
	// ignores writes to read-only fields.
	ReadConfig(off uint64, p []byte)
	WriteConfig(off uint64, p []byte)
	// Activate starts the device once the driver set DRIVER_OK and every
	// queue was validated. It starts the device's goroutines and returns.
	Activate(a Activation) error
	// Reset stops the device's goroutines, waits for them and forgets the
	// activation, so that it can be activated again.
	Reset()
}

// Activation is what a device works with between Activate and Reset.
type Activation struct {
	Mem      *machine.GuestMemory
	Features uint64 // negotiated
	// Queues are the device's queues, in order; a queue the driver did not
	// enable has Ready false.
	Queues []*Queue
	// Kicks are the driver's notifications of the queue of the same index
	// (coalesced: one may stand for many). Their Wait returns false once
	// the transport is resetting the device, before it calls Reset.
	Kicks []*Kick
	// Interrupt tells the driver that used buffers are ready, unless it
	// asked for no interrupts on q.
	Interrupt func(q *Queue)
	// Fail reports an error that leaves the device unusable until the
	// driver resets it: the transport sets DEVICE_NEEDS_RESET.
	Fail func(err error)
	// Report, when not nil, tells the VM's user of a guest's misuse that
	// leaves the device working (a malformed request); it never blocks.
	// Devices report such misuse once, not per request.
	Report func(err error)
	// ConfigChanged changes the configuration space: it runs update (under
	// the configuration-space lock, with a new generation) and interrupts
	// the driver; see MMIO.ConfigChanged. Not for use from ReadConfig or
	// WriteConfig.
	ConfigChanged func(update func())
}

// ReadConfigFrom fills p from cfg, a device's configuration space, at
// offset off, as ReadConfig must: bytes beyond the end of cfg read as
// zero.
func ReadConfigFrom(cfg []byte, off uint64, p []byte) {
	clear(p)
	if off < uint64(len(cfg)) {
		copy(p, cfg[off:])
	}
}
