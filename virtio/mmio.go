package virtio

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/capsule-vm/capsule/machine"
)

// MMIO register offsets (virtio 1.2, 4.2.2).
const (
	RegMagic             = 0x000
	RegVersion           = 0x004
	RegDeviceID          = 0x008
	RegVendorID          = 0x00c
	RegDeviceFeatures    = 0x010
	RegDeviceFeaturesSel = 0x014
	RegDriverFeatures    = 0x020
	RegDriverFeaturesSel = 0x024
	RegQueueSel          = 0x030
	RegQueueNumMax       = 0x034
	RegQueueNum          = 0x038
	RegQueueReady        = 0x044
	RegQueueNotify       = 0x050
	RegInterruptStatus   = 0x060
	RegInterruptACK      = 0x064
	RegStatus            = 0x070
	RegQueueDescLow      = 0x080
	RegQueueDescHigh     = 0x084
	RegQueueDriverLow    = 0x090
	RegQueueDriverHigh   = 0x094
	RegQueueDeviceLow    = 0x0a0
	RegQueueDeviceHigh   = 0x0a4
	RegSHMLenLow         = 0x0b0
	RegSHMLenHigh        = 0x0b4
	RegConfigGeneration  = 0x0fc
	RegConfig            = 0x100

	// MMIOSize is the size of one device's register window.
	MMIOSize = 0x1000

	mmioMagic   = 0x74726976 // "virt"
	mmioVersion = 2
	// VendorID is "CAPS" read as a little-endian word.
	VendorID = 0x53504143
)

// Device status bits (virtio 1.2, 2.1).
const (
	StatusAcknowledge = 1
	StatusDriver      = 2
	StatusDriverOK    = 4
	StatusFeaturesOK  = 8
	StatusNeedsReset  = 64
	StatusFailed      = 128
)

// Interrupt status bits.
const (
	InterruptUsed   = 1
	InterruptConfig = 2
)

// transportFeatures are the feature bits the transport offers for every
// device.
const transportFeatures = FeatureVersion1 | FeatureIndirectDesc | FeatureEventIdx

// Interrupt raises the device's interrupt line (an edge).
type Interrupt interface {
	Trigger() error
}

// MMIO is the virtio-mmio transport of one device: the register window a
// vCPU reads and writes, the device-status state machine, feature
// negotiation and queue set-up. It implements the devices.Device
// interface (Read and Write at an offset in the window).
type MMIO struct {
	dev Device
	mem *machine.GuestMemory
	irq Interrupt
	// OnError, when set, hears about errors that make the device need a
	// reset, and about guest misuse of the registers.
	onError func(error)

	mu          sync.Mutex
	status      uint32
	devFeatSel  uint32
	drvFeatSel  uint32
	drvFeatures uint64
	queueSel    uint32
	queues      []*Queue
	eventFDs    []int   // per queue: an ioeventfd KVM signals, or -1
	kicks       []*Kick // of the current activation
	active      bool

	intStatus  atomic.Uint32
	needsReset atomic.Bool

	// cfgMu serialises the device's configuration space: driver accesses
	// and ConfigChanged. It is never held with mu.
	cfgMu     sync.Mutex
	configGen atomic.Uint32
	live      atomic.Bool // DRIVER_OK is set: configuration interrupts go out
}

// NewMMIO returns the transport for dev over mem, raising irq.
func NewMMIO(dev Device, mem *machine.GuestMemory, irq Interrupt, onError func(error)) *MMIO {
	m := &MMIO{dev: dev, mem: mem, irq: irq, onError: onError}
	for _, max := range dev.QueueMaxSizes() {
		m.queues = append(m.queues, &Queue{MaxSize: max})
		m.eventFDs = append(m.eventFDs, -1)
	}
	return m
}

// SetEventFD gives queue q the eventfd that KVM signals when the driver
// writes q to QueueNotify (an ioeventfd). It must be a blocking eventfd;
// the transport does not close it. Call it before the guest runs.
func (m *MMIO) SetEventFD(q int, fd int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.eventFDs[q] = fd
}

// Device returns the device behind the transport.
func (m *MMIO) Device() Device { return m.dev }

// QueueCount is the number of queues of the device.
func (m *MMIO) QueueCount() int { return len(m.queues) }

// Notify tells the device that the driver made buffers available in queue
// q, as a write of q to QueueNotify does. It never blocks; an out-of-range
// q, or one of a device that is not running, is ignored.
func (m *MMIO) Notify(q uint32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.active && int(q) < len(m.kicks) {
		m.kicks[q].Signal()
	}
}

func (m *MMIO) report(err error) {
	if m.onError != nil {
		m.onError(fmt.Errorf("%v: %w", m.dev.Type(), err))
	}
}

// interrupt raises the interrupt with the given status bit.
func (m *MMIO) interrupt(bit uint32) {
	m.intStatus.Or(bit)
	if err := m.irq.Trigger(); err != nil {
		m.report(fmt.Errorf("raise interrupt: %w", err))
	}
}

// fail puts the device in DEVICE_NEEDS_RESET and tells the driver.
func (m *MMIO) fail(err error) {
	if m.needsReset.Swap(true) {
		return
	}
	m.report(fmt.Errorf("%w; the device needs a reset", err))
	m.interrupt(InterruptConfig)
}

// ConfigChanged changes the device's configuration space: update (which
// may be nil) runs under the lock every driver access to the space takes,
// together with the move of the configuration generation, so a driver
// that reads the generation around a multi-field value either sees the
// old value or a new generation. Once the driver has set DRIVER_OK it
// then gets a configuration-change interrupt. It never waits for the
// transport's state lock, so a device goroutine may call it while the
// transport resets the device; it must not be called from ReadConfig or
// WriteConfig.
func (m *MMIO) ConfigChanged(update func()) {
	m.cfgMu.Lock()
	if update != nil {
		update()
	}
	m.configGen.Add(1)
	m.cfgMu.Unlock()
	if m.live.Load() {
		m.interrupt(InterruptConfig)
	}
}

// Read handles a guest read of the register window.
func (m *MMIO) Read(off uint64, data []byte) {
	clear(data)
	if off >= RegConfig {
		m.cfgMu.Lock()
		m.dev.ReadConfig(off-RegConfig, data)
		m.cfgMu.Unlock()
		return
	}
	if len(data) != 4 || off%4 != 0 {
		return // registers are 32 bits wide
	}
	binary.LittleEndian.PutUint32(data, m.readReg(off))
}

func (m *MMIO) readReg(off uint64) uint32 {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch off {
	case RegMagic:
		return mmioMagic
	case RegVersion:
		return mmioVersion
	case RegDeviceID:
		return uint32(m.dev.Type())
	case RegVendorID:
		return VendorID
	case RegDeviceFeatures:
		f := m.dev.Features() | transportFeatures
		switch m.devFeatSel {
		case 0:
			return uint32(f)
		case 1:
			return uint32(f >> 32)
		}
		return 0
	case RegQueueNumMax:
		if q := m.selected(); q != nil {
			return uint32(q.MaxSize)
		}
		return 0
	case RegQueueReady:
		if q := m.selected(); q != nil && q.Ready {
			return 1
		}
		return 0
	case RegInterruptStatus:
		return m.intStatus.Load()
	case RegStatus:
		s := m.status
		if m.needsReset.Load() {
			s |= StatusNeedsReset
		}
		return s
	case RegSHMLenLow, RegSHMLenHigh:
		return 0xffffffff // no shared memory regions
	case RegConfigGeneration:
		return m.configGen.Load()
	}
	return 0
}

// selected returns the queue QueueSel points at, or nil.
func (m *MMIO) selected() *Queue {
	if int(m.queueSel) < len(m.queues) {
		return m.queues[m.queueSel]
	}
	return nil
}

// Write handles a guest write to the register window.
func (m *MMIO) Write(off uint64, data []byte) {
	if off >= RegConfig {
		m.mu.Lock()
		driver := m.status&StatusDriver != 0
		m.mu.Unlock()
		if driver {
			m.cfgMu.Lock()
			m.dev.WriteConfig(off-RegConfig, data)
			m.cfgMu.Unlock()
		}
		return
	}
	if len(data) != 4 || off%4 != 0 {
		return
	}
	v := binary.LittleEndian.Uint32(data)
	if off == RegQueueNotify {
		m.Notify(v)
		return
	}
	if off == RegInterruptACK {
		m.intStatus.And(^v)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch off {
	case RegDeviceFeaturesSel:
		m.devFeatSel = v
	case RegDriverFeaturesSel:
		m.drvFeatSel = v
	case RegDriverFeatures:
		if m.status&(StatusDriver|StatusFeaturesOK) != StatusDriver || m.drvFeatSel > 1 {
			return // only between DRIVER and FEATURES_OK
		}
		shift := 32 * m.drvFeatSel
		m.drvFeatures = m.drvFeatures&^(0xffffffff<<shift) | uint64(v)<<shift
	case RegQueueSel:
		m.queueSel = v
	case RegStatus:
		m.setStatus(v)
	case RegQueueNum, RegQueueReady, RegQueueDescLow, RegQueueDescHigh,
		RegQueueDriverLow, RegQueueDriverHigh, RegQueueDeviceLow, RegQueueDeviceHigh:
		m.writeQueueReg(off, v)
	}
}

// writeQueueReg sets up the selected queue, which is allowed only after
// FEATURES_OK and before DRIVER_OK: later writes are ignored.
func (m *MMIO) writeQueueReg(off uint64, v uint32) {
	q := m.selected()
	if q == nil || m.status&(StatusFeaturesOK|StatusDriverOK|StatusFailed) != StatusFeaturesOK {
		return
	}
	lo := func(x uint64) uint64 { return x&^0xffffffff | uint64(v) }
	hi := func(x uint64) uint64 { return x&0xffffffff | uint64(v)<<32 }
	switch off {
	case RegQueueNum:
		q.Size = uint16(min(v, 1<<16-1))
		if v > 1<<15 {
			q.Size = 0 // invalid; Validate refuses it
		}
	case RegQueueReady:
		q.Ready = v == 1
	case RegQueueDescLow:
		q.Desc = lo(q.Desc)
	case RegQueueDescHigh:
		q.Desc = hi(q.Desc)
	case RegQueueDriverLow:
		q.Avail = lo(q.Avail)
	case RegQueueDriverHigh:
		q.Avail = hi(q.Avail)
	case RegQueueDeviceLow:
		q.Used = lo(q.Used)
	case RegQueueDeviceHigh:
		q.Used = hi(q.Used)
	}
}

// setStatus runs the device-status state machine (virtio 1.2, 3.1.1).
// Writing 0 resets the device; otherwise bits are only ever added, in
// order, and FEATURES_OK is kept only if the driver's features are
// acceptable.
func (m *MMIO) setStatus(v uint32) {
	if v == 0 {
		m.reset()
		return
	}
	old := m.status
	if v&old != old {
		return // clearing bits other than by reset is not allowed
	}
	added := v &^ old
	if added&StatusFailed != 0 {
		m.status |= StatusFailed
		m.live.Store(false)
		m.deactivate()
		return
	}
	if old&StatusFailed != 0 {
		return
	}
	// The order ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK.
	need := map[uint32]uint32{
		StatusAcknowledge: 0,
		StatusDriver:      StatusAcknowledge,
		StatusFeaturesOK:  StatusAcknowledge | StatusDriver,
		StatusDriverOK:    StatusAcknowledge | StatusDriver | StatusFeaturesOK,
	}
	for _, bit := range []uint32{StatusAcknowledge, StatusDriver, StatusFeaturesOK, StatusDriverOK} {
		if added&bit == 0 {
			continue
		}
		if m.status&need[bit] != need[bit] {
			m.report(fmt.Errorf("driver set status %#x out of order (status was %#x)", v, old))
			return
		}
		switch bit {
		case StatusFeaturesOK:
			if err := m.checkFeatures(); err != nil {
				m.report(err)
				return // FEATURES_OK stays clear: the driver sees the refusal
			}
		case StatusDriverOK:
			m.status |= bit
			m.live.Store(true)
			m.activate()
			continue
		}
		m.status |= bit
	}
}

// checkFeatures accepts the driver's features if they are a subset of the
// offered ones and include VERSION_1.
func (m *MMIO) checkFeatures() error {
	offered := m.dev.Features() | transportFeatures
	if extra := m.drvFeatures &^ offered; extra != 0 {
		return fmt.Errorf("driver accepted features %#x that were not offered", extra)
	}
	if m.drvFeatures&FeatureVersion1 == 0 {
		return fmt.Errorf("driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)")
	}
	return nil
}

// activate validates the queues and starts the device; a bad queue sets
// DEVICE_NEEDS_RESET instead.
func (m *MMIO) activate() {
	indirect := m.drvFeatures&FeatureIndirectDesc != 0
	eventIdx := m.drvFeatures&FeatureEventIdx != 0
	for i, q := range m.queues {
		q.Indirect, q.EventIdx = indirect, eventIdx
		if !q.Ready {
			continue
		}
		if err := q.Validate(m.mem); err != nil {
			m.fail(fmt.Errorf("queue %d: %w", i, err))
			return
		}
	}
	m.kicks = make([]*Kick, len(m.queues))
	for i := range m.kicks {
		m.kicks[i] = newKick(m.eventFDs[i])
	}
	err := m.dev.Activate(Activation{
		Mem:      m.mem,
		Features: m.drvFeatures,
		Queues:   m.queues,
		Kicks:    m.kicks,
		Interrupt: func(q *Queue) {
			if q.WantsInterrupt(m.mem) {
				m.interrupt(InterruptUsed)
			}
		},
		Fail:          m.fail,
		Report:        m.report,
		ConfigChanged: m.ConfigChanged,
	})
	if err != nil {
		m.kicks = nil
		m.fail(fmt.Errorf("activate: %w", err))
		return
	}
	m.active = true
}

// deactivate stops an active device: its waits for kicks end first, then
// the device resets (and waits for its goroutines).
func (m *MMIO) deactivate() {
	if m.active {
		for _, k := range m.kicks {
			k.close()
		}
		m.dev.Reset()
		m.active = false
		m.kicks = nil
	}
}

// reset returns the device and the transport to their initial state.
func (m *MMIO) reset() {
	m.live.Store(false)
	m.deactivate()
	m.status, m.devFeatSel, m.drvFeatSel, m.drvFeatures, m.queueSel = 0, 0, 0, 0, 0
	for _, q := range m.queues {
		q.Reset()
	}
	m.intStatus.Store(0)
	m.needsReset.Store(false)
}

// Close stops the device, as a reset does.
func (m *MMIO) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.deactivate()
}
