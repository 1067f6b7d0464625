package vmm

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/capsule-vm/capsule/internal/ratelimit"
	"github.com/capsule-vm/capsule/virtio"
	"github.com/capsule-vm/capsule/virtio/blk"
	vnet "github.com/capsule-vm/capsule/virtio/net"
	"github.com/capsule-vm/capsule/virtio/net/tap"
	"github.com/capsule-vm/capsule/virtio/net/usernet"
	"github.com/capsule-vm/capsule/virtio/p9"
	"github.com/capsule-vm/capsule/virtio/p9/hostfs"
	"github.com/capsule-vm/capsule/virtio/rng"
	"github.com/capsule-vm/capsule/virtio/vsock"
)

// The device specs of this package, one per kind of virtio device.

// RateLimit bounds what a device moves per second: Bandwidth bytes and
// Ops operations (requests, or frames), each with a burst of one
// second's worth; 0 leaves that side unlimited (internal/ratelimit).
type RateLimit struct {
	Bandwidth, Ops uint64
}

// limiter returns the limiter for r, or nil when r limits nothing.
func (r RateLimit) limiter() *ratelimit.Limiter {
	if r == (RateLimit{}) {
		return nil
	}
	return ratelimit.New(ratelimit.Bucket{Size: r.Bandwidth}, ratelimit.Bucket{Size: r.Ops})
}

// Disk is a virtio-blk disk on a raw image file or block device.
type Disk struct {
	Path     string
	ReadOnly bool
	Rate     RateLimit // of requests: bytes and requests per second
}

func (d Disk) String() string { return "disk " + d.Path }

// Exclusive is the image's cleaned path: one image, one disk.
func (d Disk) Exclusive() string { return "disk image " + filepath.Clean(d.Path) }

func (d Disk) Open() (virtio.Device, error) {
	b, err := blk.Open(d.Path, d.ReadOnly)
	if err != nil {
		return nil, err
	}
	b.SetRateLimit(d.Rate.limiter())
	return b, nil
}

// Net is a virtio-net interface: on a host TAP device, or on the
// user-mode network when User is set.
type Net struct {
	// User selects the rootless user-mode network (package usernet), with
	// HostFwds. It is closed to the host by default; HostLoopback,
	// Restrict and Allow are usernet.Options' (see package usernet for the
	// policy).
	User         bool
	HostFwds     []usernet.HostFwd
	HostLoopback bool
	Restrict     bool
	Allow        []netip.Prefix
	// TAP is the name of the host TAP device.
	TAP string
	// HostAddr is given to a TAP capsule creates (nil: none).
	HostAddr *net.IPNet
	// MAC is the guest's address; nil picks a random local one.
	MAC net.HardwareAddr
	// Rate bounds each direction on its own: bytes and frames per second.
	Rate RateLimit
}

func (n Net) String() string {
	if n.User {
		return "net user"
	}
	return "net tap:" + n.TAP
}

// Exclusive is the TAP's name; user-mode networks share nothing.
func (n Net) Exclusive() string {
	if n.User {
		return ""
	}
	return "TAP " + n.TAP
}

func (n Net) Open() (virtio.Device, error) {
	var be vnet.Backend
	if n.User {
		u, err := usernet.New(usernet.Options{HostFwds: n.HostFwds, HostLoopback: n.HostLoopback, Restrict: n.Restrict, Allow: n.Allow})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n, err)
		}
		be = u
	} else {
		t, err := tap.Open(n.TAP, n.HostAddr)
		if err != nil {
			return nil, err // names the TAP
		}
		be = t
	}
	mac := n.MAC
	if mac == nil {
		mac = vnet.RandomMAC()
	}
	d := vnet.New(mac, be)
	d.SetRateLimits(n.Rate.limiter(), n.Rate.limiter())
	return d, nil
}

// Vsock is a virtio-vsock device: the guest's context ID and the Unix
// socket of the host side (see package virtio/vsock). A VM has at most
// one.
type Vsock struct {
	CID  uint64
	Path string
}

func (s Vsock) String() string { return fmt.Sprintf("vsock %d,%s", s.CID, s.Path) }

// Exclusive: a VM has one context ID, so one vsock device.
func (s Vsock) Exclusive() string { return "a vsock device" }

func (s Vsock) Open() (virtio.Device, error) {
	d, err := vsock.Open(s.CID, s.Path)
	if err != nil {
		return nil, fmt.Errorf("vsock: %w", err)
	}
	return d, nil
}

// RNG is a virtio-rng device fed by the host's getrandom(2).
type RNG struct{}

func (RNG) String() string               { return "rng" }
func (RNG) Exclusive() string            { return "" }
func (RNG) Open() (virtio.Device, error) { return rng.New(), nil }

// Share is a host directory the guest mounts over virtio-9p (9P2000.L):
//
//	mount -t 9p -o trans=virtio,version=9p2000.L TAG /mnt
//
// The guest reaches nothing outside HostDir, and with ReadOnly changes
// nothing in it (see package virtio/p9/hostfs). The tag names the device to
// the guest: 1 to p9.MaxTagLen bytes, one per VM.
type Share struct {
	HostDir  string
	Tag      string
	ReadOnly bool
}

func (s Share) String() string { return "share " + s.HostDir + ":" + s.Tag }

// Exclusive is the mount tag: two shares of one VM need two tags.
func (s Share) Exclusive() string { return "9p mount tag " + s.Tag }

func (s Share) Open() (virtio.Device, error) {
	if err := p9.ValidateTag(s.Tag); err != nil {
		return nil, fmt.Errorf("%s: %w", s, err)
	}
	fs, err := hostfs.Open(s.HostDir, s.ReadOnly)
	if err != nil {
		return nil, err // names the directory
	}
	d, err := p9.New(s.Tag, fs)
	if err != nil {
		fs.Close()
		return nil, err
	}
	return d, nil
}
