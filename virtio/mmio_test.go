package virtio_test

import (
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsule-vm/capsule/machine"
	"github.com/capsule-vm/capsule/virtio"
	"github.com/capsule-vm/capsule/virtio/rng"
	"github.com/capsule-vm/capsule/virtio/virtiotest"
)

func newDriver(t *testing.T) *virtiotest.Driver {
	mem, err := machine.NewGuestMemory(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	return virtiotest.New(t, mem, rng.New())
}

func TestMMIOIdentity(t *testing.T) {
	d := newDriver(t)
	for _, c := range []struct {
		reg  uint64
		want uint32
	}{
		{virtio.RegMagic, 0x74726976},
		{virtio.RegVersion, 2},
		{virtio.RegDeviceID, uint32(virtio.TypeRNG)},
		{virtio.RegVendorID, virtio.VendorID},
		{virtio.RegStatus, 0},
	} {
		if got := d.Read(c.reg); got != c.want {
			t.Errorf("register %#x = %#x, want %#x", c.reg, got, c.want)
		}
	}
	d.Write(virtio.RegDeviceFeaturesSel, 1)
	if d.Read(virtio.RegDeviceFeatures)&1 == 0 {
		t.Error("VIRTIO_F_VERSION_1 not offered")
	}
	d.Write(virtio.RegQueueSel, 0)
	if d.Read(virtio.RegQueueNumMax) != rng.QueueSize {
		t.Error("wrong QueueNumMax")
	}
	d.Write(virtio.RegQueueSel, 7)
	if d.Read(virtio.RegQueueNumMax) != 0 {
		t.Error("a missing queue has a size")
	}
}

func TestFeatureNegotiation(t *testing.T) {
	d := newDriver(t)
	if d.Negotiate(0) {
		t.Error("FEATURES_OK kept without VERSION_1 (legacy driver)")
	}
	if d.Negotiate(virtio.FeatureVersion1 | 1<<40) {
		t.Error("FEATURES_OK kept with a feature that was not offered")
	}
	if !d.Negotiate(virtio.FeatureVersion1 | virtio.FeatureIndirectDesc) {
		t.Error("FEATURES_OK refused for offered features")
	}
	// Features cannot change after FEATURES_OK.
	d.Write(virtio.RegDriverFeaturesSel, 1)
	d.Write(virtio.RegDriverFeatures, 0xffffffff)
	d.DriverOK()
	if s := d.Read(virtio.RegStatus); s&virtio.StatusDriverOK == 0 {
		t.Errorf("status %#x", s)
	}
}

func TestStatusOrder(t *testing.T) {
	d := newDriver(t)
	all := uint32(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	d.Write(virtio.RegStatus, all)
	// Taken in order, FEATURES_OK fails (no VERSION_1 accepted) and
	// DRIVER_OK cannot follow.
	if s := d.Read(virtio.RegStatus); s != virtio.StatusAcknowledge|virtio.StatusDriver {
		t.Errorf("status %#x after setting every bit at once without negotiation", s)
	}
	d.Write(virtio.RegStatus, 0)
	d.Write(virtio.RegStatus, virtio.StatusAcknowledge)
	d.Write(virtio.RegStatus, virtio.StatusDriverOK|virtio.StatusAcknowledge)
	if s := d.Read(virtio.RegStatus); s != virtio.StatusAcknowledge {
		t.Errorf("status %#x after DRIVER_OK out of order", s)
	}
	d.Write(virtio.RegStatus, 0)
	if s := d.Read(virtio.RegStatus); s != 0 {
		t.Errorf("status %#x after reset", s)
	}
	d.Write(virtio.RegStatus, virtio.StatusAcknowledge)
	d.Write(virtio.RegStatus, virtio.StatusAcknowledge|virtio.StatusFailed)
	if s := d.Read(virtio.RegStatus); s&virtio.StatusFailed == 0 {
		t.Errorf("FAILED not kept: %#x", s)
	}
	d.Write(virtio.RegStatus, virtio.StatusAcknowledge|virtio.StatusFailed|virtio.StatusDriver)
	if s := d.Read(virtio.RegStatus); s&virtio.StatusDriver != 0 {
		t.Errorf("DRIVER accepted after FAILED: %#x", s)
	}
}

func TestQueueRegistersNeedFeaturesOK(t *testing.T) {
	d := newDriver(t)
	d.Write(virtio.RegStatus, virtio.StatusAcknowledge)
	d.SetupQueue(0, 16, d.DescAddr(0), d.AvailAddr(0), d.UsedAddr(0))
	d.Write(virtio.RegQueueSel, 0)
	if d.Read(virtio.RegQueueReady) != 0 {
		t.Error("queue enabled before FEATURES_OK")
	}
}

func TestBadQueueSizeNeedsReset(t *testing.T) {
	for _, size := range []uint16{0, 3, 128} { // 128 > rng.QueueSize
		d := newDriver(t)
		d.Negotiate(virtio.FeatureVersion1)
		d.SetupQueue(0, size, d.DescAddr(0), d.AvailAddr(0), d.UsedAddr(0))
		d.DriverOK()
		if err := d.WaitNeedsReset(); err != nil {
			t.Errorf("size %d: %v", size, err)
		}
	}
}

func TestRNGFillsBuffers(t *testing.T) {
	d := newDriver(t)
	d.Setup(0)
	const buf = virtiotest.DataBase
	d.Mem.Zero(buf, 8192)
	d.Chain(0, 0, virtiotest.Desc{Addr: buf, Len: 4096, Flags: virtio.DescFlagWrite})
	d.Chain(0, 1, virtiotest.Desc{Addr: buf + 4096, Len: 100, Flags: virtio.DescFlagWrite})
	d.Kick(0)
	if err := d.WaitUsed(0, 2); err != nil {
		t.Fatal(err)
	}
	if _, n := d.Used(0, 0); n != 4096 {
		t.Errorf("used length %d, want 4096", n)
	}
	b := make([]byte, 4096)
	d.Mem.ReadAt(b, buf)
	zeros := 0
	for _, x := range b {
		if x == 0 {
			zeros++
		}
	}
	if zeros > 64 {
		t.Errorf("%d zero bytes in 4096 random ones", zeros)
	}
	// A huge request gets at most rng.MaxRequest bytes.
	d.Chain(0, 2, virtiotest.Desc{Addr: buf, Len: 1 << 20, Flags: virtio.DescFlagWrite})
	d.Kick(0)
	if err := d.WaitUsed(0, 3); err != nil {
		t.Fatal(err)
	}
	if _, n := d.Used(0, 2); n != rng.MaxRequest {
		t.Errorf("used length %d, want %d", n, rng.MaxRequest)
	}
}

// With an eventfd per queue, as KVM's ioeventfd gives, the device wakes
// on writes to the eventfd, and a reset ends its blocking wait.
func TestEventFDKicks(t *testing.T) {
	mem, err := machine.NewGuestMemory(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	d := virtiotest.New(t, mem, rng.New())
	d.M.SetEventFD(0, fd)
	d.Setup(0)
	d.Chain(0, 0, virtiotest.Desc{Addr: virtiotest.DataBase, Len: 64, Flags: virtio.DescFlagWrite})
	unix.Write(fd, []byte{1, 0, 0, 0, 0, 0, 0, 0}) // what KVM does on the guest's notify
	if err := d.WaitUsed(0, 1); err != nil {
		t.Fatal(err)
	}
	// A trapped notify (no ioeventfd match) goes through the eventfd too.
	d.Chain(0, 1, virtiotest.Desc{Addr: virtiotest.DataBase, Len: 64, Flags: virtio.DescFlagWrite})
	d.Kick(0)
	if err := d.WaitUsed(0, 2); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { d.Write(virtio.RegStatus, 0); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("reset hung on a device waiting for its eventfd")
	}
}

// With VIRTIO_F_EVENT_IDX the device asks for the next notification
// through avail_event and interrupts only when the used index passes the
// driver's used_event.
func TestEventIdx(t *testing.T) {
	d := newDriver(t)
	d.Setup(virtio.FeatureEventIdx)
	usedEvent := d.AvailAddr(0) + 4 + 2*uint64(d.Size)
	availEvent := d.UsedAddr(0) + 4 + 8*uint64(d.Size)
	buf := virtiotest.Desc{Addr: virtiotest.DataBase, Len: 16, Flags: virtio.DescFlagWrite}

	d.Mem.PutUint16(usedEvent, 0) // interrupt at the first used buffer
	d.Chain(0, 0, buf)
	d.Kick(0)
	if err := d.WaitUsed(0, 1); err != nil {
		t.Fatal(err)
	}
	// Once idle the device asked to be told of avail index 1.
	deadline := time.Now().Add(10 * time.Second)
	for v, _ := d.Mem.Uint16(availEvent); v != 1; v, _ = d.Mem.Uint16(availEvent) {
		if time.Now().After(deadline) {
			t.Fatalf("avail_event %d, want 1", v)
		}
		time.Sleep(time.Millisecond)
	}
	irqs := d.IRQ.Count.Load()
	if irqs == 0 {
		t.Error("no used-buffer interrupt although used_event is 0")
	}
	d.Mem.PutUint16(usedEvent, 5) // no interrupt before used index 6
	d.Chain(0, 1, buf)
	d.Kick(0)
	for d.UsedIdx(0) != 2 {
		if time.Now().After(deadline) {
			t.Fatal("second request not served")
		}
		time.Sleep(time.Millisecond)
	}
	if n := d.IRQ.Count.Load(); n != irqs {
		t.Errorf("%d more interrupts although used_event is 5", n-irqs)
	}
}

func TestConfigChangedInterruptsOnlyALiveDriver(t *testing.T) {
	d := newDriver(t)
	gen := d.Read(virtio.RegConfigGeneration)
	d.M.ConfigChanged(nil) // before DRIVER_OK: a new generation, no interrupt
	if g := d.Read(virtio.RegConfigGeneration); g == gen {
		t.Fatalf("config generation stayed %d across a change", g)
	}
	if n := d.IRQ.Count.Load(); n != 0 {
		t.Fatalf("%d interrupts before DRIVER_OK", n)
	}
	d.Setup(virtio.FeatureVersion1)
	gen = d.Read(virtio.RegConfigGeneration)
	d.M.ConfigChanged(nil)
	if d.Read(virtio.RegConfigGeneration) == gen {
		t.Fatal("config generation did not move")
	}
	if n := d.IRQ.Count.Load(); n != 1 {
		t.Fatalf("%d interrupts after a change with DRIVER_OK, want 1", n)
	}
	if s := d.Read(virtio.RegInterruptStatus); s&virtio.InterruptConfig == 0 {
		t.Fatalf("interrupt status %#x lacks the configuration-change bit", s)
	}
}

// changer is a device whose goroutine keeps changing its configuration
// space, and whose Reset waits for that goroutine, as a balloon's would.
type changer struct {
	value   atomic.Uint32
	stop    chan struct{}
	stopped chan struct{}
}

func (c *changer) Type() virtio.Type                { return virtio.TypeRNG }
func (c *changer) Features() uint64                 { return 0 }
func (c *changer) QueueMaxSizes() []uint16          { return []uint16{16} }
func (c *changer) WriteConfig(off uint64, p []byte) {}
func (c *changer) ReadConfig(off uint64, p []byte) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], c.value.Load())
	virtio.ReadConfigFrom(b[:], off, p)
}

func (c *changer) Activate(a virtio.Activation) error {
	c.stop, c.stopped = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(c.stopped)
		for {
			select {
			case <-c.stop:
				return
			default:
				a.ConfigChanged(func() { c.value.Add(1) })
			}
		}
	}()
	return nil
}

func (c *changer) Reset() {
	if c.stop != nil {
		close(c.stop)
		<-c.stopped
		c.stop = nil
	}
}

func TestConfigChangeDuringResetDoesNotDeadlock(t *testing.T) {
	mem, err := machine.NewGuestMemory(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	d := virtiotest.New(t, mem, &changer{})
	for range 20 {
		d.Setup(virtio.FeatureVersion1)
		// A torn read is impossible: the generation moves with every value.
		for range 100 {
			g1 := d.Read(virtio.RegConfigGeneration)
			v := d.Read(virtio.RegConfig)
			if g2 := d.Read(virtio.RegConfigGeneration); g1 == g2 && v != g1 {
				t.Fatalf("generation %d with value %d", g1, v)
			}
		}
		done := make(chan struct{})
		go func() { d.Write(virtio.RegStatus, 0); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("reset hung while the device changed its configuration")
		}
	}
}
