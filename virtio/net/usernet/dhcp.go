package usernet

import (
	"encoding/binary"
	"net"
	"syscall"
)

var syscallEADDRINUSE = syscall.EADDRINUSE

// DHCP (RFC 2131) message types and option codes used here.
const (
	dhcpDiscover = 1
	dhcpOffer    = 2
	dhcpRequest  = 3
	dhcpAck      = 5

	optSubnet    = 1
	optRouter    = 3
	optDNS       = 6
	optLease     = 51
	optMsgType   = 53
	optServerID  = 54
	optEnd       = 255
	dhcpMagic    = 0x63825363
	bootpFixed   = 236 // BOOTP header before the magic cookie
	bootpMinSize = 300
	leaseSeconds = 86400
)

// dhcpReply answers a DHCPDISCOVER or DHCPREQUEST in an Ethernet frame
// from the guest with a whole Ethernet frame (OFFER or ACK of GuestIP),
// or returns nil when frame is not a DHCP request. Every length is
// checked: a malformed frame is just not DHCP.
func dhcpReply(frame []byte) []byte {
	be := binary.BigEndian
	if len(frame) < 14+20+8 || be.Uint16(frame[12:]) != 0x0800 {
		return nil
	}
	ip := frame[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || len(ip) < ihl+8 || ip[9] != 17 {
		return nil
	}
	udp := ip[ihl:]
	if be.Uint16(udp[2:]) != 67 {
		return nil
	}
	msg := udp[8:]
	if len(msg) < bootpFixed+4 || msg[0] != 1 || be.Uint32(msg[bootpFixed:]) != dhcpMagic {
		return nil
	}
	var typ byte
	for opts := msg[bootpFixed+4:]; len(opts) > 0; {
		code := opts[0]
		if code == optEnd {
			break
		}
		if code == 0 { // pad
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || len(opts) < 2+int(opts[1]) {
			return nil
		}
		if code == optMsgType && opts[1] == 1 {
			typ = opts[2]
		}
		opts = opts[2+int(opts[1]):]
	}
	var answer byte
	switch typ {
	case dhcpDiscover:
		answer = dhcpOffer
	case dhcpRequest:
		answer = dhcpAck
	default:
		return nil
	}

	// The reply's BOOTP message.
	reply := make([]byte, bootpFixed+4, bootpMinSize)
	reply[0], reply[1], reply[2] = 2, 1, 6 // BOOTREPLY, Ethernet, 6-byte addresses
	copy(reply[4:8], msg[4:8])             // xid
	copy(reply[10:12], msg[10:12])         // flags
	copy(reply[16:20], GuestIP)            // yiaddr
	copy(reply[20:24], Gateway)            // siaddr
	copy(reply[28:44], msg[28:44])         // chaddr
	be.PutUint32(reply[bootpFixed:], dhcpMagic)
	lease := make([]byte, 4)
	be.PutUint32(lease, leaseSeconds)
	for _, o := range []struct {
		code byte
		val  []byte
	}{
		{optMsgType, []byte{answer}},
		{optServerID, Gateway},
		{optLease, lease},
		{optSubnet, Netmask},
		{optRouter, Gateway},
		{optDNS, DNS},
	} {
		reply = append(reply, o.code, byte(len(o.val)))
		reply = append(reply, o.val...)
	}
	reply = append(reply, optEnd)
	for len(reply) < bootpMinSize {
		reply = append(reply, 0)
	}

	// UDP 67 -> 68, IPv4 from the gateway to broadcast, Ethernet broadcast.
	out := make([]byte, 14+20+8+len(reply))
	copy(out[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(out[6:12], gatewayHW)
	be.PutUint16(out[12:], 0x0800)
	h := out[14:34]
	h[0] = 0x45
	be.PutUint16(h[2:], uint16(20+8+len(reply)))
	h[8], h[9] = 64, 17
	copy(h[12:16], Gateway)
	copy(h[16:20], net.IPv4bcast.To4())
	be.PutUint16(h[10:], ipChecksum(h))
	u := out[34:42]
	be.PutUint16(u[0:], 67)
	be.PutUint16(u[2:], 68)
	be.PutUint16(u[4:], uint16(8+len(reply)))
	copy(out[42:], reply) // UDP checksum 0: none, allowed over IPv4
	return out
}

// ipChecksum is the IPv4 header checksum of h (whose checksum field is 0).
func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
