package usernet

import (
	"net"
	"net/netip"
	"strconv"
)

// The policy (see the package documentation) as pure functions: allowed
// and target decide, New applies.

// virtualNet is the user network's own address range.
var virtualNet = netip.MustParsePrefix("10.0.2.0/24")

// refused are the non-public ranges a guest does not reach unless allowed,
// beyond what netip.Addr's predicates catch.
var refused = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),     // "this network"
	netip.MustParsePrefix("100.64.0.0/10"), // shared address space (carrier-grade NAT)
	netip.MustParsePrefix("192.0.0.0/24"),  // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"), // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),   // reserved, and the broadcast address
}

// policy is what New makes of Options, with the host's own addresses.
type policy struct {
	hostLoopback bool
	restrict     bool
	allow        []netip.Prefix
	local        []netip.Addr // the addresses of the host's interfaces
	dns          string       // the host's resolver, host:port
}

// allowed reports whether the guest may reach dst, an address outside the
// user network, on the host's side.
func allowed(dst netip.Addr, p policy) bool {
	dst = dst.Unmap()
	if !dst.IsValid() || virtualNet.Contains(dst) {
		return false
	}
	for _, a := range p.allow {
		if a.Contains(dst) {
			return true
		}
	}
	if p.restrict || !dst.IsGlobalUnicast() || dst.IsPrivate() {
		return false // IsGlobalUnicast is false for loopback, link-local, multicast, unspecified, broadcast
	}
	for _, r := range refused {
		if r.Contains(dst) {
			return false
		}
	}
	for _, l := range p.local {
		if l.Unmap() == dst {
			return false
		}
	}
	return true
}

// target maps a destination the guest used (network "tcp" or "udp") to
// the host address capsule connects to, or reports false when the policy
// refuses it.
func target(network string, dst netip.AddrPort, p policy) (string, bool) {
	ip, port := dst.Addr().Unmap(), dst.Port()
	if virtualNet.Contains(ip) {
		switch {
		case ip == netip.AddrFrom4([4]byte(Gateway)) && p.hostLoopback:
			return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))), true
		case ip == netip.AddrFrom4([4]byte(DNS)) && port == 53 && !p.restrict && p.dns != "" &&
			(network == "tcp" || network == "udp"):
			return p.dns, true
		}
		return "", false
	}
	if !allowed(ip, p) {
		return "", false
	}
	return netip.AddrPortFrom(ip, port).String(), true
}

// hostAddrs returns the addresses of the host's interfaces.
func hostAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}
