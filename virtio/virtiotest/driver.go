// Package virtiotest plays a virtio driver against a [virtio.MMIO]
// transport over real guest memory, for device tests: it negotiates
// features, lays out split virtqueues, posts descriptor chains (well
// formed or hostile) and waits for used buffers.
package virtiotest

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/capsule-vm/capsule/machine"
	"github.com/capsule-vm/capsule/virtio"
)

// Interrupt counts interrupts and signals each on C.
type Interrupt struct {
	C     chan struct{}
	Count atomic.Int64
}

// NewInterrupt returns an Interrupt with a buffered channel.
func NewInterrupt() *Interrupt { return &Interrupt{C: make(chan struct{}, 1)} }

// Trigger implements virtio.Interrupt.
func (i *Interrupt) Trigger() error {
	i.Count.Add(1)
	select {
	case i.C <- struct{}{}:
	default:
	}
	return nil
}

// Desc is one descriptor as the driver writes it.
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// Ring addresses of queue q: each queue gets 64 KiB from QueueBase.
const (
	QueueBase = 0x100000
	queueSpan = 0x10000
	// DataBase is where tests may put request buffers.
	DataBase = 0x400000
)

// Driver drives one device.
type Driver struct {
	T    testing.TB
	Mem  *machine.GuestMemory
	M    *virtio.MMIO
	IRQ  *Interrupt
	Size uint16 // queue size used by Setup
	// Errors receives what the transport reports.
	Errors chan error

	availIdx []uint16
	reg      [4]byte     // register scratch: no allocation per access
	timer    *time.Timer // WaitUsed's, reused
}

// New makes a transport for dev over mem and a driver for it. mem must
// hold at least 8 MiB.
func New(t testing.TB, mem *machine.GuestMemory, dev virtio.Device) *Driver {
	d := &Driver{T: t, Mem: mem, IRQ: NewInterrupt(), Size: 16, Errors: make(chan error, 100)}
	d.M = virtio.NewMMIO(dev, mem, d.IRQ, func(err error) {
		select {
		case d.Errors <- err:
		default:
		}
	})
	d.availIdx = make([]uint16, d.M.QueueCount())
	t.Cleanup(d.M.Close)
	return d
}

// Read reads a 32-bit register.
func (d *Driver) Read(off uint64) uint32 {
	d.M.Read(off, d.reg[:])
	return binary.LittleEndian.Uint32(d.reg[:])
}

// Write writes a 32-bit register.
func (d *Driver) Write(off uint64, v uint32) {
	binary.LittleEndian.PutUint32(d.reg[:], v)
	d.M.Write(off, d.reg[:])
}

// Desc, Avail and Used are the ring addresses Setup gives queue q.
func (d *Driver) DescAddr(q int) uint64  { return QueueBase + uint64(q)*queueSpan }
func (d *Driver) AvailAddr(q int) uint64 { return d.DescAddr(q) + 0x8000 }
func (d *Driver) UsedAddr(q int) uint64  { return d.DescAddr(q) + 0xc000 }

// Negotiate acknowledges the device and accepts features; it reports
// whether the device kept FEATURES_OK.
func (d *Driver) Negotiate(features uint64) bool {
	d.Write(virtio.RegStatus, 0)
	d.Write(virtio.RegStatus, virtio.StatusAcknowledge)
	d.Write(virtio.RegStatus, virtio.StatusAcknowledge|virtio.StatusDriver)
	d.Write(virtio.RegDriverFeaturesSel, 0)
	d.Write(virtio.RegDriverFeatures, uint32(features))
	d.Write(virtio.RegDriverFeaturesSel, 1)
	d.Write(virtio.RegDriverFeatures, uint32(features>>32))
	d.Write(virtio.RegStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
	return d.Read(virtio.RegStatus)&virtio.StatusFeaturesOK != 0
}

// SetupQueue programs queue q with size at the given ring addresses and
// enables it.
func (d *Driver) SetupQueue(q int, size uint16, desc, avail, used uint64) {
	d.Write(virtio.RegQueueSel, uint32(q))
	d.Write(virtio.RegQueueNum, uint32(size))
	d.Write(virtio.RegQueueDescLow, uint32(desc))
	d.Write(virtio.RegQueueDescHigh, uint32(desc>>32))
	d.Write(virtio.RegQueueDriverLow, uint32(avail))
	d.Write(virtio.RegQueueDriverHigh, uint32(avail>>32))
	d.Write(virtio.RegQueueDeviceLow, uint32(used))
	d.Write(virtio.RegQueueDeviceHigh, uint32(used>>32))
	d.Write(virtio.RegQueueReady, 1)
}

// DriverOK sets DRIVER_OK.
func (d *Driver) DriverOK() {
	d.Write(virtio.RegStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK)
}

// Setup negotiates features (plus VERSION_1), lays out every queue with
// d.Size entries and sets DRIVER_OK; it fails the test if the device does
// not end up running.
func (d *Driver) Setup(features uint64) {
	d.T.Helper()
	if !d.Negotiate(features | virtio.FeatureVersion1) {
		d.T.Fatalf("device refused features %#x", features)
	}
	for q := range d.M.QueueCount() {
		d.availIdx[q] = 0
		if err := d.Mem.Zero(d.DescAddr(q), queueSpan); err != nil {
			d.T.Fatal(err)
		}
		d.SetupQueue(q, d.Size, d.DescAddr(q), d.AvailAddr(q), d.UsedAddr(q))
	}
	d.DriverOK()
	if s := d.Read(virtio.RegStatus); s&virtio.StatusNeedsReset != 0 || s&virtio.StatusDriverOK == 0 {
		d.T.Fatalf("device status %#x after DRIVER_OK", s)
	}
}

// WriteDesc writes descriptor i of queue q's table.
func (d *Driver) WriteDesc(q int, i uint16, e Desc) {
	d.WriteDescAt(d.DescAddr(q)+16*uint64(i), e)
}

// WriteDescAt writes a descriptor at gpa (for indirect tables).
func (d *Driver) WriteDescAt(gpa uint64, e Desc) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], e.Addr)
	binary.LittleEndian.PutUint32(b[8:], e.Len)
	binary.LittleEndian.PutUint16(b[12:], e.Flags)
	binary.LittleEndian.PutUint16(b[14:], e.Next)
	if err := d.Mem.WriteAt(b[:], gpa); err != nil {
		d.T.Fatal(err)
	}
}

// Chain writes descs as one chain starting at descriptor head (head,
// head+1, ...; NEXT flags are set here) and makes it available.
func (d *Driver) Chain(q int, head uint16, descs ...Desc) {
	for i, e := range descs {
		idx := head + uint16(i)
		if i < len(descs)-1 {
			e.Flags |= virtio.DescFlagNext
			e.Next = idx + 1
		}
		d.WriteDesc(q, idx, e)
	}
	d.Publish(q, head)
}

// Publish puts heads in queue q's available ring and advances its index
// by len(heads).
func (d *Driver) Publish(q int, heads ...uint16) {
	for _, h := range heads {
		slot := d.AvailAddr(q) + 4 + 2*uint64(d.availIdx[q]%d.Size)
		if err := d.Mem.PutUint16(slot, h); err != nil {
			d.T.Fatal(err)
		}
		d.availIdx[q]++
	}
	d.SetAvailIdx(q, d.availIdx[q])
}

// SetAvailIdx writes queue q's available index as is.
func (d *Driver) SetAvailIdx(q int, idx uint16) {
	if err := d.Mem.PutUint16(d.AvailAddr(q)+2, idx); err != nil {
		d.T.Fatal(err)
	}
}

// Kick notifies queue q.
func (d *Driver) Kick(q int) { d.Write(virtio.RegQueueNotify, uint32(q)) }

// UsedIdx reads queue q's used index.
func (d *Driver) UsedIdx(q int) uint16 {
	v, err := d.Mem.Uint16(d.UsedAddr(q) + 2)
	if err != nil {
		d.T.Fatal(err)
	}
	return v
}

// Used returns used element n of queue q: the chain head and length.
func (d *Driver) Used(q int, n uint16) (head uint32, length uint32) {
	e := d.UsedAddr(q) + 4 + 8*uint64(n%d.Size)
	h, err1 := d.Mem.Uint32(e)
	l, err2 := d.Mem.Uint32(e + 4)
	if err1 != nil || err2 != nil {
		d.T.Fatal(err1, err2)
	}
	return h, l
}

// WaitUsed waits until queue q's used index reaches idx, or the device
// reports NEEDS_RESET, and returns the interrupt-driven outcome: nil when
// the index was reached, an error otherwise.
func (d *Driver) WaitUsed(q int, idx uint16) error {
	if d.timer == nil {
		d.timer = time.NewTimer(10 * time.Second)
	} else {
		d.timer.Reset(10 * time.Second)
	}
	deadline := d.timer.C
	for {
		if int16(d.UsedIdx(q)-idx) >= 0 {
			return nil
		}
		if s := d.Read(virtio.RegStatus); s&virtio.StatusNeedsReset != 0 {
			return fmt.Errorf("device needs reset (status %#x)", s)
		}
		select {
		case <-d.IRQ.C:
			d.Write(virtio.RegInterruptACK, d.Read(virtio.RegInterruptStatus))
		case <-deadline:
			return fmt.Errorf("used index %d after 10 s, want %d", d.UsedIdx(q), idx)
		}
	}
}

// WaitNeedsReset waits for the device to set DEVICE_NEEDS_RESET.
func (d *Driver) WaitNeedsReset() error {
	deadline := time.After(10 * time.Second)
	for d.Read(virtio.RegStatus)&virtio.StatusNeedsReset == 0 {
		select {
		case <-d.IRQ.C:
		case <-deadline:
			return fmt.Errorf("no NEEDS_RESET after 10 s (status %#x)", d.Read(virtio.RegStatus))
		}
	}
	if d.Read(virtio.RegInterruptStatus)&virtio.InterruptConfig == 0 {
		return fmt.Errorf("NEEDS_RESET without a configuration-change interrupt")
	}
	return nil
}
