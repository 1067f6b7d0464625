package devices

import (
	"encoding/binary"
	"testing"
)

func TestDebugExitStatusIsQEMUs(t *testing.T) {
	for _, tc := range []struct {
		data   []byte
		status int
	}{
		{[]byte{0}, 1},
		{[]byte{1}, 3},
		{[]byte{0x10}, 0x21},
		{[]byte{0x7f}, 0xff},
		{[]byte{0x80}, 1},          // (0x80<<1)|1 = 0x101, as a byte-sized status
		{[]byte{2, 0, 0, 0}, 5},    // a 32-bit write
		{[]byte{0x31, 0x12}, 0x63}, // a 16-bit write: (0x1231<<1|1)&0xff
		{[]byte{0xff, 0xff, 0xff, 0xff}, 0xff},
	} {
		got := -1
		d := &DebugExit{OnExit: func(s int) { got = s }}
		d.Write(0, tc.data)
		if got != tc.status {
			t.Errorf("write % x: status %d, want %d", tc.data, got, tc.status)
		}
	}
	(&DebugExit{}).Write(0, []byte{1}) // no handler: no panic
}

func TestPVPanic(t *testing.T) {
	panics, loaded := 0, 0
	d := &PVPanic{OnPanic: func() { panics++ }, OnCrashLoaded: func() { loaded++ }}
	b := []byte{0}
	d.Read(0, b)
	if b[0] != pvpanicPanicked|pvpanicCrashLoaded {
		t.Fatalf("capabilities %#x, want panicked|crash loaded", b[0])
	}
	d.Write(0, []byte{pvpanicCrashLoaded})
	if panics != 0 || loaded != 1 {
		t.Fatalf("crash loaded: %d panics, %d loaded", panics, loaded)
	}
	d.Write(0, []byte{0}) // nothing
	d.Write(0, []byte{pvpanicPanicked | pvpanicCrashLoaded})
	d.Write(0, []byte{pvpanicPanicked})
	if panics != 1 || loaded != 1 {
		t.Fatalf("after two panics: %d panic calls (want 1), %d loaded", panics, loaded)
	}
}

func pciRead(p *PCIHostBridge, addr uint32, off uint64, n int) uint32 {
	var a [4]byte
	binary.LittleEndian.PutUint32(a[:], addr)
	p.Write(0, a[:])
	b := make([]byte, 4)
	p.Read(PCIConfigData-PCIConfigAddress+off, b[:n])
	return binary.LittleEndian.Uint32(b)
}

func confAddr(bus, dev, fn, reg uint32) uint32 {
	return pciEnable | bus<<16 | dev<<11 | fn<<8 | reg
}

func TestPCIHostBridgeAloneOnBusZero(t *testing.T) {
	p := &PCIHostBridge{}
	// Linux's check for mechanism #1: the enable bit written to 0xcf8
	// reads back.
	p.Write(3, []byte{1}) // byte write to 0xcfb, as the probe does first
	p.Write(0, []byte{0, 0, 0, 0x80})
	b := make([]byte, 4)
	p.Read(0, b)
	if got := binary.LittleEndian.Uint32(b); got != 0x80000000 {
		t.Fatalf("address register reads %#x, want 0x80000000", got)
	}
	if id := pciRead(p, confAddr(0, 0, 0, 0), 0, 4); id != hostBridgeDevice<<16|hostBridgeVendor {
		t.Errorf("00:00.0 id %#x", id)
	}
	if class := pciRead(p, confAddr(0, 0, 0, 8), 2, 2); class != 0x0600 {
		t.Errorf("00:00.0 class (16-bit read at 0xcfe) %#x, want 0x0600", class)
	}
	if ht := pciRead(p, confAddr(0, 0, 0, 0xc), 2, 1); ht != 0 {
		t.Errorf("header type %#x, want 0 (single function, type 0)", ht)
	}
	if bar := pciRead(p, confAddr(0, 0, 0, 0x10), 0, 4); bar != 0 {
		t.Errorf("BAR0 %#x, want 0", bar)
	}
	for _, a := range []uint32{
		confAddr(0, 1, 0, 0), confAddr(0, 31, 0, 0), confAddr(0, 0, 1, 0), confAddr(1, 0, 0, 0),
		confAddr(0, 0, 0, 0) &^ pciEnable, confAddr(0, 0, 0, 0) | 1<<24,
	} {
		if v := pciRead(p, a, 0, 4); v != 0xffffffff {
			t.Errorf("address %#x reads %#x, want all ones (nothing there)", a, v)
		}
	}
	// Writes to configuration space are ignored.
	p.Write(0, []byte{0, 0, 0, 0x80})
	p.Write(PCIConfigData-PCIConfigAddress, []byte{1, 2, 3, 4})
	if id := pciRead(p, confAddr(0, 0, 0, 0), 0, 4); id != hostBridgeDevice<<16|hostBridgeVendor {
		t.Errorf("id after a write %#x", id)
	}
}
