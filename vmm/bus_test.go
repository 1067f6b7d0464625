package vmm

import (
	"testing"

	"github.com/capsule-vm/capsule/devices"
)

type nopDev struct{ name string }

func (nopDev) Read(uint64, []byte)  {}
func (nopDev) Write(uint64, []byte) {}

func TestBusFindsDevicesAndRefusesOverlaps(t *testing.T) {
	var b bus
	a, c := nopDev{"a"}, nopDev{"c"}
	if err := b.insert(0x3f8, 8, a); err != nil {
		t.Fatal(err)
	}
	if err := b.insert(0x60, 5, c); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		base    uint64
		size    uint64
		refused bool
	}{
		{"same range", 0x3f8, 8, true},
		{"overlaps the start", 0x3f0, 9, true},
		{"overlaps the end", 0x3ff, 4, true},
		{"inside", 0x3fa, 1, true},
		{"covers", 0x300, 0x200, true},
		{"empty", 0x100, 0, true},
		{"wraps around", ^uint64(0) - 1, 4, true},
		{"adjacent below", 0x3f0, 8, false},
		{"adjacent above", 0x400, 8, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := b.insert(tc.base, tc.size, nopDev{tc.name})
			if (err != nil) != tc.refused {
				t.Fatalf("insert(%#x, %d) error = %v, want refused=%v", tc.base, tc.size, err, tc.refused)
			}
		})
	}
	for _, tc := range []struct {
		addr uint64
		want devices.Device
		off  uint64
	}{
		{0x3f8, a, 0}, {0x3ff, a, 7}, {0x64, c, 4}, {0x60, c, 0},
	} {
		d, off, ok := b.lookup(tc.addr)
		if !ok || d != tc.want || off != tc.off {
			t.Errorf("lookup(%#x) = %v, %d, %v; want %v, %d", tc.addr, d, off, ok, tc.want, tc.off)
		}
	}
	for _, addr := range []uint64{0, 0x5f, 0x65, 0x3e0, 0x408, ^uint64(0)} {
		if d, _, ok := b.lookup(addr); ok {
			t.Errorf("lookup(%#x) found %v, want nothing", addr, d)
		}
	}
}
