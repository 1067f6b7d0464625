package blk_test

import (
	"testing"

	"github.com/capsule-vm/capsule/virtio"
	"github.com/capsule-vm/capsule/virtio/blk"
	"github.com/capsule-vm/capsule/virtio/virtiotest"
)

// BenchmarkRead4K serves 4 KiB reads through the transport, one at a
// time, as a guest at queue depth 1 does.
func BenchmarkRead4K(b *testing.B) {
	r := newRigTB(b)
	r.header(blk.TypeIn, 8)
	descs := []virtiotest.Desc{hdr(), data(4096, true), stat()}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		r.doTB(b, descs...)
	}
}

// TestRequestsDoNotAllocate keeps the request path free of heap
// allocations, which cost a GC cycle every few thousand requests (and a
// lot of CPU time where CPUs are scarce).
func TestRequestsDoNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates: counts are meaningless under -race")
	}
	r := newRigTB(t)
	r.header(blk.TypeIn, 8)
	descs := []virtiotest.Desc{hdr(), data(4096, true), stat()}
	r.doTB(t, descs...) // warm up: the device's scratch space grows once
	// The driver side (this test) allocates nothing per request either.
	if n := testing.AllocsPerRun(200, func() { r.doTB(t, descs...) }); n > 0.5 {
		t.Errorf("%.1f allocations per 4 KiB read", n)
	}
}

// BenchmarkRead1MiBScattered serves 1 MiB reads into 256 separate 4 KiB
// guest pages through an indirect table, as Linux sends an O_DIRECT read
// of a user buffer.
func BenchmarkRead1MiBScattered(b *testing.B) {
	r := newRigTB(b)
	r.header(blk.TypeIn, 0)
	const table = virtiotest.DataBase + 0x200000
	r.WriteDescAt(table, virtiotest.Desc{Addr: hdrAddr, Len: blk.HeaderSize, Flags: virtio.DescFlagNext, Next: 1})
	for i := range uint16(256) {
		// Every other page, so that no two are adjacent.
		r.WriteDescAt(table+16*uint64(i+1), virtiotest.Desc{Addr: virtiotest.DataBase + 0x300000 + 8192*uint64(i), Len: 4096,
			Flags: virtio.DescFlagWrite | virtio.DescFlagNext, Next: i + 2})
	}
	r.WriteDescAt(table+16*257, virtiotest.Desc{Addr: statAddr, Len: 1, Flags: virtio.DescFlagWrite})
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		r.doTB(b, virtiotest.Desc{Addr: table, Len: 16 * 258, Flags: virtio.DescFlagIndirect})
	}
}
