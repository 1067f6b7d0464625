package machine

import (
	"bytes"
	"errors"
	"testing"
)

func TestGuestMemoryChecksEveryAccess(t *testing.T) {
	m, err := NewGuestMemory(4 * MiB)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, tc := range []struct {
		name string
		gpa  uint64
		n    uint64
		ok   bool
	}{
		{"start of RAM", 0, 8, true},
		{"last byte", 4*MiB - 1, 1, true},
		{"whole RAM", 0, 4 * MiB, true},
		{"one past the end", 4 * MiB, 1, false},
		{"straddles the end", 4*MiB - 4, 8, false},
		{"address plus length overflows", ^uint64(0) - 3, 8, false},
		{"huge length", 8, ^uint64(0), false},
		{"inside the MMIO gap", MMIOGapStart + 16, 4, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.Slice(tc.gpa, tc.n)
			if (err == nil) != tc.ok {
				t.Fatalf("Slice(%#x, %#x) error = %v, want ok=%v", tc.gpa, tc.n, err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrOutOfRange) {
				t.Fatalf("error %v does not wrap ErrOutOfRange", err)
			}
		})
	}
}

func TestGuestMemoryReadsBackWhatItWrites(t *testing.T) {
	m, err := NewGuestMemory(2 * MiB)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.PutUint64(0x1000, 0x1122334455667788); err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Uint64(0x1000); v != 0x1122334455667788 {
		t.Fatalf("Uint64 = %#x", v)
	}
	if v, _ := m.Uint32(0x1004); v != 0x11223344 {
		t.Fatalf("Uint32 = %#x (little endian)", v)
	}
	if v, _ := m.Uint16(0x1000); v != 0x7788 {
		t.Fatalf("Uint16 = %#x", v)
	}
	if err := m.Zero(0x1000, 4); err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Uint64(0x1000); v != 0x1122334400000000 {
		t.Fatalf("after Zero = %#x", v)
	}
	if _, err := m.Uint64(2*MiB - 4); err == nil {
		t.Fatal("read across the end succeeded")
	}
}

func TestMemoryAboveTheGapStartsAt4GiB(t *testing.T) {
	m, err := NewGuestMemory(MMIOGapStart + 64*MiB)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	r := m.Regions()
	if len(r) != 2 || r[0].GPA != 0 || r[0].Size != MMIOGapStart || r[1].GPA != MMIOGapEnd || r[1].Size != 64*MiB {
		t.Fatalf("regions = %+v", r)
	}
	if err := m.PutUint8(MMIOGapEnd+64*MiB-1, 1); err != nil {
		t.Fatalf("last byte above the gap: %v", err)
	}
	if m.Contains(MMIOGapStart-2, 4) {
		t.Fatal("a range spanning the gap counts as RAM")
	}
}

func TestNewGuestMemoryRejectsBadSizes(t *testing.T) {
	for _, size := range []uint64{0, 4095, 1 << 50} {
		if m, err := NewGuestMemory(size); err == nil {
			m.Close()
			t.Errorf("NewGuestMemory(%d) succeeded", size)
		}
	}
}

func TestSetupLongModeIdentityMaps4GiB(t *testing.T) {
	m, err := NewGuestMemory(16 * MiB)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := SetupLongMode(m); err != nil {
		t.Fatal(err)
	}
	// Walk the tables for a few addresses, as the MMU would.
	for _, va := range []uint64{0, 0x100000, 0x1234567, MMIOGapStart + 0x1000, IdentityMapped - 1} {
		pml4e, _ := m.Uint64(PML4Addr + 8*(va>>39&511))
		pdpte, _ := m.Uint64(pml4e&^0xfff + 8*(va>>30&511))
		pde, _ := m.Uint64(pdpte&^0xfff + 8*(va>>21&511))
		if pml4e&1 == 0 || pdpte&1 == 0 || pde&0x81 != 0x81 {
			t.Fatalf("va %#x not mapped: %#x %#x %#x", va, pml4e, pdpte, pde)
		}
		if pa := pde&^0x1fffff | va&0x1fffff; pa != va {
			t.Fatalf("va %#x maps to %#x", va, pa)
		}
	}
	small, _ := NewGuestMemory(1 * MiB)
	defer small.Close()
	if err := SetupLongMode(small); err == nil {
		t.Fatal("SetupLongMode accepted 1 MiB of RAM")
	}
}

func TestResidentCountsTouchedPagesOnly(t *testing.T) {
	m, err := NewGuestMemory(64 * MiB)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	before, err := m.Resident()
	if err != nil {
		t.Fatal(err)
	}
	if before != 0 {
		t.Fatalf("fresh guest memory has %d resident bytes; it must be mapped lazily", before)
	}
	for gpa := uint64(0); gpa < 1*MiB; gpa += 4096 {
		m.PutUint8(gpa, 1)
	}
	after, _ := m.Resident()
	if after < 1*MiB || after > 2*MiB {
		t.Fatalf("resident after touching 1 MiB = %d", after)
	}
}

func TestGuestRAMIsHugePageAligned(t *testing.T) {
	m, err := NewGuestMemory(MMIOGapStart + 6*MiB)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, r := range m.Regions() {
		if a := hostAddr(r.host); a%hugePage != 0 {
			t.Errorf("region at %#x mapped at host %#x, not 2 MiB aligned", r.GPA, a)
		}
	}
}

func TestStoreUint16Atomic(t *testing.T) {
	m, err := NewGuestMemory(MinMemory)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.PutUint32(0x1000, 0x11223344)
	if err := m.StoreUint16Atomic(0x1002, 0xabcd); err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Uint32(0x1000); v != 0xabcd3344 {
		t.Errorf("word %#x after storing the high half", v)
	}
	if err := m.StoreUint16Atomic(0x1000, 0x5566); err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Uint32(0x1000); v != 0xabcd5566 {
		t.Errorf("word %#x after storing the low half", v)
	}
	if err := m.StoreUint16Atomic(0x1001, 1); err == nil {
		t.Error("odd address accepted")
	}
	if err := m.StoreUint16Atomic(m.Size()-2, 1); err != nil {
		t.Errorf("last half-word of RAM: %v", err)
	}
	if err := m.StoreUint16Atomic(m.Size(), 1); err == nil {
		t.Error("address past RAM accepted")
	}
}

func TestDiscardZeroesAndReleases(t *testing.T) {
	m, err := NewGuestMemory(8 * MiB)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	data := bytes.Repeat([]byte{0xa5}, 64*PageSize)
	if err := m.WriteAt(data, 2*MiB); err != nil {
		t.Fatal(err)
	}
	before, err := m.Resident()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Discard(2*MiB, 64*PageSize); err != nil {
		t.Fatal(err)
	}
	after, err := m.Resident()
	if err != nil {
		t.Fatal(err)
	}
	if after > before-64*PageSize {
		t.Errorf("resident %d bytes after discarding 256 KiB of %d", after, before)
	}
	got := make([]byte, len(data))
	if err := m.ReadAt(got, 2*MiB); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, len(got))) {
		t.Error("discarded pages do not read as zero")
	}
	for _, c := range []struct{ gpa, n uint64 }{{1, PageSize}, {0, 1}, {8 * MiB, PageSize}, {^uint64(0) &^ (PageSize - 1), PageSize}} {
		if err := m.Discard(c.gpa, c.n); err == nil {
			t.Errorf("Discard(%#x, %#x) accepted", c.gpa, c.n)
		}
	}
}
