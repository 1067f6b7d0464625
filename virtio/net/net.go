// Package net is capsule's virtio-net device. It moves Ethernet frames,
// each with its 12-byte virtio-net header, between the guest's queues and
// a [Backend]: a TAP device (package tap) or the user-mode network stack
// (package usernet).
//
// Frames are checked before they go anywhere: a frame from the guest
// larger than MaxFrame or shorter than its header is dropped, and a frame
// for the guest that does not fit the receive buffer it posted is dropped
// (the buffer comes back empty).
package net

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/capsule-vm/capsule/internal/ratelimit"
	"github.com/capsule-vm/capsule/virtio"
)

// Feature bits (virtio 1.2, 5.1.3).
const (
	FeatureCsum      = 1 << 0
	FeatureGuestCsum = 1 << 1
	FeatureMAC       = 1 << 5
	FeatureGuestTSO4 = 1 << 7
	FeatureGuestTSO6 = 1 << 8
	FeatureHostTSO4  = 1 << 11
	FeatureHostTSO6  = 1 << 12
	FeatureStatus    = 1 << 16
)

const (
	// HeaderSize is the size of struct virtio_net_hdr_v1.
	HeaderSize = 12
	// MaxFrame is the largest frame with its header that the device
	// moves: a 64 KiB TSO segment, its Ethernet header and the header.
	MaxFrame = HeaderSize + 14 + 65535
	// QueueSize is the size of both queues.
	QueueSize = 256

	rxQueue = 0
	txQueue = 1

	statusLinkUp = 1
)

// Backend carries frames between the device and the host side. Read and
// Write move one frame each, with its HeaderSize-byte virtio-net header in
// front; Write must not keep p after it returns.
type Backend interface {
	// Offloads are the offload feature bits (checksum, TSO) the backend
	// can handle; the device offers them to the guest.
	Offloads() uint64
	// SetOffloads tells the backend which of them the guest accepted, so
	// that it only hands the guest frames the guest can take.
	SetOffloads(features uint64) error
	Read(p []byte) (int, error)
	Write(p []byte) (int, error)
	Close() error
}

// Device is a virtio-net device.
type Device struct {
	mac net.HardwareAddr
	be  Backend

	mu     sync.Mutex
	act    *virtio.Activation
	tx     virtio.Server
	rxDone chan struct{}
	txBuf  []byte       // transmit's frame buffer (one goroutine transmits)
	rx     virtio.Chain // deliver's, reused (one goroutine receives)
	// rxMu is held by deliver for as long as it uses an activation's
	// queue; Reset takes it after forgetting the activation, so that no
	// delivery touches a queue once Reset returns (the transport then
	// resets the queues).
	rxMu sync.Mutex
	// rxLimit and txLimit bound the frames moved per second in each
	// direction (nil: no limit); stop ends their waits on Reset.
	rxLimit, txLimit *ratelimit.Limiter
	stop             chan struct{}
}

// RandomMAC returns a locally administered unicast MAC address.
func RandomMAC() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	rand.Read(m)
	m[0] = m[0]&^1 | 2
	return m
}

// ParseMAC parses a unicast MAC address.
func ParseMAC(s string) (net.HardwareAddr, error) {
	m, err := net.ParseMAC(s)
	if err != nil || len(m) != 6 {
		return nil, fmt.Errorf("invalid MAC address %q: want six hex bytes such as 02:00:00:00:00:01", s)
	}
	if m[0]&1 != 0 {
		return nil, fmt.Errorf("MAC address %s is a multicast address", s)
	}
	return m, nil
}

// New returns a device with the given MAC over be, which it owns.
func New(mac net.HardwareAddr, be Backend) *Device {
	d := &Device{mac: mac, be: be, rxDone: make(chan struct{})}
	go d.rxPump()
	return d
}

// MAC is the guest's MAC address.
func (d *Device) MAC() net.HardwareAddr { return d.mac }

// Close resets the device and closes the backend. The transport must
// have stopped the device first (its kicks closed), as MMIO.Close does.
func (d *Device) Close() error {
	d.Reset()
	err := d.be.Close()
	<-d.rxDone
	return err
}

// Type implements virtio.Device.
func (d *Device) Type() virtio.Type { return virtio.TypeNet }

// Features implements virtio.Device.
func (d *Device) Features() uint64 {
	return FeatureMAC | FeatureStatus | d.be.Offloads()
}

// QueueMaxSizes implements virtio.Device: receive and transmit.
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize, QueueSize} }

// ReadConfig implements virtio.Device: mac, status, max_virtqueue_pairs.
func (d *Device) ReadConfig(off uint64, p []byte) {
	var cfg [10]byte
	copy(cfg[:6], d.mac)
	binary.LittleEndian.PutUint16(cfg[6:], statusLinkUp)
	binary.LittleEndian.PutUint16(cfg[8:], 1)
	virtio.ReadConfigFrom(cfg[:], off, p)
}

// WriteConfig implements virtio.Device; the MAC is not writable.
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate implements virtio.Device.
func (d *Device) Activate(a virtio.Activation) error {
	if !a.Queues[rxQueue].Ready || !a.Queues[txQueue].Ready {
		return errors.New("receive or transmit queue not enabled")
	}
	if err := d.be.SetOffloads(a.Features & d.be.Offloads()); err != nil {
		return fmt.Errorf("set backend offloads: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.act = &a
	d.stop = make(chan struct{})
	stop := d.stop
	d.tx.Start(a, txQueue, func(c virtio.Chain, chainErr error) uint32 {
		if d.txLimit.Wait(virtio.Len(c.Readable), stop) {
			d.transmit(a, c, chainErr)
		}
		return 0
	})
	return nil
}

// SetRateLimits bounds the frames the device moves per second, received
// (rx) and transmitted (tx): each frame takes its length from a bandwidth
// bucket and one operation. Call it before the guest runs; nil means no
// limit.
func (d *Device) SetRateLimits(rx, tx *ratelimit.Limiter) { d.rxLimit, d.txLimit = rx, tx }

// Reset implements virtio.Device.
func (d *Device) Reset() {
	d.mu.Lock()
	if d.act == nil {
		d.mu.Unlock()
		return
	}
	d.act = nil
	close(d.stop) // ends a wait for a rate limit
	d.mu.Unlock()
	d.tx.Stop()
	// Wait out a delivery that began before act was cleared: its wait for
	// a receive buffer ends because the transport closed the kicks.
	d.rxMu.Lock()
	d.rxMu.Unlock()
}

// transmit sends one frame from the guest to the backend.
func (d *Device) transmit(a virtio.Activation, c virtio.Chain, chainErr error) {
	n := virtio.Len(c.Readable)
	if chainErr != nil || n < HeaderSize || n > MaxFrame {
		return
	}
	if d.txBuf == nil {
		d.txBuf = make([]byte, MaxFrame)
	}
	buf := d.txBuf[:n]
	if k, err := virtio.Gather(a.Mem, c.Readable, buf); err != nil || uint64(k) != n {
		return
	}
	d.be.Write(buf) // a backend that cannot take it drops it, like a wire; it keeps no reference
}

// current returns the activation, or nil, and the channel its Reset
// closes.
func (d *Device) current() (*virtio.Activation, chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.act, d.stop
}

// rxPump reads frames from the backend until it is closed and puts each
// in the guest's next receive buffer, waiting for one if needed; frames
// that arrive while the device is not active are dropped.
func (d *Device) rxPump() {
	defer close(d.rxDone)
	buf := make([]byte, MaxFrame)
	for {
		n, err := d.be.Read(buf)
		if err != nil {
			return
		}
		if n < HeaderSize {
			continue
		}
		// num_buffers: always one buffer per frame (no MRG_RXBUF).
		binary.LittleEndian.PutUint16(buf[10:], 1)
		d.deliver(buf[:n])
	}
}

// deliver puts one frame into a receive buffer. It holds rxMu while it
// uses the activation's queue: see Reset.
func (d *Device) deliver(frame []byte) {
	d.rxMu.Lock()
	defer d.rxMu.Unlock()
	a, stop := d.current()
	if a == nil || !d.rxLimit.Wait(uint64(len(frame)), stop) {
		return
	}
	chainErr, ok := virtio.NextChain(*a, rxQueue, &d.rx)
	if !ok {
		return
	}
	c := &d.rx
	var n uint32
	if chainErr == nil && virtio.Len(c.Writable) >= uint64(len(frame)) {
		if k, err := virtio.Scatter(a.Mem, c.Writable, frame); err == nil {
			n = uint32(k)
		}
	}
	q := a.Queues[rxQueue]
	if err := q.Push(a.Mem, c.Head, n); err != nil {
		a.Fail(fmt.Errorf("receive queue: %w", err))
		return
	}
	a.Interrupt(q)
}
