// Package rng is capsule's virtio-rng (entropy) device, backed by the
// host's getrandom(2).
package rng

import (
	"crypto/rand"
	"errors"

	"github.com/capsule-vm/capsule/virtio"
)

const (
	// QueueSize is the size of the device's one queue.
	QueueSize = 64
	// MaxRequest bounds the bytes given for one request; a driver asking
	// for more gets this many.
	MaxRequest = 64 << 10
)

// Device is a virtio-rng device.
type Device struct {
	server virtio.Server
}

// New returns a virtio-rng device.
func New() *Device { return &Device{} }

// Type implements virtio.Device.
func (d *Device) Type() virtio.Type { return virtio.TypeRNG }

// Features implements virtio.Device; virtio-rng has none of its own.
func (d *Device) Features() uint64 { return 0 }

// QueueMaxSizes implements virtio.Device.
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize} }

// ReadConfig implements virtio.Device; there is no configuration space.
func (d *Device) ReadConfig(_ uint64, p []byte) { clear(p) }

// WriteConfig implements virtio.Device.
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate implements virtio.Device.
func (d *Device) Activate(a virtio.Activation) error {
	if !a.Queues[0].Ready {
		return errors.New("request queue not enabled")
	}
	d.server.Start(a, 0, func(c virtio.Chain, chainErr error) uint32 {
		return Handle(a, c, chainErr)
	})
	return nil
}

// Reset implements virtio.Device.
func (d *Device) Reset() { d.server.Stop() }

// Handle fills the chain's device-writable buffers with random bytes, at
// most MaxRequest, and returns how many it wrote.
func Handle(a virtio.Activation, c virtio.Chain, chainErr error) uint32 {
	if chainErr != nil {
		return 0
	}
	var n uint32
	for _, b := range c.Writable {
		if n == MaxRequest {
			break
		}
		k := min(b.Len, MaxRequest-n)
		s, err := a.Mem.Slice(b.Addr, uint64(k))
		if err != nil {
			break
		}
		rand.Read(s) // never fails (Go 1.24+)
		n += k
	}
	return n
}
