package vmm

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/capsule-vm/capsule/kvm"
	"github.com/capsule-vm/capsule/virtio"
)

// Device is a virtio device to give a VM, as a spec: what to open, not an
// open device. Each kind of device is a spec type (Disk, Net, Vsock, RNG,
// Share in this package); a new kind needs its virtio package and one more
// spec type, nothing else here.
//
// New opens every device in Config.Devices before anything else starts,
// so that a missing or busy image is an error before the guest exists,
// and gives Devices[n] slot n: its virtio-mmio register window at
// VirtioBase + n*virtio.MMIOSize and interrupt line VirtioIRQs[n]. Slots
// follow the order given, whatever the kinds.
type Device interface {
	// String names the device in errors and logs, as "disk /img/root.ext4".
	String() string
	// Exclusive names the host resource the device must have to itself
	// within a VM (an image path, a TAP name), or "" when it has none; two
	// devices of one VM with the same non-empty name are refused.
	Exclusive() string
	// Open creates the device and its back end. If the device is an
	// io.Closer, Close releases the back end when the VM closes (or when
	// New fails after opening it).
	Open() (virtio.Device, error)
}

// Virtio-mmio layout. Device n has its 4 KiB register window at
// VirtioBase + n*virtio.MMIOSize, inside the 32-bit MMIO hole, and raises
// ISA interrupt VirtioIRQs[n] of the I/O APIC (edge-triggered, as Linux
// wires legacy IRQs). The kernel learns of each device from a
// virtio_mmio.device=4K@ADDR:IRQ command-line parameter that capsule
// appends.
const VirtioBase = 0xd0000000

// VirtioIRQs are the legacy interrupt lines free on capsule's machine,
// one per virtio device; their number bounds the device count.
var VirtioIRQs = []uint32{5, 6, 7, 10, 11, 14, 15, 3, 12}

// MaxDevices is the most virtio devices a VM can have.
var MaxDevices = len(VirtioIRQs)

// slot is one virtio device with its transport and the file descriptors
// that connect it to KVM.
type slot struct {
	spec     Device
	dev      virtio.Device
	base     uint64
	irq      uint32
	mmio     *virtio.MMIO // nil until wired to KVM
	irqfd    int          // -1 when interrupts go through KVM_IRQ_LINE
	eventFDs []int        // the queues' ioeventfds
}

// virtioCmdline returns the virtio_mmio.device parameters for the slots.
func virtioCmdline(slots []*slot) string {
	var b strings.Builder
	for _, s := range slots {
		fmt.Fprintf(&b, " virtio_mmio.device=4K@%#x:%d", s.base, s.irq)
	}
	return b.String()
}

// checkDevices checks the specs against each other: how many, and that no
// two claim one resource.
func checkDevices(specs []Device) error {
	if len(specs) > MaxDevices {
		return fmt.Errorf("%d virtio devices requested; capsule supports at most %d", len(specs), MaxDevices)
	}
	owner := map[string]Device{}
	for _, s := range specs {
		x := s.Exclusive()
		if x == "" {
			continue
		}
		if o, ok := owner[x]; ok {
			if o.String() == s.String() {
				return fmt.Errorf("%s given twice", s)
			}
			return fmt.Errorf("%s and %s: a VM can use %s only once", o, s, x)
		}
		owner[x] = s
	}
	return nil
}

// openDevices checks the specs and opens them in order. On error, what
// was opened is closed again.
func openDevices(specs []Device) ([]*slot, error) {
	if err := checkDevices(specs); err != nil {
		return nil, err
	}
	var slots []*slot
	for i, s := range specs {
		d, err := s.Open()
		if err != nil {
			closeDevices(slots)
			return nil, err
		}
		slots = append(slots, &slot{spec: s, dev: d, base: VirtioBase + uint64(i)*virtio.MMIOSize, irq: VirtioIRQs[i], irqfd: -1})
	}
	return slots, nil
}

// eventInterrupt raises a guest interrupt through an irqfd, or through
// KVM_IRQ_LINE when irqfd is unavailable.
type eventInterrupt struct {
	fd  int
	vm  *kvm.VM
	irq uint32
}

func (e eventInterrupt) Trigger() error {
	if e.fd < 0 {
		return e.vm.PulseIRQ(e.irq)
	}
	return virtio.SignalEventFD(e.fd)
}

// wireVirtio puts the opened devices on the MMIO bus and wires their
// queue notifications to ioeventfds and their interrupts to irqfds.
// Device errors go to log, rate-limited per device (see deviceLog); the
// transport may report them on a vCPU thread under its own lock, which
// is why printing one only appends to a buffer.
func (v *VM) wireVirtio(log io.Writer) error {
	for _, d := range v.slots {
		if fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err == nil {
			if err := v.vm.AddIRQFD(fd, d.irq); err != nil {
				unix.Close(fd)
			} else {
				d.irqfd = fd
			}
		}
		name := d.spec.String()
		dl := &deviceLog{out: log, prefix: fmt.Sprintf("capsule: %s at %#x: ", name, d.base)}
		v.deviceLogs = append(v.deviceLogs, dl)
		d.mmio = virtio.NewMMIO(d.dev, v.mem, eventInterrupt{d.irqfd, v.vm, d.irq}, func(err error) {
			dl.printf("%v", err)
		})
		if err := v.mmio.insert(d.base, virtio.MMIOSize, d.mmio); err != nil {
			return err
		}
		for q := range d.mmio.QueueCount() {
			// A blocking eventfd: the device's goroutine sleeps in read(2)
			// on it (see virtio.Kick).
			fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
			if err != nil {
				return fmt.Errorf("%s: eventfd: %w", name, err)
			}
			err = v.vm.AddIOEventFD(kvm.IOEvent{Space: kvm.IOEventMMIO, Addr: d.base + virtio.RegQueueNotify,
				Len: 4, Match: true, Value: uint64(q), FD: fd})
			if err != nil {
				// Notifications then exit to the vCPU thread, which passes
				// them on itself.
				unix.Close(fd)
				continue
			}
			d.eventFDs = append(d.eventFDs, fd)
			d.mmio.SetEventFD(q, fd)
		}
	}
	return nil
}

// ConfigChanged changes the configuration space of device n (its slot):
// update runs under the transport's configuration-space lock with a new
// configuration generation, and the driver gets a configuration-change
// interrupt (see virtio.MMIO.ConfigChanged). A balloon's new target goes
// to the guest this way. Call it between New and Close.
func (v *VM) ConfigChanged(n int, update func()) error {
	v.mu.Lock()
	var m *virtio.MMIO
	if n >= 0 && n < len(v.slots) {
		m = v.slots[n].mmio
	}
	v.mu.Unlock()
	if m == nil {
		return fmt.Errorf("vmm: no virtio device in slot %d", n)
	}
	m.ConfigChanged(update)
	return nil
}

// closeDevices stops every device, ends the notification goroutines and
// closes the back ends (flushing disks). Call it before closing the VM.
func closeDevices(slots []*slot) error {
	var errs []error
	for _, d := range slots {
		if d.mmio != nil {
			d.mmio.Close() // ends every wait on the eventfds first
		}
		for _, fd := range d.eventFDs {
			unix.Close(fd)
		}
		if d.irqfd >= 0 {
			unix.Close(d.irqfd)
		}
	}
	for _, d := range slots {
		if c, ok := d.dev.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}
