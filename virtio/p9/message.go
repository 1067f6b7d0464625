package p9

import (
	"encoding/binary"
	"strings"
)

// 9P2000.L message types the device looks at (the T-messages it passes to
// the server, and the R-messages it writes itself).
const (
	msgRlerror     = 7
	msgTstatfs     = 8
	msgTlopen      = 12
	msgTlcreate    = 14
	msgTsymlink    = 16
	msgTmknod      = 18
	msgTrename     = 20
	msgTreadlink   = 22
	msgTgetattr    = 24
	msgTsetattr    = 26
	msgTxattrwalk  = 30
	msgTxattrcreat = 32
	msgTreaddir    = 40
	msgTfsync      = 50
	msgTlock       = 52
	msgTgetlock    = 54
	msgRgetlock    = 55
	msgTlink       = 70
	msgTmkdir      = 72
	msgTrenameat   = 74
	msgTunlinkat   = 76
	msgTversion    = 100
	msgRversion    = 101
	msgTauth       = 102
	msgTattach     = 104
	msgRattach     = 105
	msgTflush      = 108
	msgRflush      = 109
	msgTwalk       = 110
	msgRwalk       = 111
	msgTread       = 116
	msgTwrite      = 118
	msgTclunk      = 120
	msgTremove     = 122
)

// maxNameLen is the longest file name (NAME_MAX).
const maxNameLen = 255

// Linux errno values the device answers with itself.
const (
	errEPERM        = 1
	errENAMETOOLONG = 36
	errEBUSY        = 16
	errEINVAL       = 22
	errEMSGSIZE     = 90
	errEOPNOTSUPP   = 95
	errENOBUFS      = 105
)

const (
	headerSize  = 7  // size[4] type[1] tag[2]
	rlerrorSize = 11 // header, ecode[4]
	// ioHeaderSize is what an Rread or Rreaddir holds before its data:
	// the header and count[4].
	ioHeaderSize = 11
)

// layouts gives, for each T-message the device passes to the server, the
// fields of its body in order: '1', '2', '4', '8' a little-endian integer
// of that many bytes, 's' a string (length[2] and bytes), 'w' a count[2]
// of strings. They mirror the server's decoders, so that a body the
// server would fail to decode (and answer without its tag) never reaches
// it. Twrite is checked on its own (its count must be the payload's
// length). Every other type, Txattrwalk and Txattrcreate included, is
// answered by the device (see Device).
var layouts = map[uint8]string{
	msgTstatfs:   "4",
	msgTlopen:    "44",
	msgTlcreate:  "4s444",
	msgTsymlink:  "4ss4",
	msgTmknod:    "4s4444",
	msgTrename:   "44s",
	msgTreadlink: "4",
	msgTgetattr:  "48",
	msgTsetattr:  "4444488888",
	msgTreaddir:  "484",
	msgTfsync:    "4",
	msgTlock:     "414884s",
	msgTgetlock:  "41884s",
	msgTlink:     "44s",
	msgTmkdir:    "4s44",
	msgTrenameat: "4s4s",
	msgTunlinkat: "4s4",
	msgTversion:  "4s",
	msgTauth:     "4ss4",
	msgTattach:   "44ss4",
	msgTflush:    "2",
	msgTwalk:     "44w",
	msgTread:     "484",
	msgTclunk:    "4",
	msgTremove:   "4",
}

// wellFormed reports whether body holds every field of a T-message of
// type typ (it may hold more, which the server ignores).
func wellFormed(typ uint8, body []byte) bool {
	if typ == msgTwrite {
		// fid[4] offset[8] count[4] data[count]
		return len(body) >= 16 && uint64(binary.LittleEndian.Uint32(body[12:])) == uint64(len(body)-16)
	}
	layout, ok := layouts[typ]
	if !ok {
		return false
	}
	off := 0
	for _, f := range []byte(layout) {
		switch f {
		case '1', '2', '4', '8':
			off += int(f - '0')
		case 's':
			if off+2 > len(body) {
				return false
			}
			off += 2 + int(binary.LittleEndian.Uint16(body[off:]))
		case 'w':
			if off+2 > len(body) {
				return false
			}
			n := int(binary.LittleEndian.Uint16(body[off:]))
			off += 2
			for range n {
				if off+2 > len(body) {
					return false
				}
				off += 2 + int(binary.LittleEndian.Uint16(body[off:]))
			}
		}
		if off > len(body) {
			return false
		}
	}
	return true
}

// putHeader writes a message header into b[:7].
func putHeader(b []byte, size uint32, typ uint8, tag uint16) {
	binary.LittleEndian.PutUint32(b, size)
	b[4] = typ
	binary.LittleEndian.PutUint16(b[5:], tag)
}

// rlerror encodes an Rlerror with Linux errno ecode.
func rlerror(tag uint16, ecode uint32) []byte {
	b := make([]byte, rlerrorSize)
	putHeader(b, rlerrorSize, msgRlerror, tag)
	binary.LittleEndian.PutUint32(b[headerSize:], ecode)
	return b
}

// rflush encodes an Rflush.
func rflush(tag uint16) []byte {
	b := make([]byte, headerSize)
	putHeader(b, headerSize, msgRflush, tag)
	return b
}

// rgetlock answers a well-formed Tgetlock (fid[4] type[1] start[8]
// length[8] proc_id[4] client_id[s]): the range is unlocked, since the
// device takes no host locks (Tlock always succeeds).
func rgetlock(tag uint16, body []byte) []byte {
	const unlocked = 2 // P9_LOCK_TYPE_UNLCK
	rest := body[5:]   // start, length, proc_id, client_id
	n := 8 + 8 + 4 + 2 + int(binary.LittleEndian.Uint16(rest[20:]))
	b := make([]byte, headerSize+1+n)
	putHeader(b, uint32(len(b)), msgRgetlock, tag)
	b[headerSize] = unlocked
	copy(b[headerSize+1:], rest[:n])
	return b
}

// versionL is the protocol the device serves.
const versionL = "9P2000.L"

// tversion re-encodes a well-formed Tversion body for the server: msize at
// most max, and any 9P2000.L dialect ("9P2000.L.Google.N") asked for as
// plain 9P2000.L, whose messages are the only ones the device passes on.
// Other versions go as they are (the server answers "unknown").
func tversion(tag uint16, body []byte, max uint32) []byte {
	msize := min(binary.LittleEndian.Uint32(body), max)
	n := int(binary.LittleEndian.Uint16(body[4:]))
	version := string(body[6 : 6+n])
	if strings.HasPrefix(version, versionL+".") {
		version = versionL
	}
	b := make([]byte, headerSize+4+2+len(version))
	putHeader(b, uint32(len(b)), msgTversion, tag)
	binary.LittleEndian.PutUint32(b[headerSize:], msize)
	binary.LittleEndian.PutUint16(b[headerSize+4:], uint16(len(version)))
	copy(b[headerSize+6:], version)
	return b
}

// tclunk encodes a Tclunk of fid.
func tclunk(tag uint16, fid uint32) []byte {
	b := make([]byte, headerSize+4)
	putHeader(b, uint32(len(b)), msgTclunk, tag)
	binary.LittleEndian.PutUint32(b[headerSize:], fid)
	return b
}
