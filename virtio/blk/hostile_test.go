package blk_test

import (
	"testing"

	"github.com/capsule-vm/capsule/virtio"
	"github.com/capsule-vm/capsule/virtio/virtiotest"
)

// A hostile driver's chains. Each must leave the image and guest memory
// outside the request's buffers untouched, give the guest an error (an
// IOERR status, a used length of 0, or DEVICE_NEEDS_RESET for a corrupt
// ring) and leave the device serving, or resettable.

// alive checks that the device still serves a valid read.
func (r *rig) alive(t *testing.T) {
	t.Helper()
	r.header(0, 1)
	if s, n := r.do(t, hdr(), data(512, true), stat()); s != 0 || n != 513 {
		t.Fatalf("device no longer serves: status %d, used %d", s, n)
	}
}

func TestHostileChains(t *testing.T) {
	const W = virtio.DescFlagWrite
	big := uint64(memSize) // first byte past RAM
	for _, c := range []struct {
		name  string
		descs func(r *rig) []virtiotest.Desc
	}{
		{"buffer past RAM", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{hdr(), {Addr: big, Len: 512, Flags: W}, stat()}
		}},
		{"address plus length overflows", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{hdr(), {Addr: ^uint64(0) - 100, Len: 512, Flags: W}, stat()}
		}},
		{"multi-gigabyte length", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{hdr(), {Addr: dataAddr, Len: 0xffffffff, Flags: W}, stat()}
		}},
		{"header past RAM", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{{Addr: big - 8, Len: 16}, data(512, true), stat()}
		}},
		{"readable after writable", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{hdr(), data(512, true), {Addr: hdrAddr, Len: 16}, stat()}
		}},
		{"no status byte", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{hdr(), data(512, false)}
		}},
		{"header too short", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{{Addr: hdrAddr, Len: 8}, data(512, true), stat()}
		}},
		{"indirect without the feature bit set in the table entry count", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{{Addr: dataAddr, Len: 17, Flags: virtio.DescFlagIndirect}}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, false)
			before := sum(t, r.path)
			r.header(0, 1)
			s, n := r.do(t, c.descs(r)...)
			// A used length of 0 or 1 is no data; for a chain that
			// ends early the IOERR goes into its last writable byte.
			if !(s == 1 || n <= 1) {
				t.Errorf("status %d, used %d: the guest got no error", s, n)
			}
			if sum(t, r.path) != before {
				t.Error("image changed")
			}
			checkCanary(t, r.Mem)
			r.alive(t)
		})
	}
}

func TestHostileLoop(t *testing.T) {
	r := newRig(t, false)
	r.header(0, 1)
	// 0 -> 1 -> 0 -> ...
	r.WriteDesc(0, 0, virtiotest.Desc{Addr: hdrAddr, Len: 16, Flags: virtio.DescFlagNext, Next: 1})
	r.WriteDesc(0, 1, virtiotest.Desc{Addr: hdrAddr, Len: 16, Flags: virtio.DescFlagNext, Next: 0})
	r.Publish(0, 0)
	r.Kick(0)
	if err := r.WaitUsed(0, 1); err != nil {
		t.Fatal(err)
	}
	if _, n := r.Used(0, 0); n != 0 {
		t.Errorf("used length %d for a looping chain", n)
	}
	r.head = 2
	r.alive(t)
}

func TestHostileNextOutOfTable(t *testing.T) {
	r := newRig(t, false)
	r.WriteDesc(0, 0, virtiotest.Desc{Addr: hdrAddr, Len: 16, Flags: virtio.DescFlagNext, Next: 999})
	r.Publish(0, 0)
	r.Publish(0, 4000) // a head outside the table, too
	r.Kick(0)
	if err := r.WaitUsed(0, 2); err != nil {
		t.Fatal(err)
	}
	r.head = 1
	r.alive(t)
}

func TestHostileNestedIndirect(t *testing.T) {
	r := newRig(t, false)
	before := sum(t, r.path)
	r.header(1, 1) // a write, which must not happen
	outer, inner := uint64(dataAddr+0x2000), uint64(dataAddr+0x3000)
	r.WriteDescAt(outer, virtiotest.Desc{Addr: inner, Len: 48, Flags: virtio.DescFlagIndirect})
	r.WriteDescAt(inner, virtiotest.Desc{Addr: hdrAddr, Len: 16, Flags: virtio.DescFlagNext, Next: 1})
	r.WriteDescAt(inner+16, virtiotest.Desc{Addr: dataAddr, Len: 512, Flags: virtio.DescFlagNext, Next: 2})
	r.WriteDescAt(inner+32, virtiotest.Desc{Addr: statAddr, Len: 1, Flags: virtio.DescFlagWrite})
	r.WriteDesc(0, 0, virtiotest.Desc{Addr: outer, Len: 16, Flags: virtio.DescFlagIndirect})
	r.Publish(0, 0)
	r.Kick(0)
	if err := r.WaitUsed(0, 1); err != nil {
		t.Fatal(err)
	}
	if sum(t, r.path) != before {
		t.Error("nested indirect write reached the image")
	}
	// The same request through one level of indirection works.
	r.WriteDesc(0, 1, virtiotest.Desc{Addr: inner, Len: 48, Flags: virtio.DescFlagIndirect})
	r.Publish(0, 1)
	r.Kick(0)
	if err := r.WaitUsed(0, 2); err != nil {
		t.Fatal(err)
	}
	if s, _ := r.Mem.Uint8(statAddr); s != 0 {
		t.Errorf("indirect write: status %d", s)
	}
}

func TestHostileAvailJump(t *testing.T) {
	r := newRig(t, false)
	r.SetAvailIdx(0, r.Size+1)
	r.Kick(0)
	if err := r.WaitNeedsReset(); err != nil {
		t.Fatal(err)
	}
	// After a reset the device works again.
	r.Setup(virtio.FeatureIndirectDesc)
	r.head = 0
	r.alive(t)
}

func TestHostileRingsOutsideRAM(t *testing.T) {
	r := newRig(t, false)
	r.Negotiate(virtio.FeatureVersion1)
	r.SetupQueue(0, 16, uint64(memSize)-16, r.AvailAddr(0), r.UsedAddr(0))
	r.DriverOK()
	if err := r.WaitNeedsReset(); err != nil {
		t.Fatal(err)
	}
	r.Kick(0) // must not touch anything
}

func TestHostileQueueReprogrammedAfterDriverOK(t *testing.T) {
	r := newRig(t, false)
	r.Write(virtio.RegQueueSel, 0)
	r.Write(virtio.RegQueueDescLow, uint32(memSize-16))
	r.Write(virtio.RegQueueNum, 4096)
	r.Write(virtio.RegQueueReady, 0)
	r.alive(t)
}

func TestHostileRequestFlood(t *testing.T) {
	r := newRig(t, true)
	before := sum(t, r.path)
	r.header(0, 1)
	// Every slot holds the same valid read; the driver republishes them
	// as fast as it can, 200 times over, kicking after each.
	r.WriteDesc(0, 0, virtiotest.Desc{Addr: hdrAddr, Len: 16, Flags: virtio.DescFlagNext, Next: 1})
	r.WriteDesc(0, 1, virtiotest.Desc{Addr: dataAddr, Len: 512, Flags: virtio.DescFlagWrite | virtio.DescFlagNext, Next: 2})
	r.WriteDesc(0, 2, virtiotest.Desc{Addr: statAddr, Len: 1, Flags: virtio.DescFlagWrite})
	heads := make([]uint16, r.Size)
	var want uint16
	for range 200 {
		r.Publish(0, heads...)
		want += r.Size
		r.Kick(0)
		if err := r.WaitUsed(0, want); err != nil {
			t.Fatal(err)
		}
	}
	if sum(t, r.path) != before {
		t.Error("image changed")
	}
	checkCanary(t, r.Mem)
}
