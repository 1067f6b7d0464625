package machine

import (
	"slices"
	"testing"
)

// pcLow is the part of every memory map below 1 MiB: RAM to the EBDA, the
// EBDA reserved, no entry for the VGA window and option ROMs, the BIOS
// area reserved.
var pcLow = []E820Entry{
	{0, 0x9fc00, E820RAM},
	{0x9fc00, 0x400, E820Reserved},
	{0xf0000, 0x10000, E820Reserved},
}

func TestE820IsShapedLikeAPC(t *testing.T) {
	for _, tt := range []struct {
		name string
		size uint64
		want []E820Entry
	}{
		{"a 2 MiB guest has low RAM, the EBDA, the BIOS area and RAM from 1 MiB",
			2 * MiB, append(slices.Clone(pcLow), E820Entry{KernelMin, MiB, E820RAM})},
		{"a 256 MiB guest has RAM from 1 MiB to its end",
			256 * MiB, append(slices.Clone(pcLow), E820Entry{KernelMin, 255 * MiB, E820RAM})},
		{"a guest of exactly 3 GiB ends at the MMIO gap",
			MMIOGapStart, append(slices.Clone(pcLow), E820Entry{KernelMin, MMIOGapStart - KernelMin, E820RAM})},
		{"a 4 GiB guest continues above the MMIO gap at 4 GiB",
			4 * GiB, append(slices.Clone(pcLow), E820Entry{KernelMin, MMIOGapStart - KernelMin, E820RAM}, E820Entry{MMIOGapEnd, GiB, E820RAM})},
		{"a guest of 1 MiB or less has low RAM only",
			MiB, []E820Entry{{0, 0x9fc00, E820RAM}}},
		{"a guest smaller than the EBDA start has all of it as RAM",
			0x80000, []E820Entry{{0, 0x80000, E820RAM}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewGuestMemory(tt.size)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			got := E820(m)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("E820 = %#v\nwant   %#v", got, tt.want)
			}
			checkE820(t, m, got)
		})
	}
}

// checkE820 checks what any memory map must satisfy: sorted, no overlap,
// nothing over the VGA window, every RAM entry backed by guest RAM.
func checkE820(t *testing.T, m *GuestMemory, e []E820Entry) {
	t.Helper()
	for i, x := range e {
		if x.Size == 0 {
			t.Errorf("entry %d is empty", i)
		}
		if x.Addr < VGAEnd && x.Addr+x.Size > VGAStart {
			t.Errorf("entry %d [%#x, %#x) overlaps the VGA window [%#x, %#x)", i, x.Addr, x.Addr+x.Size, VGAStart, VGAEnd)
		}
		if i > 0 && x.Addr < e[i-1].Addr+e[i-1].Size {
			t.Errorf("entry %d at %#x overlaps or precedes the one before", i, x.Addr)
		}
		if x.Type == E820RAM && !m.Contains(x.Addr, x.Size) {
			t.Errorf("RAM entry %d [%#x, %#x) is not guest RAM", i, x.Addr, x.Addr+x.Size)
		}
	}
}

// reservedContains reports whether [addr, addr+n) lies inside one
// reserved entry of e.
func reservedContains(e []E820Entry, addr, n uint64) bool {
	for _, x := range e {
		if x.Type == E820Reserved && addr >= x.Addr && addr+n <= x.Addr+x.Size {
			return true
		}
	}
	return false
}

func TestFirmwareTablesLieInReservedMemory(t *testing.T) {
	m, err := NewGuestMemory(64 * MiB)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	e := E820(m)
	for _, cpus := range []int{1, 64, 254} {
		acpi, err := ACPITables(cpus, ACPIAddr)
		if err != nil {
			t.Fatal(err)
		}
		if !reservedContains(e, ACPIAddr, uint64(len(acpi))) {
			t.Errorf("%d vCPUs: ACPI tables [%#x, %#x) are not in reserved memory", cpus, ACPIAddr, ACPIAddr+len(acpi))
		}
		if ACPIAddr+uint64(len(acpi)) > MPTableAddr {
			t.Errorf("%d vCPUs: ACPI tables run into the MP table at %#x", cpus, MPTableAddr)
		}
		mp, err := MPTable(cpus, MPTableAddr)
		if err != nil {
			t.Fatal(err)
		}
		if !reservedContains(e, MPTableAddr, uint64(len(mp))) {
			t.Errorf("%d vCPUs: MP table [%#x, %#x) is not in reserved memory", cpus, MPTableAddr, MPTableAddr+len(mp))
		}
	}
	// The RSDP must be where a kernel scans for it: 16-byte aligned in
	// [0xe0000, 0x100000).
	if ACPIAddr%16 != 0 || ACPIAddr < 0xe0000 || ACPIAddr >= 0x100000 {
		t.Errorf("RSDP at %#x is outside the BIOS scan range", ACPIAddr)
	}
	if MPTableAddr%16 != 0 || MPTableAddr < 0xf0000 || MPTableAddr >= 0x100000 {
		t.Errorf("MP floating pointer at %#x is outside the BIOS scan range", MPTableAddr)
	}
}
