// Package tap is a virtio-net backend on a Linux TAP device opened with
// IFF_VNET_HDR, so that frames keep their virtio-net headers and the
// guest's checksum and segmentation offloads pass through to the host
// kernel.
//
// A TAP that does not exist is created (which needs CAP_NET_ADMIN),
// brought up and, when asked, given a host address; it is not persistent,
// so it disappears with capsule. An existing TAP (for example one made with
// "ip tuntap add NAME mode tap user USER") is used as it is and left in
// place.
package tap

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	vnet "github.com/capsule-vm/capsule/virtio/net"
)

// TAP is an open TAP device.
type TAP struct {
	name    string
	f       *os.File
	created bool
}

// Open opens (or creates) the TAP device name. When capsule creates it,
// hostAddr, if not nil, is assigned to it.
func Open(name string, hostAddr *net.IPNet) (*TAP, error) {
	if len(name) == 0 || len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("TAP name %q: want 1 to %d characters", name, unix.IFNAMSIZ-1)
	}
	_, err := netlink.LinkByName(name)
	existed := err == nil
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("TAP %s: open /dev/net/tun: %w (is the tun module loaded?)", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TAP %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		switch {
		case errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("TAP %s: permission denied: creating a TAP needs CAP_NET_ADMIN; run as root, or create it first with: ip tuntap add %s mode tap user $USER", name, name)
		case errors.Is(err, unix.EBUSY):
			return nil, fmt.Errorf("TAP %s is in use by another process", name)
		case errors.Is(err, unix.EINVAL) && existed:
			return nil, fmt.Errorf("TAP %s: an interface of that name exists and is not a TAP with virtio-net headers", name)
		}
		return nil, fmt.Errorf("TAP %s: TUNSETIFF: %w", name, err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vnet.HeaderSize); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TAP %s: TUNSETVNETHDRSZ: %w", name, err)
	}
	t := &TAP{name: name, f: os.NewFile(uintptr(fd), "/dev/net/tun:"+name), created: !existed}
	if t.created {
		if err := t.configure(hostAddr); err != nil {
			t.Close()
			return nil, err
		}
	}
	return t, nil
}

// configure brings a TAP capsule created up, with hostAddr.
func (t *TAP) configure(hostAddr *net.IPNet) error {
	link, err := netlink.LinkByName(t.name)
	if err != nil {
		return fmt.Errorf("TAP %s: %w", t.name, err)
	}
	if hostAddr != nil {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: hostAddr}); err != nil {
			return fmt.Errorf("TAP %s: add address %s: %w", t.name, hostAddr, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("TAP %s: set up: %w", t.name, err)
	}
	return nil
}

// Name is the interface name.
func (t *TAP) Name() string { return t.name }

// Created reports whether capsule created the TAP (it then goes away when
// capsule closes it).
func (t *TAP) Created() bool { return t.created }

// Offloads implements vnet.Backend: checksum offload and TSO both ways.
func (t *TAP) Offloads() uint64 {
	return vnet.FeatureCsum | vnet.FeatureGuestCsum | vnet.FeatureGuestTSO4 | vnet.FeatureGuestTSO6 |
		vnet.FeatureHostTSO4 | vnet.FeatureHostTSO6
}

// SetOffloads implements vnet.Backend: the kernel may hand the guest
// partially checksummed or TSO frames only if it accepted them.
func (t *TAP) SetOffloads(features uint64) error {
	var flags int
	if features&vnet.FeatureGuestCsum != 0 {
		flags |= unix.TUN_F_CSUM
		if features&vnet.FeatureGuestTSO4 != 0 {
			flags |= unix.TUN_F_TSO4
		}
		if features&vnet.FeatureGuestTSO6 != 0 {
			flags |= unix.TUN_F_TSO6
		}
	}
	sc, err := t.f.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	if err := sc.Control(func(fd uintptr) { ioErr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, flags) }); err != nil {
		return err
	}
	if ioErr != nil {
		return fmt.Errorf("TAP %s: TUNSETOFFLOAD: %w", t.name, ioErr)
	}
	return nil
}

// Read implements vnet.Backend.
func (t *TAP) Read(p []byte) (int, error) { return t.f.Read(p) }

// Write implements vnet.Backend.
func (t *TAP) Write(p []byte) (int, error) { return t.f.Write(p) }

// Close implements vnet.Backend. A TAP capsule created disappears.
func (t *TAP) Close() error { return t.f.Close() }
