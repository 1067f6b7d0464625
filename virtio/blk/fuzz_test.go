package blk_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/capsule-vm/capsule/machine"
	"github.com/capsule-vm/capsule/virtio"
	"github.com/capsule-vm/capsule/virtio/blk"
)

// FuzzRequest feeds arbitrary descriptor tables and request headers to
// the queue walker and the request parser of a read-only disk: nothing
// may panic, the image must not change, and guest memory is written only
// inside the chain's device-writable buffers, which lie below 1 MiB.
func FuzzRequest(f *testing.F) {
	le := binary.LittleEndian
	desc := func(addr uint64, n uint32, flags, next uint16) []byte {
		b := make([]byte, 16)
		le.PutUint64(b, addr)
		le.PutUint32(b[8:], n)
		le.PutUint16(b[12:], flags)
		le.PutUint16(b[14:], next)
		return b
	}
	hdr := func(typ uint32, sector uint64) []byte {
		b := make([]byte, 16)
		le.PutUint32(b, typ)
		le.PutUint64(b[8:], sector)
		return b
	}
	// Layout of the input: 8 descriptors (128 bytes) at 0x1000, then a
	// request header at 0x2000.
	read := append(append(append(desc(0x2000, 16, 1, 1), desc(0x3000, 1024, 3, 2)...), desc(0x4000, 1, 2, 0)...), make([]byte, 80)...)
	f.Add(append(read, hdr(blk.TypeIn, 2)...))
	f.Add(append(read, hdr(blk.TypeOut, 2)...))
	f.Add(append(read, hdr(blk.TypeGetID, 0)...))
	f.Add(append(append(desc(0x5000, 48, 4, 0), make([]byte, 112)...), hdr(blk.TypeIn, 1)...))

	path := disk(f)
	dev, err := blk.Open(path, true)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { dev.Close() })
	before := sum(f, path)
	mem, err := machine.NewGuestMemory(2 << 20)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	const high = 1 << 20
	f.Fuzz(func(t *testing.T, in []byte) {
		mem.Zero(0, 2<<20)
		mem.WriteAt(bytes.Repeat([]byte{0xa5}, high), high)
		tbl := in[:min(len(in), 128)]
		mem.WriteAt(tbl, 0x1000)
		if len(in) > 128 {
			mem.WriteAt(in[128:min(len(in), 144)], 0x2000)
		}
		// Descriptors may point anywhere; the canary half of RAM is only
		// checked when no writable buffer reaches into it.
		q := &virtio.Queue{MaxSize: 8, Size: 8, Desc: 0x1000, Avail: 0x6000, Used: 0x7000, Indirect: true, Ready: true}
		mem.PutUint16(0x6002, 1)
		c, ok, err := q.Pop(mem)
		if !ok {
			t.Fatalf("no chain: %v", err)
		}
		a := virtio.Activation{Mem: mem, Queues: []*virtio.Queue{q}}
		n := dev.Handle(a, c, err)
		// A refused chain's buffers stop at its fault, but its status
		// byte (the last byte of its last, writable descriptor) is still
		// written: it counts as writable.
		writable := append(append([]virtio.Buffer(nil), c.Writable...), c.Status)
		if uint64(n) > virtio.Len(writable) {
			t.Errorf("used length %d beyond %d writable bytes", n, virtio.Len(writable))
		}
		if err := q.Push(mem, c.Head, n); err != nil {
			t.Fatal(err)
		}
		touchesHigh := false
		for _, b := range writable {
			if b.Addr+uint64(b.Len) > high {
				touchesHigh = true
			}
		}
		if !touchesHigh {
			got := make([]byte, high)
			mem.ReadAt(got, high)
			if !bytes.Equal(got, bytes.Repeat([]byte{0xa5}, high)) {
				t.Error("guest memory written outside the writable buffers")
			}
		}
	})
	if sum(f, path) != before {
		f.Error("read-only image changed")
	}
}
