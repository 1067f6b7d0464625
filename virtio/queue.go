package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/capsule-vm/capsule/machine"
)

// Descriptor flags (virtio 1.2, 2.7.5).
const (
	DescFlagNext     = 1
	DescFlagWrite    = 2
	DescFlagIndirect = 4

	descSize     = 16
	usedElemSize = 8
)

// ErrBadQueue is wrapped by every error about a queue's layout or a corrupt
// ring: the device should set NEEDS_RESET.
var ErrBadQueue = errors.New("virtqueue invalid")

// ErrBadChain is wrapped by errors about one descriptor chain: that
// request fails, the queue goes on.
var ErrBadChain = errors.New("descriptor chain invalid")

// Queue is the device's view of one split virtqueue.
type Queue struct {
	MaxSize  uint16 // the most entries the device accepts
	Size     uint16 // set by the driver, a power of two ≤ MaxSize
	Desc     uint64 // guest-physical address of the descriptor table
	Avail    uint64 // of the available (driver) ring
	Used     uint64 // of the used (device) ring
	Indirect bool   // VIRTIO_F_INDIRECT_DESC was negotiated
	EventIdx bool   // VIRTIO_F_EVENT_IDX was negotiated
	Ready    bool   // the driver enabled the queue

	nextAvail uint16
	nextUsed  uint16
	// signalled is the used index when the driver was last considered
	// for an interrupt (EVENT_IDX).
	signalled uint16
}

// Buffer is one guest buffer of a chain.
type Buffer struct {
	Addr uint64
	Len  uint32
}

// Chain is a descriptor chain popped from the available ring: the buffers
// the device reads, then those it writes.
type Chain struct {
	Head     uint16
	Readable []Buffer
	Writable []Buffer
	// Status is set only for a chain Pop refuses with ErrBadChain because
	// of a bad buffer (outside guest RAM, or readable after writable):
	// the chain is then still followed to its end, and when its last
	// descriptor is device-writable and inside RAM, Status is that
	// descriptor's last byte, where a device whose requests end in a
	// status byte (virtio-blk) reports the failure. Otherwise its Len is 0.
	Status Buffer
}

// Validate checks the queue's layout against the specification and guest
// RAM; call it when the driver sets DRIVER_OK. The alignments are those
// of virtio 1.2, 2.7 (split virtqueues): descriptor table 16 bytes,
// available ring 2, used ring 4.
func (q *Queue) Validate(mem *machine.GuestMemory) error {
	n := uint64(q.Size)
	switch {
	case q.Size == 0 || q.Size&(q.Size-1) != 0:
		return fmt.Errorf("%w: size %d is not a power of two", ErrBadQueue, q.Size)
	case q.Size > q.MaxSize:
		return fmt.Errorf("%w: size %d above the device's maximum %d", ErrBadQueue, q.Size, q.MaxSize)
	case q.Desc%16 != 0 || q.Avail%2 != 0 || q.Used%4 != 0:
		return fmt.Errorf("%w: rings misaligned (descriptors %#x, avail %#x, used %#x)", ErrBadQueue, q.Desc, q.Avail, q.Used)
	}
	for _, r := range []struct {
		name string
		addr uint64
		size uint64
	}{
		{"descriptor table", q.Desc, descSize * n},
		{"available ring", q.Avail, 6 + 2*n},
		{"used ring", q.Used, 6 + usedElemSize*n},
	} {
		if !mem.Contains(r.addr, r.size) {
			return fmt.Errorf("%w: %s at %#x (%d bytes) is not inside guest RAM", ErrBadQueue, r.name, r.addr, r.size)
		}
	}
	return nil
}

// Pop takes the next chain the driver made available. ok is false when
// there is none. An error wrapping ErrBadQueue means the ring itself is
// corrupt; one wrapping ErrBadChain concerns that chain only, which is
// consumed (Chain.Head is set) so that the device can complete it with an
// error status.
func (q *Queue) Pop(mem *machine.GuestMemory) (c Chain, ok bool, err error) {
	ok, err = q.PopInto(mem, &c)
	return c, ok, err
}

// PopInto is Pop that fills c, reusing the capacity of its buffer slices,
// so that a device serving a busy queue does not allocate per request.
func (q *Queue) PopInto(mem *machine.GuestMemory, c *Chain) (ok bool, err error) {
	c.Head, c.Readable, c.Writable, c.Status = 0, c.Readable[:0], c.Writable[:0], Buffer{}
	ok, err = q.pop(mem, c)
	return ok, err
}

func (q *Queue) pop(mem *machine.GuestMemory, c *Chain) (ok bool, err error) {
	availIdx, err := q.availIdx(mem)
	if err != nil {
		return false, fmt.Errorf("%w: available ring: %w", ErrBadQueue, err)
	}
	pending := availIdx - q.nextAvail
	if pending == 0 {
		return false, nil
	}
	if q.Size == 0 {
		return false, fmt.Errorf("%w: queue has no size (not set up, or reset)", ErrBadQueue)
	}
	if pending > q.Size {
		return false, fmt.Errorf("%w: available index %d is %d ahead of the device, more than the queue size %d", ErrBadQueue, availIdx, pending, q.Size)
	}
	head, err := mem.Uint16(q.Avail + 4 + 2*uint64(q.nextAvail%q.Size))
	if err != nil {
		return false, fmt.Errorf("%w: available ring: %w", ErrBadQueue, err)
	}
	q.nextAvail++
	c.Head = head
	if err := q.walk(mem, c); err != nil {
		return true, err
	}
	return true, nil
}

// availIdx reads the available ring's idx with an atomic load (ordered
// before the reads of the ring entries and descriptors it makes
// visible). The ring need only be 2-byte aligned, so idx (at Avail+2)
// is read as its half of the aligned 32-bit word that holds it: with
// flags when Avail is 4-byte aligned, with ring[0] when it is not; both
// words lie inside the ring, whose size Validate checked.
func (q *Queue) availIdx(mem *machine.GuestMemory) (uint16, error) {
	at := q.Avail + 2
	word, err := mem.LoadUint32Atomic(at &^ 3)
	if err != nil {
		return 0, err
	}
	return uint16(word >> (8 * (at & 3))), nil
}

type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func readDesc(mem *machine.GuestMemory, table uint64, i uint16) (desc, error) {
	var b [descSize]byte
	if err := mem.ReadAt(b[:], table+descSize*uint64(i)); err != nil {
		return desc{}, err
	}
	le := binary.LittleEndian
	return desc{addr: le.Uint64(b[0:]), len: le.Uint32(b[8:]), flags: le.Uint16(b[12:]), next: le.Uint16(b[14:])}, nil
}

// walk follows the chain at c.Head, filling c's buffers. A chain is at
// most the queue size long (virtio 1.2, 2.7.5.3.1), an indirect table
// included, so a walk reads at most Size+1 descriptors. A bad buffer
// (outside RAM, or readable after writable) ends the filling of c but
// not the walk, which goes on to find c.Status; a bad link or indirect
// descriptor ends both.
func (q *Queue) walk(mem *machine.GuestMemory, c *Chain) error {
	table, size := q.Desc, q.Size
	i := c.Head
	indirect := false
	var bad error // the first bad buffer
	for count := 0; ; count++ {
		if i >= size {
			return fmt.Errorf("%w: descriptor index %d outside a table of %d", ErrBadChain, i, size)
		}
		if count >= int(size) {
			return fmt.Errorf("%w: more than %d descriptors (a loop?)", ErrBadChain, size)
		}
		d, err := readDesc(mem, table, i)
		if err != nil {
			return fmt.Errorf("%w: descriptor %d: %w", ErrBadChain, i, err)
		}
		if d.flags&DescFlagIndirect != 0 {
			switch {
			case !q.Indirect:
				return fmt.Errorf("%w: indirect descriptor without VIRTIO_F_INDIRECT_DESC", ErrBadChain)
			case indirect:
				return fmt.Errorf("%w: indirect descriptor inside an indirect table", ErrBadChain)
			case d.flags&DescFlagNext != 0:
				return fmt.Errorf("%w: indirect descriptor with NEXT set", ErrBadChain)
			case d.len == 0 || d.len%descSize != 0:
				return fmt.Errorf("%w: indirect table of %d bytes", ErrBadChain, d.len)
			case d.len/descSize > uint32(q.Size):
				return fmt.Errorf("%w: indirect table of %d entries, more than the queue size %d", ErrBadChain, d.len/descSize, q.Size)
			case !mem.Contains(d.addr, uint64(d.len)):
				return fmt.Errorf("%w: indirect table at %#x (%d bytes) outside guest RAM", ErrBadChain, d.addr, d.len)
			}
			if len(c.Readable)+len(c.Writable) > 0 || bad != nil {
				return fmt.Errorf("%w: indirect descriptor after direct ones", ErrBadChain)
			}
			// d.len/descSize ≤ q.Size ≤ 1<<15: it fits.
			table, size, i, indirect, count = d.addr, uint16(d.len/descSize), 0, true, -1
			continue
		}
		inRAM := mem.Contains(d.addr, uint64(d.len))
		switch {
		case bad != nil:
		case !inRAM:
			bad = fmt.Errorf("%w: buffer at %#x (%d bytes) outside guest RAM", ErrBadChain, d.addr, d.len)
		case d.flags&DescFlagWrite != 0:
			c.Writable = append(c.Writable, Buffer{Addr: d.addr, Len: d.len})
		case len(c.Writable) > 0:
			bad = fmt.Errorf("%w: device-readable buffer after a device-writable one", ErrBadChain)
		default:
			c.Readable = append(c.Readable, Buffer{Addr: d.addr, Len: d.len})
		}
		if d.flags&DescFlagNext == 0 {
			if bad != nil && inRAM && d.flags&DescFlagWrite != 0 && d.len > 0 {
				c.Status = Buffer{Addr: d.addr + uint64(d.len) - 1, Len: 1}
			}
			return bad
		}
		i = d.next
	}
}

// Push returns chain head to the driver with written bytes written into
// its device-writable buffers, and publishes the new used index after the
// element (an atomic store orders the two).
func (q *Queue) Push(mem *machine.GuestMemory, head uint16, written uint32) error {
	if q.Size == 0 {
		return fmt.Errorf("%w: queue has no size (not set up, or reset)", ErrBadQueue)
	}
	elem := q.Used + 4 + usedElemSize*uint64(q.nextUsed%q.Size)
	if err := mem.PutUint32(elem, uint32(head)); err != nil {
		return fmt.Errorf("%w: used ring: %w", ErrBadQueue, err)
	}
	if err := mem.PutUint32(elem+4, written); err != nil {
		return fmt.Errorf("%w: used ring: %w", ErrBadQueue, err)
	}
	q.nextUsed++
	flags, err := mem.Uint16(q.Used)
	if err != nil {
		return fmt.Errorf("%w: used ring: %w", ErrBadQueue, err)
	}
	if err := mem.StoreUint32Atomic(q.Used, uint32(flags)|uint32(q.nextUsed)<<16); err != nil {
		return fmt.Errorf("%w: used ring: %w", ErrBadQueue, err)
	}
	return nil
}

// availNoInterrupt is VIRTQ_AVAIL_F_NO_INTERRUPT.
const availNoInterrupt = 1

// WantsInterrupt reports whether the driver wants an interrupt for the
// used buffers pushed since the last call: with EVENT_IDX, when the used
// index has passed the driver's used_event (virtio 1.2, 2.7.10); without,
// unless it set VIRTQ_AVAIL_F_NO_INTERRUPT. A ring that cannot be read
// counts as wanting one.
func (q *Queue) WantsInterrupt(mem *machine.GuestMemory) bool {
	if q.EventIdx {
		now, old := q.nextUsed, q.signalled
		q.signalled = now
		event, err := mem.Uint16(q.Avail + 4 + 2*uint64(q.Size)) // used_event
		return err != nil || now-event-1 < now-old
	}
	flags, err := mem.Uint16(q.Avail)
	return err != nil || flags&availNoInterrupt == 0
}

// ArmNotify prepares the queue for the device to sleep until the driver's
// next notification, and reports whether buffers arrived meanwhile (the
// device must then pop again instead of sleeping). With EVENT_IDX it asks
// for a notification when the driver makes the next buffer available, by
// writing avail_event; without, the driver always notifies.
func (q *Queue) ArmNotify(mem *machine.GuestMemory) bool {
	if !q.EventIdx {
		return false
	}
	if err := mem.StoreUint16Atomic(q.Used+4+usedElemSize*uint64(q.Size), q.nextAvail); err != nil {
		return false
	}
	idx, err := q.availIdx(mem) // ordered after the store
	return err == nil && idx != q.nextAvail
}

// Reset forgets the queue's configuration and position.
func (q *Queue) Reset() {
	*q = Queue{MaxSize: q.MaxSize}
}
