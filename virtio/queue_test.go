package virtio

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/capsule-vm/capsule/machine"
)

const (
	testDesc  = 0x1000
	testAvail = 0x2000
	testUsed  = 0x3000
	testSize  = 8
)

func newQueue(t testing.TB) (*Queue, *machine.GuestMemory) {
	t.Helper()
	mem, err := machine.NewGuestMemory(2 * machine.MiB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	q := &Queue{MaxSize: 256, Size: testSize, Desc: testDesc, Avail: testAvail, Used: testUsed, Indirect: true}
	if err := q.Validate(mem); err != nil {
		t.Fatal(err)
	}
	return q, mem
}

func putDesc(mem *machine.GuestMemory, table uint64, i uint16, addr uint64, l uint32, flags, next uint16) {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b, addr)
	binary.LittleEndian.PutUint32(b[8:], l)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
	mem.WriteAt(b, table+16*uint64(i))
}

// offer puts head in the available ring and moves its index by advance.
func offer(mem *machine.GuestMemory, slot, head, idx uint16) {
	mem.PutUint16(testAvail+4+2*uint64(slot%testSize), head)
	mem.PutUint16(testAvail+2, idx)
}

func TestPopWalksAValidChain(t *testing.T) {
	q, mem := newQueue(t)
	putDesc(mem, testDesc, 0, 0x10000, 16, DescFlagNext, 3)
	putDesc(mem, testDesc, 3, 0x11000, 512, DescFlagNext|DescFlagWrite, 5)
	putDesc(mem, testDesc, 5, 0x12000, 1, DescFlagWrite, 0)
	offer(mem, 0, 0, 1)
	c, ok, err := q.Pop(mem)
	if err != nil || !ok {
		t.Fatalf("Pop = %v, %v", ok, err)
	}
	if c.Head != 0 || len(c.Readable) != 1 || len(c.Writable) != 2 || c.Writable[0] != (Buffer{0x11000, 512}) {
		t.Fatalf("chain %+v", c)
	}
	if _, ok, _ := q.Pop(mem); ok {
		t.Fatal("second Pop found a chain the driver never offered")
	}
	if err := q.Push(mem, c.Head, 513); err != nil {
		t.Fatal(err)
	}
	idx, _ := mem.Uint16(testUsed + 2)
	id, _ := mem.Uint32(testUsed + 4)
	n, _ := mem.Uint32(testUsed + 8)
	if idx != 1 || id != 0 || n != 513 {
		t.Fatalf("used ring: idx %d id %d len %d", idx, id, n)
	}
}

func TestPopRejectsHostileChains(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(mem *machine.GuestMemory)
		want  error
	}{
		{"descriptor address past RAM", func(mem *machine.GuestMemory) {
			putDesc(mem, testDesc, 0, 4*machine.MiB, 16, 0, 0)
		}, ErrBadChain},
		{"address plus length overflows", func(mem *machine.GuestMemory) {
			putDesc(mem, testDesc, 0, ^uint64(0)-8, 64, 0, 0)
		}, ErrBadChain},
		{"a loop", func(mem *machine.GuestMemory) {
			putDesc(mem, testDesc, 0, 0x10000, 16, DescFlagNext, 1)
			putDesc(mem, testDesc, 1, 0x10000, 16, DescFlagNext, 0)
		}, ErrBadChain},
		{"next index outside the table", func(mem *machine.GuestMemory) {
			putDesc(mem, testDesc, 0, 0x10000, 16, DescFlagNext, testSize)
		}, ErrBadChain},
		{"indirect inside indirect", func(mem *machine.GuestMemory) {
			putDesc(mem, testDesc, 0, 0x20000, 32, DescFlagIndirect, 0)
			putDesc(mem, 0x20000, 0, 0x21000, 16, DescFlagIndirect, 0)
		}, ErrBadChain},
		{"indirect table outside RAM", func(mem *machine.GuestMemory) {
			putDesc(mem, testDesc, 0, 2*machine.MiB-16, 32, DescFlagIndirect, 0)
		}, ErrBadChain},
		{"indirect table not a multiple of 16", func(mem *machine.GuestMemory) {
			putDesc(mem, testDesc, 0, 0x20000, 24, DescFlagIndirect, 0)
		}, ErrBadChain},
		{"readable after writable", func(mem *machine.GuestMemory) {
			putDesc(mem, testDesc, 0, 0x10000, 16, DescFlagNext|DescFlagWrite, 1)
			putDesc(mem, testDesc, 1, 0x10000, 16, 0, 0)
		}, ErrBadChain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, mem := newQueue(t)
			tc.setup(mem)
			offer(mem, 0, 0, 1)
			c, ok, err := q.Pop(mem)
			if !errors.Is(err, tc.want) || !ok || c.Head != 0 {
				t.Fatalf("Pop = %+v, %v, %v; want the chain consumed with %v", c, ok, err, tc.want)
			}
		})
	}
}

func TestPopRejectsACorruptRing(t *testing.T) {
	q, mem := newQueue(t)
	offer(mem, 0, 0, testSize+1) // the index jumps by more than the queue size
	if _, _, err := q.Pop(mem); !errors.Is(err, ErrBadQueue) {
		t.Fatalf("Pop = %v, want ErrBadQueue", err)
	}
	q, mem = newQueue(t)
	offer(mem, 0, testSize+3, 1) // head index outside the table
	if _, _, err := q.Pop(mem); !errors.Is(err, ErrBadChain) {
		t.Fatalf("Pop = %v, want ErrBadChain", err)
	}
	q, mem = newQueue(t)
	q.Indirect = false
	putDesc(mem, testDesc, 0, 0x20000, 32, DescFlagIndirect, 0)
	offer(mem, 0, 0, 1)
	if _, _, err := q.Pop(mem); !errors.Is(err, ErrBadChain) {
		t.Fatalf("indirect without the feature: %v", err)
	}
}

func TestValidateChecksTheLayout(t *testing.T) {
	mem, err := machine.NewGuestMemory(2 * machine.MiB)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	for _, q := range []Queue{
		{MaxSize: 256, Size: 0, Desc: testDesc, Avail: testAvail, Used: testUsed},
		{MaxSize: 256, Size: 3, Desc: testDesc, Avail: testAvail, Used: testUsed},
		{MaxSize: 4, Size: 8, Desc: testDesc, Avail: testAvail, Used: testUsed},
		{MaxSize: 256, Size: 8, Desc: testDesc + 8, Avail: testAvail, Used: testUsed},
		{MaxSize: 256, Size: 8, Desc: testDesc, Avail: testAvail + 1, Used: testUsed},
		{MaxSize: 256, Size: 8, Desc: testDesc, Avail: testAvail, Used: testUsed + 2},
		{MaxSize: 256, Size: 256, Desc: 2*machine.MiB - 16, Avail: testAvail, Used: testUsed},
		{MaxSize: 256, Size: 8, Desc: testDesc, Avail: testAvail, Used: ^uint64(0) - 3},
	} {
		if err := q.Validate(mem); !errors.Is(err, ErrBadQueue) {
			t.Errorf("Validate(%+v) = %v, want ErrBadQueue", q, err)
		}
	}
}

// FuzzPop writes arbitrary descriptors and ring contents and checks that
// Pop never panics and that every chain it accepts lies inside guest RAM.
func FuzzPop(f *testing.F) {
	f.Add([]byte{0, 0, 1, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0}, uint16(1), uint16(0))
	f.Fuzz(func(t *testing.T, table []byte, idx, head uint16) {
		q, mem := newQueue(t)
		mem.WriteAt(table[:min(len(table), 16*testSize)], testDesc)
		if len(table) > 16*testSize {
			mem.WriteAt(table[16*testSize:min(len(table), 16*testSize+0x100)], 0x20000)
		}
		offer(mem, 0, head, idx)
		for range 4 {
			c, ok, err := q.Pop(mem)
			if !ok || err != nil {
				return
			}
			for _, b := range append(c.Readable, c.Writable...) {
				if !mem.Contains(b.Addr, uint64(b.Len)) {
					t.Fatalf("accepted buffer %+v outside RAM", b)
				}
			}
		}
	})
}

func TestAQueueOfSizeZeroNeverPanics(t *testing.T) {
	q, mem := newQueue(t)
	offer(mem, 0, 0, 1)
	q.Reset() // size 0, as after a reset or before set-up
	q.Avail, q.Used = testAvail, testUsed
	if _, _, err := q.Pop(mem); !errors.Is(err, ErrBadQueue) {
		t.Errorf("Pop on a queue of size 0 = %v, want ErrBadQueue", err)
	}
	if err := q.Push(mem, 0, 0); !errors.Is(err, ErrBadQueue) {
		t.Errorf("Push on a queue of size 0 = %v, want ErrBadQueue", err)
	}
	q.EventIdx = true
	q.WantsInterrupt(mem)
	q.ArmNotify(mem)
}

func TestA2ByteAlignedAvailableRingWorks(t *testing.T) {
	mem, err := machine.NewGuestMemory(2 * machine.MiB)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	const avail = testAvail + 2 // 2-byte aligned, not 4: legal (virtio 1.2, 2.7)
	q := &Queue{MaxSize: 256, Size: testSize, Desc: testDesc, Avail: avail, Used: testUsed, EventIdx: true}
	if err := q.Validate(mem); err != nil {
		t.Fatalf("Validate refused a 2-byte-aligned available ring: %v", err)
	}
	putDesc(mem, testDesc, 2, 0x10000, 16, 0, 0)
	mem.PutUint16(avail+4, 2)      // ring[0]: head 2
	mem.PutUint16(avail+6, 0x7777) // ring[1]: not offered
	mem.PutUint16(avail+2, 1)      // idx
	c, ok, err := q.Pop(mem)
	if err != nil || !ok || c.Head != 2 || len(c.Readable) != 1 {
		t.Fatalf("Pop = %+v, %v, %v; want the chain at head 2", c, ok, err)
	}
	if q.ArmNotify(mem) {
		t.Fatal("ArmNotify saw buffers the driver never offered")
	}
	mem.PutUint16(avail+2, 2)
	if !q.ArmNotify(mem) {
		t.Fatal("ArmNotify missed a buffer made available")
	}
}

func TestIndirectTablesAreBoundedByTheQueueSize(t *testing.T) {
	for _, tc := range []struct {
		entries uint32
		ok      bool
	}{{testSize, true}, {testSize + 1, false}, {65535, false}} {
		q, mem := newQueue(t)
		for i := range min(tc.entries, testSize) {
			flags := uint16(DescFlagNext)
			if i == min(tc.entries, testSize)-1 {
				flags = 0
			}
			putDesc(mem, 0x20000, uint16(i), 0x10000, 16, flags, uint16(i+1))
		}
		putDesc(mem, testDesc, 0, 0x20000, 16*tc.entries, DescFlagIndirect, 0)
		offer(mem, 0, 0, 1)
		c, ok, err := q.Pop(mem)
		if !ok {
			t.Fatalf("%d entries: nothing popped", tc.entries)
		}
		if tc.ok && (err != nil || len(c.Readable) != int(tc.entries)) {
			t.Fatalf("%d entries (the queue size): %v, %d buffers", tc.entries, err, len(c.Readable))
		}
		if !tc.ok && !errors.Is(err, ErrBadChain) {
			t.Fatalf("%d entries in a queue of %d: Pop = %v, want ErrBadChain", tc.entries, testSize, err)
		}
	}
}

func TestABadBufferStillFindsTheChainsLastByte(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(mem *machine.GuestMemory)
		status Buffer
	}{
		{"buffer outside RAM, then a status byte", func(mem *machine.GuestMemory) {
			putDesc(mem, testDesc, 0, 0x10000, 16, DescFlagNext, 1)
			putDesc(mem, testDesc, 1, 4*machine.MiB, 512, DescFlagNext|DescFlagWrite, 2)
			putDesc(mem, testDesc, 2, 0x12000, 4, DescFlagWrite, 0)
		}, Buffer{0x12003, 1}},
		{"readable after writable, then a status byte", func(mem *machine.GuestMemory) {
			putDesc(mem, testDesc, 0, 0x10000, 512, DescFlagNext|DescFlagWrite, 1)
			putDesc(mem, testDesc, 1, 0x11000, 16, DescFlagNext, 2)
			putDesc(mem, testDesc, 2, 0x12000, 1, DescFlagWrite, 0)
		}, Buffer{0x12000, 1}},
		{"last descriptor readable", func(mem *machine.GuestMemory) {
			putDesc(mem, testDesc, 0, 4*machine.MiB, 16, DescFlagNext, 1)
			putDesc(mem, testDesc, 1, 0x12000, 1, 0, 0)
		}, Buffer{}},
		{"last descriptor outside RAM", func(mem *machine.GuestMemory) {
			putDesc(mem, testDesc, 0, 4*machine.MiB, 16, DescFlagNext, 1)
			putDesc(mem, testDesc, 1, 4*machine.MiB, 1, DescFlagWrite, 0)
		}, Buffer{}},
		{"a loop after the bad buffer", func(mem *machine.GuestMemory) {
			putDesc(mem, testDesc, 0, 4*machine.MiB, 16, DescFlagNext, 1)
			putDesc(mem, testDesc, 1, 0x12000, 1, DescFlagNext|DescFlagWrite, 0)
		}, Buffer{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, mem := newQueue(t)
			tc.setup(mem)
			offer(mem, 0, 0, 1)
			c, ok, err := q.Pop(mem)
			if !ok || !errors.Is(err, ErrBadChain) {
				t.Fatalf("Pop = %v, %v; want the chain refused", ok, err)
			}
			if c.Status != tc.status {
				t.Fatalf("Status = %+v, want %+v", c.Status, tc.status)
			}
			for _, b := range append(c.Readable, c.Writable...) {
				if !mem.Contains(b.Addr, uint64(b.Len)) {
					t.Fatalf("buffer %+v of a refused chain outside RAM", b)
				}
			}
		})
	}
}
