package blk_test

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsule-vm/capsule/virtio"
	"github.com/capsule-vm/capsule/virtio/blk"
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
	// Every chain that ends in a writable status byte inside RAM gets
	// IOERR there and a used length of 1; one without gets used length 0
	// and its status byte (if any, outside the chain) untouched.
	for _, c := range []struct {
		name     string
		descs    func(r *rig) []virtiotest.Desc
		noStatus bool
	}{
		{"buffer past RAM", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{hdr(), {Addr: big, Len: 512, Flags: W}, stat()}
		}, false},
		{"address plus length overflows", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{hdr(), {Addr: ^uint64(0) - 100, Len: 512, Flags: W}, stat()}
		}, false},
		{"multi-gigabyte length", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{hdr(), {Addr: dataAddr, Len: 0xffffffff, Flags: W}, stat()}
		}, false},
		{"header past RAM", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{{Addr: big - 8, Len: 16}, data(512, true), stat()}
		}, false},
		{"readable after writable", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{hdr(), data(512, true), {Addr: hdrAddr, Len: 16}, stat()}
		}, false},
		{"header too short", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{{Addr: hdrAddr, Len: 8}, data(512, true), stat()}
		}, false},
		{"status buffer of size 0 after the data", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{hdr(), data(512, true), {Addr: statAddr, Len: 0, Flags: W}}
		}, false},
		{"no status byte", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{hdr(), data(512, false)}
		}, true},
		{"a write with no status byte", func(r *rig) []virtiotest.Desc {
			r.header(blk.TypeOut, 1)
			return []virtiotest.Desc{hdr(), data(512, false)}
		}, true},
		{"status byte past RAM after a bad buffer", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{hdr(), {Addr: big, Len: 512, Flags: W}, {Addr: big, Len: 1, Flags: W}}
		}, true},
		{"indirect without the feature bit set in the table entry count", func(r *rig) []virtiotest.Desc {
			return []virtiotest.Desc{{Addr: dataAddr, Len: 17, Flags: virtio.DescFlagIndirect}}
		}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, false)
			before := sum(t, r.path)
			r.header(0, 1)
			descs := c.descs(r)
			s, n := r.do(t, descs...)
			switch {
			case c.name == "status buffer of size 0 after the data":
				// The status is the last writable byte: the data's.
				if b, _ := r.Mem.Uint8(dataAddr + 511); b != blk.StatusIOErr || n != 1 {
					t.Errorf("last writable byte %d, used %d; want IOERR (1) and 1", b, n)
				}
			case c.noStatus:
				if n != 0 || s != 0xee {
					t.Errorf("status byte %#x, used %d; want it untouched and used length 0", s, n)
				}
				select {
				case err := <-r.Errors:
					t.Logf("reported: %v", err)
				case <-time.After(5 * time.Second):
					t.Error("a request completed without a status was not reported")
				}
			case s != blk.StatusIOErr || n != 1:
				t.Errorf("status %d, used %d; want IOERR (1) in the status byte and used length 1", s, n)
			}
			if sum(t, r.path) != before {
				t.Error("image changed")
			}
			checkCanary(t, r.Mem)
			r.alive(t)
		})
	}
}

func TestMalformedRequestsAreReportedOncePerActivation(t *testing.T) {
	r := newRig(t, false)
	r.header(0, 1)
	for range 5 {
		if _, n := r.do(t, hdr(), data(512, false)); n != 0 {
			t.Fatalf("used %d for a chain with no status byte", n)
		}
	}
	r.alive(t)
	if got := len(r.Errors); got != 1 {
		t.Fatalf("%d reports for 5 malformed requests, want 1", got)
	}
}

func TestHostileIndirectTableLargerThanTheQueue(t *testing.T) {
	r := newRig(t, false)
	before := sum(t, r.path)
	r.header(0, 1)
	// A 65,535-entry table: each entry a valid readable header, linked.
	table := uint64(dataAddr + 0x10000)
	const entries = 65535
	for i := range uint64(entries) {
		r.WriteDescAt(table+16*i, virtiotest.Desc{Addr: hdrAddr, Len: 16, Flags: virtio.DescFlagNext, Next: uint16(i + 1)})
	}
	r.WriteDesc(0, 0, virtiotest.Desc{Addr: table, Len: 16 * entries, Flags: virtio.DescFlagIndirect})
	r.Publish(0, 0)
	r.Kick(0)
	if err := r.WaitUsed(0, 1); err != nil {
		t.Fatal(err)
	}
	if _, n := r.Used(0, 0); n != 0 {
		t.Errorf("used length %d for a refused indirect table", n)
	}
	if sum(t, r.path) != before {
		t.Error("image changed")
	}
	r.head = 1
	r.alive(t)
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

func TestOpenRefusesWhatIsNotADisk(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, tc := range []struct{ path, want string }{
		{fifo, "disk " + fifo + ": not a regular file or block device (named pipe)"},
		{dir, "disk " + dir + ": is a directory"},
		{sock, "disk " + sock + ": not a regular file or block device (socket)"},
		{"/dev/null", "disk /dev/null: not a regular file or block device (character device)"},
	} {
		for _, ro := range []bool{false, true} {
			done := make(chan error, 1)
			go func() {
				d, err := blk.Open(tc.path, ro)
				if err == nil {
					d.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil || err.Error() != tc.want {
					t.Errorf("Open(%s, read-only %v) = %v, want %q", tc.path, ro, err, tc.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("Open(%s) blocked", tc.path)
			}
		}
	}
}
