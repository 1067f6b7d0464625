package machine

import (
	"bytes"
	"testing"
)

func TestAMLPkgLength(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want []byte // the PkgLength bytes
	}{
		{0, []byte{0x01}},
		{62, []byte{0x3f}},
		{63, []byte{0x41, 0x04}}, // 65 = 0x41: two bytes, low nibble 1, then 0x04
		{300, []byte{0x4e, 0x12}},
		{5000, []byte{0x8b, 0x38, 0x01}}, // 5003 needs three bytes
	} {
		got := amlPkgLength(make([]byte, tc.n))
		if head := got[:len(tc.want)]; !bytes.Equal(head, tc.want) {
			t.Errorf("PkgLength of %d bytes: % x, want % x", tc.n, head, tc.want)
		}
		// Decode it back: the length counts itself.
		lead := got[0]
		extra := int(lead >> 6)
		total := int(lead & 0x3f)
		if extra > 0 {
			total = int(lead & 0xf)
			for i := 1; i <= extra; i++ {
				total |= int(got[i]) << (4 + 8*(i-1))
			}
		}
		if total != tc.n+1+extra {
			t.Errorf("PkgLength of %d bytes decodes to %d, want %d", tc.n, total, tc.n+1+extra)
		}
	}
}

// The DSDT is checked against the disassembly of ACPICA's iasl (-d):
// Name (_S5, Package (0x02) {Zero, Zero}) and Device (\_SB.PEVT) with
// _HID "QEMU0001", _CRS IO (Decode16, 0x0505, 0x0505, 0x01, 0x01) and
// _STA 0x0F. These are its bytes.
func TestDSDTBytes(t *testing.T) {
	want := []byte{
		0x08, '_', 'S', '5', '_', 0x12, 0x04, 0x02, 0x00, 0x00,
		0x5b, 0x82, 0x34, '\\', 0x2e, '_', 'S', 'B', '_', 'P', 'E', 'V', 'T',
		0x08, '_', 'H', 'I', 'D', 0x0d, 'Q', 'E', 'M', 'U', '0', '0', '0', '1', 0x00,
		0x08, '_', 'C', 'R', 'S', 0x11, 0x0d, 0x0a, 0x0a,
		0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01, 0x79, 0x00,
		0x08, '_', 'S', 'T', 'A', 0x0a, 0x0f,
	}
	if !bytes.Equal(dsdtAML, want) {
		t.Fatalf("DSDT AML\n% x\nwant\n% x", dsdtAML, want)
	}
}
