package p9_test

import (
	"encoding/binary"
	"testing"
)

// FuzzRequest sends one arbitrary message per input, after a fresh
// Tversion and Tattach of fid 1 (the input's first two bytes are the
// room for the answer, the third where the message is cut into two
// descriptors): nothing may panic, every chain must complete (the driver
// waits at most 10 s), and an answer must fit its room and be a whole
// message.
func FuzzRequest(f *testing.F) {
	seed := func(room uint16, cut byte, m []byte) {
		f.Add(append(binary.LittleEndian.AppendUint16([]byte{}, room), append([]byte{cut}, m...)...))
	}
	seed(4096, 0, twalk(2, 1, 2, "hello.txt"))
	seed(4096, 9, twalk(2, 1, 2, "..", "x"))
	seed(4096, 0, tgetattr(2, 1))
	seed(12, 0, tgetattr(2, 1))
	seed(4096, 0, msg(tLopen, 2, enc(nil).u32(1).u32(0)))
	seed(4096, 0, msg(tReaddir, 2, enc(nil).u32(1).u64(0).u32(4000)))
	seed(4096, 0, msg(tRead, 2, enc(nil).u32(1).u64(0).u32(100)))
	seed(4096, 23, msg(tWrite, 2, append(enc(nil).u32(1).u64(0).u32(4), "data"...)))
	seed(4096, 0, msg(tFlush, 2, enc(nil).u16(2)))
	seed(4096, 0, msg(tGetlock, 2, enc(nil).u32(1).u8(1).u64(0).u64(0).u32(1).str("c")))
	seed(4096, 0, tversion(1<<20, "9P2000.L.Google.1"))
	seed(4096, 0, tattach(3, 4, 0))
	seed(4096, 0, msg(72, 2, enc(nil).u32(1).str("dir").u32(0o755).u32(0)))      // Tmkdir
	seed(4096, 0, msg(14, 2, enc(nil).u32(1).str("f").u32(2).u32(0o644).u32(0))) // Tlcreate
	seed(4096, 0, msg(16, 2, enc(nil).u32(1).str("l").str("/etc").u32(0)))       // Tsymlink
	seed(4096, 0, msg(tStatfs, 2, enc(nil).u32(1)))
	seed(4096, 0, msg(tClunk, 2, enc(nil).u32(1)))

	r := newRig(f, false, nil)
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 3 {
			return
		}
		r.t, r.T = t, t // the rig's and its driver's failures are this input's
		r.reset()
		r.setup()
		r.attach()
		room := uint32(binary.LittleEndian.Uint16(in))
		m := in[3:min(len(in), 3+half)]
		var cuts []int
		if c := int(in[2]); c > 0 && c < len(m) {
			cuts = []int{c}
		}
		r.post(0, m, cuts, room)
		r.Kick(0)
		_, a := r.used()
		if uint32(len(a)) > room {
			t.Fatalf("answer of %d bytes in %d bytes of room", len(a), room)
		}
		if len(a) > 0 {
			decode(t, a)
		}
	})
}
