package machine

import (
	"encoding/binary"
	"testing"
)

func TestACPITablesAreWellFormed(t *testing.T) {
	const base = ACPIAddr
	for _, cpus := range []int{1, 2, 64} {
		b, err := ACPITables(cpus, base)
		if err != nil {
			t.Fatal(err)
		}
		le := binary.LittleEndian
		table := func(addr uint64) []byte {
			off := addr - base
			n := le.Uint32(b[off+4:])
			tb := b[off : off+uint64(n)]
			if checksum(tb) != 0 {
				t.Fatalf("%s checksum", tb[:4])
			}
			return tb
		}
		r := b[:36]
		if string(r[:8]) != "RSD PTR " || checksum(r[:20]) != 0 || checksum(r) != 0 || r[15] != 2 {
			t.Fatalf("bad RSDP % x", r)
		}
		xsdt := table(le.Uint64(r[24:]))
		if string(xsdt[:4]) != "XSDT" || len(xsdt) != 36+16 {
			t.Fatalf("XSDT %q length %d", xsdt[:4], len(xsdt))
		}
		sigs := map[string][]byte{}
		for i := 36; i < len(xsdt); i += 8 {
			tb := table(le.Uint64(xsdt[i:]))
			sigs[string(tb[:4])] = tb
		}
		f, m := sigs["FACP"], sigs["APIC"]
		if f == nil || m == nil {
			t.Fatalf("XSDT lists %v, want FACP and APIC", sigs)
		}
		if len(f) != fadtSize || le.Uint32(f[fadtPM1aCntBlk:]) != PMBase+4 || le.Uint16(f[fadtSCIInt:]) != SCIIRQ {
			t.Fatal("FADT lacks the PM1a control block or the SCI")
		}
		if fc := le.Uint64(f[fadtXFirmwareCtrl:]); fc%64 != 0 || string(b[fc-base:fc-base+4]) != "FACS" {
			t.Fatalf("FACS at %#x", fc)
		}
		if d := table(le.Uint64(f[fadtXDSDT:])); string(d[:4]) != "DSDT" || string(d[36:]) != string(dsdtAML) {
			t.Fatalf("X_DSDT points at %q", d[:4])
		}
		if le.Uint64(f[fadtResetReg+4:]) != 0x64 || f[fadtResetValue] != 0xfe {
			t.Fatal("reset register is not the i8042 reset")
		}
		lapics, ioapics := 0, 0
		for off := 44; off < len(m); off += int(m[off+1]) {
			if m[off+1] == 0 {
				t.Fatal("zero-length MADT entry")
			}
			switch m[off] {
			case 0:
				if m[off+3] != byte(lapics) || le.Uint32(m[off+4:])&1 == 0 {
					t.Fatalf("local APIC entry %d: % x", lapics, m[off:off+8])
				}
				lapics++
			case 1:
				ioapics++
				if le.Uint32(m[off+4:]) != IOAPICAddr {
					t.Fatal("I/O APIC address")
				}
			}
		}
		if lapics != cpus || ioapics != 1 {
			t.Fatalf("MADT has %d local APICs and %d I/O APICs for %d vCPUs", lapics, ioapics, cpus)
		}
	}
}
