package vmm

import (
	"fmt"
	"sort"

	"github.com/capsule-vm/capsule/devices"
)

// bus maps address ranges (port I/O or MMIO) to devices. Ranges are kept
// sorted; a lookup is a binary search and overlapping ranges are refused.
type bus struct {
	ranges []busRange
}

type busRange struct {
	base, size uint64
	dev        devices.Device
}

func (b *bus) insert(base, size uint64, dev devices.Device) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("bus range %#x+%#x is empty or overflows", base, size)
	}
	i := sort.Search(len(b.ranges), func(i int) bool { return b.ranges[i].base >= base })
	if i > 0 && b.ranges[i-1].base+b.ranges[i-1].size > base ||
		i < len(b.ranges) && base+size > b.ranges[i].base {
		return fmt.Errorf("bus range %#x+%#x overlaps another device", base, size)
	}
	b.ranges = append(b.ranges, busRange{})
	copy(b.ranges[i+1:], b.ranges[i:])
	b.ranges[i] = busRange{base, size, dev}
	return nil
}

// lookup finds the device covering addr and addr's offset in its range.
func (b *bus) lookup(addr uint64) (devices.Device, uint64, bool) {
	i := sort.Search(len(b.ranges), func(i int) bool { return b.ranges[i].base+b.ranges[i].size > addr })
	if i == len(b.ranges) || addr < b.ranges[i].base {
		return nil, 0, false
	}
	return b.ranges[i].dev, addr - b.ranges[i].base, true
}
