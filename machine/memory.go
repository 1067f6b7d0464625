package machine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"golang.org/x/sys/unix"
)

// The guest-physical layout around the 32-bit MMIO gap. RAM above
// MMIOGapStart is placed from 4 GiB up, as on a PC.
const (
	MiB          = 1 << 20
	GiB          = 1 << 30
	MMIOGapStart = 3 * GiB // first byte of the 32-bit MMIO hole
	MMIOGapEnd   = 4 * GiB // RAM resumes here
)

// ErrOutOfRange is wrapped by every access outside guest RAM.
var ErrOutOfRange = errors.New("outside guest memory")

// Region is one contiguous run of guest RAM.
type Region struct {
	GPA  uint64 // first guest-physical address
	Size uint64
	host []byte
}

// End is the first address past the region.
func (r Region) End() uint64 { return r.GPA + r.Size }

// GuestMemory is a VM's RAM: anonymous host memory mapped lazily (pages are
// only touched when used), split into regions around the MMIO gap.
type GuestMemory struct {
	regions []Region // sorted by GPA, not overlapping
	size    uint64
}

// NewGuestMemory maps size bytes of guest RAM (a multiple of 4 KiB): below
// MMIOGapStart first, the rest from MMIOGapEnd.
func NewGuestMemory(size uint64) (*GuestMemory, error) {
	if size == 0 || size%4096 != 0 {
		return nil, fmt.Errorf("guest memory size %d is not a positive multiple of 4 KiB", size)
	}
	if size > 1<<46 {
		return nil, fmt.Errorf("guest memory size %d MiB is larger than the 64 TiB supported", size/MiB)
	}
	m := &GuestMemory{}
	low := min(size, MMIOGapStart)
	if err := m.add(0, low); err != nil {
		return nil, err
	}
	if size > low {
		if err := m.add(MMIOGapEnd, size-low); err != nil {
			m.Close()
			return nil, err
		}
	}
	return m, nil
}

// hugePage is the size of an x86 large page; guest RAM is aligned to it so
// that the host can back it with transparent huge pages.
const hugePage = 2 * MiB

func (m *GuestMemory) add(gpa, size uint64) error {
	host, err := mapAligned(size, hugePage)
	if err != nil {
		return fmt.Errorf("map %d MiB of guest memory: %w", size/MiB, err)
	}
	// Huge pages mean one fault per 2 MiB while the kernel is copied in
	// and 2 MiB guest mappings afterwards. A host without THP refuses the
	// advice, which is harmless.
	_ = unix.Madvise(host, unix.MADV_HUGEPAGE)
	m.regions = append(m.regions, Region{GPA: gpa, Size: size, host: host})
	m.size += size
	return nil
}

// Close unmaps the guest memory. It must not be used afterwards, nor while
// a VM still runs on it.
func (m *GuestMemory) Close() error {
	var errs []error
	for _, r := range m.regions {
		errs = append(errs, unmap(r.host))
	}
	m.regions = nil
	return errors.Join(errs...)
}

// Size is the amount of RAM in bytes.
func (m *GuestMemory) Size() uint64 { return m.size }

// Regions lists the RAM regions in address order.
func (m *GuestMemory) Regions() []Region {
	return append([]Region(nil), m.regions...)
}

// MapInto hands every region's host mapping to register, in order, so that
// it can be given to KVM as a memory slot. It is the one place host memory
// leaves this package.
func (m *GuestMemory) MapInto(register func(slot uint32, gpa uint64, host []byte) error) error {
	for i, r := range m.regions {
		if err := register(uint32(i), r.GPA, r.host); err != nil {
			return err
		}
	}
	return nil
}

// Slice returns the host bytes backing [gpa, gpa+n). The range must lie
// inside one region. The slice aliases guest RAM: the guest may change it
// at any time.
func (m *GuestMemory) Slice(gpa, n uint64) ([]byte, error) {
	end := gpa + n
	if end < gpa {
		return nil, fmt.Errorf("guest range %#x+%#x overflows: %w", gpa, n, ErrOutOfRange)
	}
	if len(m.regions) > 0 && end <= m.regions[0].End() && gpa >= m.regions[0].GPA {
		r := &m.regions[0]
		// RAM below the MMIO gap: every access of a small VM, and most
		// of a large one's, without a search.
		off := gpa - r.GPA
		return r.host[off : off+n : off+n], nil
	}
	i := sort.Search(len(m.regions), func(i int) bool { return m.regions[i].End() > gpa })
	if i == len(m.regions) || gpa < m.regions[i].GPA || end > m.regions[i].End() {
		return nil, fmt.Errorf("guest range [%#x, %#x): %w", gpa, end, ErrOutOfRange)
	}
	r := m.regions[i]
	off := gpa - r.GPA
	return r.host[off : off+n : off+n], nil
}

// Contains reports whether [gpa, gpa+n) is RAM in a single region.
func (m *GuestMemory) Contains(gpa, n uint64) bool {
	_, err := m.Slice(gpa, n)
	return err == nil
}

// ReadAt copies guest memory at gpa into p.
func (m *GuestMemory) ReadAt(p []byte, gpa uint64) error {
	s, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(p, s)
	return nil
}

// WriteAt copies p into guest memory at gpa.
func (m *GuestMemory) WriteAt(p []byte, gpa uint64) error {
	s, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(s, p)
	return nil
}

// Zero clears n bytes at gpa.
func (m *GuestMemory) Zero(gpa, n uint64) error {
	s, err := m.Slice(gpa, n)
	if err != nil {
		return err
	}
	clear(s)
	return nil
}

// PageSize is the granule Discard works in.
const PageSize = 4096

// Discard gives the host memory behind [gpa, gpa+n) back to the host
// (madvise MADV_DONTNEED): the pages read as zero afterwards and take no
// host memory until the guest touches them again. gpa and n must be
// multiples of PageSize and the range inside one region. A balloon
// device reclaims the pages a guest gives up with it.
func (m *GuestMemory) Discard(gpa, n uint64) error {
	if gpa%PageSize != 0 || n%PageSize != 0 {
		return fmt.Errorf("discard [%#x, +%#x): not page-aligned: %w", gpa, n, ErrOutOfRange)
	}
	s, err := m.Slice(gpa, n)
	if err != nil || n == 0 {
		return err
	}
	if err := unix.Madvise(s, unix.MADV_DONTNEED); err != nil {
		return fmt.Errorf("discard [%#x, +%#x): %w", gpa, n, err)
	}
	return nil
}

// Uint8 reads a byte.
func (m *GuestMemory) Uint8(gpa uint64) (uint8, error) {
	s, err := m.Slice(gpa, 1)
	if err != nil {
		return 0, err
	}
	return s[0], nil
}

// Uint16 reads a little-endian 16-bit value.
func (m *GuestMemory) Uint16(gpa uint64) (uint16, error) {
	s, err := m.Slice(gpa, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(s), nil
}

// Uint32 reads a little-endian 32-bit value.
func (m *GuestMemory) Uint32(gpa uint64) (uint32, error) {
	s, err := m.Slice(gpa, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

// Uint64 reads a little-endian 64-bit value.
func (m *GuestMemory) Uint64(gpa uint64) (uint64, error) {
	s, err := m.Slice(gpa, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(s), nil
}

// PutUint8 writes a byte.
func (m *GuestMemory) PutUint8(gpa uint64, v uint8) error {
	return m.WriteAt([]byte{v}, gpa)
}

// PutUint16 writes a little-endian 16-bit value.
func (m *GuestMemory) PutUint16(gpa uint64, v uint16) error {
	return m.WriteAt(binary.LittleEndian.AppendUint16(nil, v), gpa)
}

// PutUint32 writes a little-endian 32-bit value.
func (m *GuestMemory) PutUint32(gpa uint64, v uint32) error {
	return m.WriteAt(binary.LittleEndian.AppendUint32(nil, v), gpa)
}

// PutUint64 writes a little-endian 64-bit value.
func (m *GuestMemory) PutUint64(gpa uint64, v uint64) error {
	return m.WriteAt(binary.LittleEndian.AppendUint64(nil, v), gpa)
}

// Resident is how many bytes of guest RAM are resident in host memory
// (mincore over every region).
func (m *GuestMemory) Resident() (uint64, error) {
	var total uint64
	page := uint64(unix.Getpagesize())
	for _, r := range m.regions {
		vec := make([]byte, (r.Size+page-1)/page)
		if err := mincore(r.host, vec); err != nil {
			return 0, fmt.Errorf("mincore guest memory at %#x: %w", r.GPA, err)
		}
		for _, v := range vec {
			if v&1 != 0 {
				total += page
			}
		}
	}
	return total, nil
}
