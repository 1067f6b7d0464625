package vmm

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/capsule-vm/capsule/kvm"
	"github.com/capsule-vm/capsule/virtio"
	"github.com/capsule-vm/capsule/virtio/blk"
	vnet "github.com/capsule-vm/capsule/virtio/net"
	"github.com/capsule-vm/capsule/virtio/net/tap"
	"github.com/capsule-vm/capsule/virtio/net/usernet"
	"github.com/capsule-vm/capsule/virtio/rng"
	"github.com/capsule-vm/capsule/virtio/vsock"
)

// Virtio-mmio layout. Device n (in the order disks, nets, vsock, rng) has its 4 KiB
// register window at VirtioBase + n*virtio.MMIOSize, inside the 32-bit
// MMIO hole, and raises ISA interrupt VirtioIRQs[n] of the I/O APIC
// (edge-triggered, as Linux wires legacy IRQs). The kernel learns of each
// device from a virtio_mmio.device=4K@ADDR:IRQ command-line parameter that
// capsule appends.
const VirtioBase = 0xd0000000

// VirtioIRQs are the legacy interrupt lines free on capsule's machine,
// one per virtio device; their number bounds the device count.
var VirtioIRQs = []uint32{5, 6, 7, 10, 11, 14, 15, 3, 12}

// Disk is a virtio-blk disk of a VM.
type Disk struct {
	Path     string
	ReadOnly bool
}

// ParseDisk parses a --disk value: PATH[,ro|,rw].
func ParseDisk(s string) (Disk, error) {
	path, opts, _ := strings.Cut(s, ",")
	if path == "" {
		return Disk{}, fmt.Errorf("--disk %q: want PATH[,ro]", s)
	}
	d := Disk{Path: path}
	if opts != "" {
		for _, o := range strings.Split(opts, ",") {
			switch o {
			case "ro", "readonly":
				d.ReadOnly = true
			case "rw":
				d.ReadOnly = false
			default:
				return Disk{}, fmt.Errorf("--disk %q: unknown option %q (known: ro, rw)", s, o)
			}
		}
	}
	return d, nil
}

// Vsock is a VM's vsock device: the guest's CID and the Unix socket the
// host side uses (see package virtio/vsock).
type Vsock struct {
	CID  uint64
	Path string
}

// ParseVsock parses a --vsock value: CID,UDS_PATH.
func ParseVsock(s string) (Vsock, error) {
	cidStr, path, ok := strings.Cut(s, ",")
	if !ok || path == "" {
		return Vsock{}, fmt.Errorf("--vsock %q: want CID,UDS_PATH", s)
	}
	cid, err := strconv.ParseUint(cidStr, 10, 64)
	if err != nil {
		return Vsock{}, fmt.Errorf("--vsock %q: CID %q is not a number", s, cidStr)
	}
	if err := vsock.ValidateCID(cid); err != nil {
		return Vsock{}, fmt.Errorf("--vsock %q: %w", s, err)
	}
	return Vsock{CID: cid, Path: path}, nil
}

// Net is a virtio-net interface of a VM: on a TAP device, or on the
// user-mode network when User is set.
type Net struct {
	// User selects the rootless user-mode network (package usernet), with
	// HostFwds.
	User     bool
	HostFwds []usernet.HostFwd
	// TAP is the name of the host TAP device.
	TAP string
	// HostAddr is given to a TAP capsule creates (nil: none).
	HostAddr *net.IPNet
	// MAC is the guest's address; nil picks a random local one.
	MAC net.HardwareAddr
}

// ParseNet parses a --net value: tap:NAME[,mac=MAC][,ip=ADDR/PREFIX] or
// user[,mac=MAC][,hostfwd=RULE]....
func ParseNet(s string) (Net, error) {
	var n Net
	var opts string
	switch {
	case s == "user" || strings.HasPrefix(s, "user,"):
		n.User = true
		_, opts, _ = strings.Cut(s, ",")
	case strings.HasPrefix(s, "tap:"):
		n.TAP, opts, _ = strings.Cut(strings.TrimPrefix(s, "tap:"), ",")
		if n.TAP == "" {
			return Net{}, fmt.Errorf("--net %q: the TAP needs a name, as in tap:tap0", s)
		}
	default:
		return Net{}, fmt.Errorf("--net %q: want user[,hostfwd=tcp:HOSTPORT-:GUESTPORT...] or tap:NAME[,mac=MAC][,ip=ADDR/PREFIX]", s)
	}
	if opts != "" {
		for _, o := range strings.Split(opts, ",") {
			key, val, _ := strings.Cut(o, "=")
			switch {
			case key == "hostfwd" && n.User:
				f, err := usernet.ParseHostFwd(val)
				if err != nil {
					return Net{}, fmt.Errorf("--net %q: %w", s, err)
				}
				n.HostFwds = append(n.HostFwds, f)
				continue
			case key == "ip" && n.User:
				return Net{}, fmt.Errorf("--net %q: ip= is for tap; the user network's addresses are fixed (guest 10.0.2.15, host 10.0.2.2)", s)
			}
			switch key {
			case "mac":
				m, err := vnet.ParseMAC(val)
				if err != nil {
					return Net{}, fmt.Errorf("--net %q: %w", s, err)
				}
				n.MAC = m
			case "ip":
				ip, ipnet, err := net.ParseCIDR(val)
				if err != nil {
					return Net{}, fmt.Errorf("--net %q: ip=%s: want an address with a prefix length, such as 10.0.0.1/24", s, val)
				}
				ipnet.IP = ip
				n.HostAddr = ipnet
			default:
				known := "mac, ip"
				if n.User {
					known = "mac, hostfwd"
				}
				return Net{}, fmt.Errorf("--net %q: unknown option %q (known: %s)", s, key, known)
			}
		}
	}
	return n, nil
}

// virtioDev is one device with its transport and the file descriptors
// that connect it to KVM.
type virtioDev struct {
	base     uint64
	irq      uint32
	mmio     *virtio.MMIO
	close    func() error // the device's own resources (a disk's file)
	irqfd    int          // -1 when interrupts go through KVM_IRQ_LINE
	eventFDs []int        // the queues' ioeventfds
}

// virtioCmdline returns the virtio_mmio.device parameters for n devices.
func virtioCmdline(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, " virtio_mmio.device=4K@%#x:%d", VirtioBase+uint64(i)*virtio.MMIOSize, VirtioIRQs[i])
	}
	return b.String()
}

// openVirtio opens the devices cfg asks for: disks are opened and locked
// here, before the guest exists, so that a missing or busy image is an
// error before anything starts.
func openVirtio(cfg Config) ([]virtio.Device, []func() error, error) {
	var devs []virtio.Device
	var closers []func() error
	fail := func(err error) ([]virtio.Device, []func() error, error) {
		for _, c := range closers {
			c()
		}
		return nil, nil, err
	}
	seen := map[string]bool{}
	for _, d := range cfg.Disks {
		if seen[d.Path] {
			return fail(fmt.Errorf("--disk %s given twice", d.Path))
		}
		seen[d.Path] = true
	}
	for _, d := range cfg.Disks {
		b, err := blk.Open(d.Path, d.ReadOnly)
		if err != nil {
			return fail(err)
		}
		devs = append(devs, b)
		closers = append(closers, b.Close)
	}
	taps := map[string]bool{}
	for _, n := range cfg.Nets {
		var be vnet.Backend
		if n.User {
			u, err := usernet.New(n.HostFwds)
			if err != nil {
				return fail(fmt.Errorf("--net user: %w", err))
			}
			be = u
		} else {
			if taps[n.TAP] {
				return fail(fmt.Errorf("--net tap:%s given twice", n.TAP))
			}
			taps[n.TAP] = true
			t, err := tap.Open(n.TAP, n.HostAddr)
			if err != nil {
				return fail(fmt.Errorf("--net: %w", err))
			}
			be = t
		}
		mac := n.MAC
		if mac == nil {
			mac = vnet.RandomMAC()
		}
		d := vnet.New(mac, be)
		devs = append(devs, d)
		closers = append(closers, d.Close)
	}
	if cfg.Vsock != nil {
		d, err := vsock.Open(cfg.Vsock.CID, cfg.Vsock.Path)
		if err != nil {
			return fail(fmt.Errorf("--vsock: %w", err))
		}
		devs = append(devs, d)
		closers = append(closers, d.Close)
	}
	if cfg.RNG {
		devs = append(devs, rng.New())
		closers = append(closers, func() error { return nil })
	}
	if len(devs) > len(VirtioIRQs) {
		return fail(fmt.Errorf("%d virtio devices requested; capsule supports at most %d", len(devs), len(VirtioIRQs)))
	}
	return devs, closers, nil
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

// addVirtio puts the opened devices on the MMIO bus and wires their queue
// notifications to ioeventfds and their interrupts to irqfds.
func (v *VM) addVirtio(log io.Writer) error {
	for i, dev := range v.virtioDevs {
		d := &virtioDev{
			base:  VirtioBase + uint64(i)*virtio.MMIOSize,
			irq:   VirtioIRQs[i],
			close: v.virtioClosers[i],
			irqfd: -1,
		}
		v.virtio = append(v.virtio, d)
		if fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err == nil {
			if err := v.vm.AddIRQFD(fd, d.irq); err != nil {
				unix.Close(fd)
			} else {
				d.irqfd = fd
			}
		}
		name := dev.Type().String()
		d.mmio = virtio.NewMMIO(dev, v.mem, eventInterrupt{d.irqfd, v.vm, d.irq}, func(err error) {
			fmt.Fprintf(log, "capsule: %s at %#x: %v\n", name, d.base, err)
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

// closeVirtio stops every device, ends the notification goroutines and
// closes the devices' files (flushing disks). Call it before closing the
// VM.
func (v *VM) closeVirtio() error {
	var errs []error
	for _, d := range v.virtio {
		d.mmio.Close() // ends every wait on the eventfds first
		for _, fd := range d.eventFDs {
			unix.Close(fd)
		}
		if d.irqfd >= 0 {
			unix.Close(d.irqfd)
		}
	}
	// Devices opened but never wired (New failed half-way) are closed too.
	for _, c := range v.virtioClosers {
		errs = append(errs, c())
	}
	v.virtio, v.virtioClosers, v.virtioDevs = nil, nil, nil
	return errors.Join(errs...)
}
