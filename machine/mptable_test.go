package machine

import (
	"encoding/binary"
	"testing"
)

func TestMPTableChecksumsAndCounts(t *testing.T) {
	for _, cpus := range []int{1, 2, 8, 254} {
		tb, err := MPTable(cpus, MPTableAddr)
		if err != nil {
			t.Fatalf("%d cpus: %v", cpus, err)
		}
		fp, cfg := tb[:16], tb[16:]
		if string(fp[:4]) != "_MP_" || checksum(fp) != 0 {
			t.Fatalf("%d cpus: bad floating pointer % x", cpus, fp)
		}
		if got := binary.LittleEndian.Uint32(fp[4:]); got != MPTableAddr+16 {
			t.Fatalf("config table pointer %#x", got)
		}
		if string(cfg[:4]) != "PCMP" || checksum(cfg) != 0 {
			t.Fatalf("%d cpus: bad config header or checksum", cpus)
		}
		if l := binary.LittleEndian.Uint16(cfg[4:]); int(l) != len(cfg) {
			t.Fatalf("base table length %d, table is %d bytes", l, len(cfg))
		}
		// Walk the entries the way a kernel does, counting processors.
		n := int(binary.LittleEndian.Uint16(cfg[34:]))
		off, procs, boot, ioapics := 44, 0, 0, 0
		for range n {
			switch cfg[off] {
			case mpProcessor:
				procs++
				if cfg[off+1] != byte(procs-1) || cfg[off+3]&mpCPUEnabled == 0 {
					t.Fatalf("processor entry %d: % x", procs-1, cfg[off:off+20])
				}
				if cfg[off+3]&mpCPUBoot != 0 {
					boot++
				}
				off += 20
			case mpIOAPIC:
				ioapics++
				if binary.LittleEndian.Uint32(cfg[off+4:]) != IOAPICAddr {
					t.Fatal("I/O APIC address")
				}
				off += 8
			default:
				off += 8
			}
		}
		if off != len(cfg) || procs != cpus || boot != 1 || ioapics != 1 {
			t.Fatalf("%d cpus: walked %d of %d bytes, %d processors (%d boot), %d I/O APICs", cpus, off, len(cfg), procs, boot, ioapics)
		}
	}
	if _, err := MPTable(0, MPTableAddr); err == nil {
		t.Fatal("MP table for 0 vCPUs")
	}
}
