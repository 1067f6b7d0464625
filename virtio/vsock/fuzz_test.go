package vsock

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/capsule-vm/capsule/machine"
	"github.com/capsule-vm/capsule/virtio"
)

// FuzzPacket feeds arbitrary packets from the guest, one or two in a row
// (so that a connection set up by the first sees the second), to the
// transmit handler: nothing may panic, and every answer is addressed to
// the guest.
func FuzzPacket(f *testing.F) {
	pkt := func(h Header, data string) []byte {
		b := make([]byte, HeaderSize+len(data))
		h.Len = uint32(len(data))
		h.Put(b)
		copy(b[HeaderSize:], data)
		return b
	}
	cid := uint64(100000 + os.Getpid()) // CIDs are locked host-wide; fuzz workers are processes
	base := Header{SrcCID: cid, DstCID: HostCID, SrcPort: 1, DstPort: 2, Type: TypeStream, BufAlloc: 4096}
	for _, op := range []uint16{OpRequest, OpResponse, OpRst, OpShutdown, OpRW, OpCreditUpdate, OpCreditRequest, 0, 99} {
		h := base
		h.Op = op
		f.Add(pkt(h, "data"), []byte(nil))
	}
	req := base
	req.Op = OpRequest
	rw := base
	rw.Op = OpRW
	f.Add(pkt(req, ""), pkt(rw, "hello"))

	dir, err := os.MkdirTemp("", "vsockfuzz")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	d, err := Open(cid, filepath.Join(dir, "s"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { d.Close() })
	mem, err := machine.NewGuestMemory(2 << 20)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	a := virtio.Activation{Mem: mem}
	buf := make([]byte, HeaderSize+maxPacketData)
	f.Fuzz(func(t *testing.T, p1, p2 []byte) {
		d.mu.Lock()
		d.active, d.stop = true, make(chan struct{})
		d.mu.Unlock()
		for _, p := range [][]byte{p1, p2} {
			if len(p) > 1<<20 {
				return
			}
			// Seeds carry the coordinator's CID; make most inputs come
			// from this worker's guest, keeping some foreign ones.
			if len(p) >= 8 && p[7] != 0xff {
				p = append([]byte(nil), p...)
				binary.LittleEndian.PutUint64(p, cid)
			}
			mem.WriteAt(p, 0x1000)
			c := virtio.Chain{Readable: []virtio.Buffer{{Addr: 0x1000, Len: uint32(len(p))}}}
			d.handleTx(a, c, nil)
		}
		for n := d.take(buf, maxPacketData); n > 0; n = d.take(buf, maxPacketData) {
			h, _ := ParseHeader(buf[:n])
			if h.SrcCID != HostCID || h.DstCID != cid {
				t.Errorf("answer from %d to %d", h.SrcCID, h.DstCID)
			}
		}
		if s := d.Stats(); s.PendingResets > MaxPendingResets || s.Buffered > MaxDeviceBuffered {
			t.Errorf("stats %+v beyond the bounds", s)
		}
		d.Reset()
	})
}
