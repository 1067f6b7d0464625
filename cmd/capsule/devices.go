package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/capsule-vm/capsule/internal/ratelimit"
	vnet "github.com/capsule-vm/capsule/virtio/net"
	"github.com/capsule-vm/capsule/virtio/net/usernet"
	"github.com/capsule-vm/capsule/virtio/p9"
	"github.com/capsule-vm/capsule/virtio/vsock"
	"github.com/capsule-vm/capsule/vmm"
)

// deviceFlags collects the device flags of capsule run in the order they
// appear on the command line, which is the order of the VM's device
// slots. Values are parsed once flag parsing is done (Devices), so that a
// bad one is reported in capsule's words rather than pflag's.
type deviceFlags struct {
	given []givenDevice
	vsock int // --vsock flags parsed
}

type givenDevice struct {
	parse func(string) (vmm.Device, error)
	val   string
}

// Devices parses the device flags, in command-line order.
func (d *deviceFlags) Devices() ([]vmm.Device, error) {
	var specs []vmm.Device
	for _, g := range d.given {
		if g.parse == nil {
			continue // a boolean device flag turned off again
		}
		spec, err := g.parse(g.val)
		if err != nil {
			return nil, err
		}
		specs = append(specs, spec)
	}
	return specs, nil
}

// deviceFlag is one repeatable device flag.
type deviceFlag struct {
	all   *deviceFlags
	parse func(string) (vmm.Device, error)
	vals  []string
}

func (f *deviceFlag) String() string { return strings.Join(f.vals, " ") }
func (f *deviceFlag) Type() string   { return "string" }

func (f *deviceFlag) Set(s string) error {
	f.vals = append(f.vals, s)
	f.all.given = append(f.all.given, givenDevice{f.parse, s})
	return nil
}

// boolDeviceFlag is a device flag without a value, such as --rng: the
// device is added once, where the flag first turned it on, and the last
// value given wins (--rng --rng=false adds none).
type boolDeviceFlag struct {
	all *deviceFlags
	dev vmm.Device
	at  int // index in all.given, or -1
}

func (f *boolDeviceFlag) String() string   { return strconv.FormatBool(f.at >= 0) }
func (f *boolDeviceFlag) Type() string     { return "bool" }
func (f *boolDeviceFlag) IsBoolFlag() bool { return true }

func (f *boolDeviceFlag) Set(s string) error {
	on, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("want true or false")
	}
	switch {
	case on && f.at < 0:
		dev := f.dev
		f.at = len(f.all.given)
		f.all.given = append(f.all.given, givenDevice{func(string) (vmm.Device, error) { return dev, nil }, s})
	case !on && f.at >= 0:
		f.all.given[f.at].parse = nil // dropped
		f.at = -1
	}
	return nil
}

// add defines the device flags on fs.
func (d *deviceFlags) add(fs *pflag.FlagSet) {
	fs.Var(&deviceFlag{all: d, parse: parseDisk}, "disk", "add a virtio-blk disk: the image file `PATH`, with ,ro to make guest writes fail\n"+
		"(repeatable; the first is /dev/vda). The image is locked while the VM runs, so\n"+
		"no second VM can write it. bw=RATE and iops=RATE bound the bytes and requests per\n"+
		"second (e.g. bw=50M,iops=1000; a second's worth may come at once)")
	fs.Var(&deviceFlag{all: d, parse: parseNet}, "net", "add a virtio-net interface `MODE` (repeatable; eth0, eth1, ...); MODE is one of\n"+
		"  user[,OPTION]...  rootless user-mode network: the guest gets 10.0.2.15/24 by DHCP\n"+
		"      (gateway 10.0.2.2, DNS 10.0.2.3). It is closed to the host by default: the guest\n"+
		"      reaches public addresses only; TCP and UDP to 10.0.2.3 port 53 go to the host's\n"+
		"      resolver (the first nameserver of /etc/resolv.conf, wherever it is); host loopback\n"+
		"      (127/8, or 10.0.2.2), link-local (169.254/16: cloud metadata; fe80::/10), private\n"+
		"      ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7), the host's own addresses,\n"+
		"      broadcast, multicast and reserved ones are refused (TCP reset, UDP dropped), and so\n"+
		"      is every other 10.0.2.x: none ever becomes a host connection. OPTIONs:\n"+
		"    hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT  a host port reaches a guest port\n"+
		"        (repeatable, tcp or udp; works whatever the policy)\n"+
		"    hostloopback=on  10.0.2.2 reaches the host's 127.0.0.1, port for port\n"+
		"    allow=CIDR       the guest may reach that range (repeatable), e.g. allow=192.168.1.0/24\n"+
		"    restrict=on      refuse public addresses and DNS too (as QEMU's restrict=on);\n"+
		"        hostfwd, hostloopback=on and allow= still apply\n"+
		"      At most "+strconv.Itoa(usernet.MaxTCPConns)+" TCP connections at once (more are reset) and "+strconv.Itoa(usernet.MaxUDPFlows)+" UDP flows\n"+
		"      (a new one evicts the flow idle longest; a flow idle "+strconv.Itoa(int(usernet.UDPIdle.Seconds()))+" s ends)\n"+
		"  tap:NAME[,ip=ADDR/PREFIX]  the host TAP device NAME; one that does not exist is created\n"+
		"      (root or CAP_NET_ADMIN), brought up with ip= as the host's address, and removed when\n"+
		"      capsule exits; an existing one is used as it is\n"+
		"and mac=MAC sets the guest's MAC (default: random); bw=RATE and pps=RATE bound the bytes\n"+
		"and frames per second in each direction (e.g. bw=10M,pps=5000)")
	fs.Var(&deviceFlag{all: d, parse: d.parseVsock}, "vsock", "add a virtio-vsock device: the guest's context ID and the host's Unix socket,\n"+
		"as `CID,UDS_PATH`. A host program connects to UDS_PATH and writes \"CONNECT <port>\\n\" to reach\n"+
		"a guest port (answer: \"OK <host-port>\\n\"); guest connections to CID 2 port P go to\n"+
		"UDS_PATH_P, where a host program listens")
	fs.Var(&deviceFlag{all: d, parse: parseShare}, "share", "add a virtio-9p share, `HOSTDIR:TAG[,ro]`: the host directory HOSTDIR under the mount\n"+
		"tag TAG (repeatable, one TAG each, 1-"+strconv.Itoa(p9.MaxTagLen)+" bytes), which the guest mounts with\n"+
		"  mount -t 9p -o trans=virtio,version=9p2000.L TAG /mnt\n"+
		"and reaches nothing outside HOSTDIR: no walk leaves it, symbolic links are not followed on\n"+
		"the host, device nodes are neither opened nor made, and set-user/group-ID bits are dropped\n"+
		"from what the guest creates or chmods. ,ro refuses every change (EROFS). Run as root, capsule\n"+
		"gives what the guest creates the guest's uid and gid (and keeps CAP_CHOWN, CAP_DAC_OVERRIDE,\n"+
		"CAP_DAC_READ_SEARCH and CAP_FOWNER for it); otherwise it belongs to capsule's user")
	fs.Var(&boolDeviceFlag{all: d, dev: vmm.RNG{}, at: -1}, "rng", "add a virtio-rng device fed by the host's getrandom (the guest's /dev/hwrng)")
	fs.Lookup("rng").NoOptDefVal = "true"
}

// parseDisk parses a --disk value: PATH[,ro|,rw].
func parseDisk(s string) (vmm.Device, error) {
	path, opts, _ := strings.Cut(s, ",")
	if path == "" {
		return nil, fmt.Errorf("--disk %q: want PATH[,ro]", s)
	}
	d := vmm.Disk{Path: path}
	if opts != "" {
		for _, o := range strings.Split(opts, ",") {
			key, val, _ := strings.Cut(o, "=")
			switch key {
			case "ro", "readonly":
				d.ReadOnly = true
			case "rw":
				d.ReadOnly = false
			case "bw", "iops":
				if err := setRate(&d.Rate, key, val); err != nil {
					return nil, fmt.Errorf("--disk %q: %w", s, err)
				}
			default:
				return nil, fmt.Errorf("--disk %q: unknown option %q (known: ro, rw, bw, iops)", s, o)
			}
		}
	}
	return d, nil
}

// setRate sets one side of a rate limit from a device option: bw=RATE
// (bytes per second) or iops=/pps=RATE (requests or frames per second).
func setRate(r *vmm.RateLimit, key, val string) error {
	v, err := ratelimit.ParseRate(val)
	if err != nil {
		return fmt.Errorf("%s=: %w", key, err)
	}
	if key == "bw" {
		r.Bandwidth = v
	} else {
		r.Ops = v
	}
	return nil
}

// parseShare parses a --share value: HOSTDIR:TAG[,ro|,rw] (HOSTDIR may
// hold ':'; the last one ends it).
func parseShare(s string) (vmm.Device, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return nil, fmt.Errorf("--share %q: want HOSTDIR:TAG[,ro]", s)
	}
	tag, opts, _ := strings.Cut(s[i+1:], ",")
	sh := vmm.Share{HostDir: s[:i], Tag: tag}
	if err := p9.ValidateTag(tag); err != nil {
		return nil, fmt.Errorf("--share %q: %w", s, err)
	}
	if opts != "" {
		for _, o := range strings.Split(opts, ",") {
			switch o {
			case "ro", "readonly":
				sh.ReadOnly = true
			case "rw":
				sh.ReadOnly = false
			default:
				return nil, fmt.Errorf("--share %q: unknown option %q (known: ro, rw)", s, o)
			}
		}
	}
	return sh, nil
}

// parseVsock parses a --vsock value: CID,UDS_PATH. A VM has one.
func (d *deviceFlags) parseVsock(s string) (vmm.Device, error) {
	if d.vsock++; d.vsock > 1 {
		return nil, fmt.Errorf("--vsock given %d times: a VM has one vsock device (one CID)", d.vsock)
	}
	cidStr, path, ok := strings.Cut(s, ",")
	if !ok || path == "" {
		return nil, fmt.Errorf("--vsock %q: want CID,UDS_PATH", s)
	}
	cid, err := strconv.ParseUint(cidStr, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("--vsock %q: CID %q is not a number", s, cidStr)
	}
	if err := vsock.ValidateCID(cid); err != nil {
		return nil, fmt.Errorf("--vsock %q: %w", s, err)
	}
	return vmm.Vsock{CID: cid, Path: path}, nil
}

// parseNet parses a --net value: tap:NAME[,mac=MAC][,ip=ADDR/PREFIX] or
// user[,mac=MAC][,hostfwd=RULE]...[,hostloopback=on][,allow=CIDR]...[,restrict=on].
func parseNet(s string) (vmm.Device, error) {
	var n vmm.Net
	var opts string
	switch {
	case s == "user" || strings.HasPrefix(s, "user,"):
		n.User = true
		_, opts, _ = strings.Cut(s, ",")
	case strings.HasPrefix(s, "tap:"):
		n.TAP, opts, _ = strings.Cut(strings.TrimPrefix(s, "tap:"), ",")
		if n.TAP == "" {
			return nil, fmt.Errorf("--net %q: the TAP needs a name, as in tap:tap0", s)
		}
	default:
		return nil, fmt.Errorf("--net %q: want user[,hostfwd=tcp:HOSTPORT-:GUESTPORT...][,hostloopback=on][,allow=CIDR][,restrict=on] or tap:NAME[,mac=MAC][,ip=ADDR/PREFIX]", s)
	}
	if opts == "" {
		return n, nil
	}
	for _, o := range strings.Split(opts, ",") {
		key, val, _ := strings.Cut(o, "=")
		switch {
		case key == "hostfwd" && n.User:
			f, err := usernet.ParseHostFwd(val)
			if err != nil {
				return nil, fmt.Errorf("--net %q: %w", s, err)
			}
			n.HostFwds = append(n.HostFwds, f)
		case (key == "hostloopback" || key == "restrict") && n.User:
			on, err := onOff(val)
			if err != nil {
				return nil, fmt.Errorf("--net %q: %s=%s: %w", s, key, val, err)
			}
			if key == "hostloopback" {
				n.HostLoopback = on
			} else {
				n.Restrict = on
			}
		case key == "allow" && n.User:
			p, err := parseAllow(val)
			if err != nil {
				return nil, fmt.Errorf("--net %q: allow=%s: %w", s, val, err)
			}
			n.Allow = append(n.Allow, p)
		case key == "ip" && n.User:
			return nil, fmt.Errorf("--net %q: ip= is for tap; the user network's addresses are fixed (guest 10.0.2.15, host 10.0.2.2)", s)
		case key == "bw" || key == "pps":
			if err := setRate(&n.Rate, key, val); err != nil {
				return nil, fmt.Errorf("--net %q: %w", s, err)
			}
		case key == "mac":
			m, err := vnet.ParseMAC(val)
			if err != nil {
				return nil, fmt.Errorf("--net %q: %w", s, err)
			}
			n.MAC = m
		case key == "ip":
			ip, ipnet, err := net.ParseCIDR(val)
			if err != nil {
				return nil, fmt.Errorf("--net %q: ip=%s: want an address with a prefix length, such as 10.0.0.1/24", s, val)
			}
			ipnet.IP = ip
			n.HostAddr = ipnet
		default:
			known := "mac, bw, pps, ip"
			if n.User {
				known = "mac, bw, pps, hostfwd, hostloopback, allow, restrict"
			}
			return nil, fmt.Errorf("--net %q: unknown option %q (known: %s)", s, key, known)
		}
	}
	return n, nil
}

// onOff parses the value of an on/off option (QEMU's spellings).
func onOff(v string) (bool, error) {
	switch v {
	case "on", "yes", "true":
		return true, nil
	case "off", "no", "false":
		return false, nil
	}
	return false, errors.New("want on or off")
}

// parseAllow parses an allow= value: an address prefix, or one address.
func parseAllow(v string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(v)
	if err != nil {
		a, aerr := netip.ParseAddr(v)
		if aerr != nil {
			return netip.Prefix{}, errors.New("want an address range such as 192.168.1.0/24, or an address")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	p = p.Masked()
	if own := netip.MustParsePrefix("10.0.2.0/24"); own.Overlaps(p) && p.Bits() >= own.Bits() {
		return netip.Prefix{}, errors.New("10.0.2.0/24 is the user network's own: its addresses never reach the host")
	}
	return p, nil
}
