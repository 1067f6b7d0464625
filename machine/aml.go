package machine

import "fmt"

// A few AML (ACPI Machine Language, ACPI 6.5 chapter 20) encoders: enough
// for the DSDT's fixed objects. Each returns the encoded bytes.

const (
	amlNameOp       = 0x08
	amlBytePrefix   = 0x0a
	amlStringPrefix = 0x0d
	amlBufferOp     = 0x11
	amlPackageOp    = 0x12
	amlExtOpPrefix  = 0x5b
	amlDeviceOp     = 0x82 // after amlExtOpPrefix
	amlRootChar     = '\\'
	amlDualName     = 0x2e
)

// amlPkgLength prefixes body with its PkgLength, which counts its own
// bytes too.
func amlPkgLength(body []byte) []byte {
	n := len(body)
	for extra := 0; extra < 4; extra++ {
		total := n + 1 + extra
		if extra == 0 && total < 1<<6 {
			return append([]byte{byte(total)}, body...)
		}
		if extra > 0 && total < 1<<(4+8*extra) {
			b := []byte{byte(extra<<6 | total&0xf)}
			for i := range extra {
				b = append(b, byte(total>>(4+8*i)))
			}
			return append(b, body...)
		}
	}
	// invariant: only the fixed DSDT objects below are encoded, at package
	// initialisation, and each is far below the 256 MiB PkgLength limit.
	panic(fmt.Sprintf("aml: package of %d bytes", n))
}

// amlName is Name(name, value) for a 4-character name segment (or a
// path such as `\_SB_PEVT`, encoded by amlPath).
func amlName(seg string, value []byte) []byte {
	return append(append([]byte{amlNameOp}, amlPath(seg)...), value...)
}

// amlPath encodes a name: a 4-character segment, or `\` followed by two
// segments (a rooted dual name path such as `\_SB_PEVT`).
func amlPath(p string) []byte {
	switch {
	case len(p) == 4:
		return []byte(p)
	case len(p) == 9 && p[0] == amlRootChar:
		return append([]byte{amlRootChar, amlDualName}, p[1:]...)
	}
	// invariant: names come from the fixed DSDT objects below, never from
	// a guest or a user.
	panic("aml: unsupported name " + p)
}

func amlByte(v byte) []byte { return []byte{amlBytePrefix, v} }

func amlString(s string) []byte {
	return append(append([]byte{amlStringPrefix}, s...), 0)
}

func amlBuffer(data []byte) []byte {
	body := append(amlByte(byte(len(data))), data...)
	return append([]byte{amlBufferOp}, amlPkgLength(body)...)
}

// amlPackage is a Package of byte constants.
func amlPackage(elems ...byte) []byte {
	body := []byte{byte(len(elems))}
	for _, e := range elems {
		if e <= 1 {
			body = append(body, e) // ZeroOp, OneOp
		} else {
			body = append(body, amlByte(e)...)
		}
	}
	return append([]byte{amlPackageOp}, amlPkgLength(body)...)
}

func amlDevice(path string, objects ...[]byte) []byte {
	body := amlPath(path)
	for _, o := range objects {
		body = append(body, o...)
	}
	return append([]byte{amlExtOpPrefix, amlDeviceOp}, amlPkgLength(body)...)
}

// amlIOResource is a resource template holding one fixed 16-bit-decoded
// I/O port range of n ports at port, and the end tag.
func amlIOResource(port uint16, n byte) []byte {
	return amlBuffer([]byte{
		0x47, 0x01, // I/O port descriptor, 16-bit decode
		byte(port), byte(port >> 8), byte(port), byte(port >> 8), // minimum, maximum
		0x01, n, // alignment, length
		0x79, 0x00, // end tag, checksum 0 (none)
	})
}

// PVPanicPort is the I/O port of the ISA pvpanic device the DSDT
// describes (QEMU's address; the device is package devices').
const PVPanicPort = 0x505

// dsdtAML is the DSDT body:
//
//	Name (_S5, Package (2) {0, 0})      the sleep type values for soft-off
//	Device (\_SB.PEVT) {                QEMU's pvpanic device, which Linux's
//	    Name (_HID, "QEMU0001")         pvpanic driver binds to, so that a
//	    Name (_CRS, ResourceTemplate () kernel panic is reported to capsule
//	        { IO (Decode16, 0x505, 0x505, 1, 1) })
//	    Name (_STA, 0x0F)               present, enabled, shown, working
//	}
var dsdtAML = append(
	amlName("_S5_", amlPackage(0, 0)),
	amlDevice(`\_SB_PEVT`,
		amlName("_HID", amlString("QEMU0001")),
		amlName("_CRS", amlIOResource(PVPanicPort, 1)),
		amlName("_STA", amlByte(0x0f)),
	)...,
)
