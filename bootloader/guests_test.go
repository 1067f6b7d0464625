package bootloader

import (
	"encoding/binary"
	"errors"
	"os"
	"testing"

	"github.com/capsule-vm/capsule/machine"
)

// builtGuest returns the path of testdata/guests/NAME.elf, skipping the
// test when it has not been built.
func builtGuest(t *testing.T, name string) string {
	t.Helper()
	path := "../testdata/guests/" + name + ".elf"
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s not built; run make %s", path, path[3:])
	}
	return path
}

func TestTestGuestsLoadInTheirFormat(t *testing.T) {
	for _, tt := range []struct {
		name   string
		format Format
		mode   Mode
		rax    uint64
	}{
		{"fczeropage", FormatUnikernel, Mode64, 0},
		{"debugexit", FormatUnikernel, Mode64, 0},
		{"pvpanic", FormatUnikernel, Mode64, 0},
		{"mbmmap", FormatMultiboot, Mode32, MultibootBootloaderMagic},
	} {
		t.Run(tt.name+" loads as "+tt.format.String(), func(t *testing.T) {
			path := builtGuest(t, tt.name)
			mem := newMem(t, 16*machine.MiB)
			entry, info, err := Load(mem, Config{Kernel: path, Cmdline: "exit=9", CPUs: 1})
			if err != nil {
				t.Fatal(err)
			}
			if info.Format != tt.format || entry.Mode != tt.mode || entry.RAX != tt.rax {
				t.Fatalf("format %v, entry %+v; want %v in %v with RAX %#x", info.Format, entry, tt.format, tt.mode, tt.rax)
			}
			if entry.RIP < machine.KernelMin || entry.RIP >= info.KernelEnd {
				t.Errorf("entry %#x outside the kernel [%#x, %#x)", entry.RIP, info.KernelAddr, info.KernelEnd)
			}
		})
	}
}

// overlapsVGA reports whether [addr, addr+size) meets the VGA window.
func overlapsVGA(addr, size uint64) bool {
	return addr < machine.VGAEnd && addr+size > machine.VGAStart
}

// TestEveryMemoryMapLeavesTheVGAWindowOut loads a kernel of each format
// that hands over a memory map and reads the map back from guest memory
// as the kernel would: none may cover [0xA0000, 0xC0000), and each must
// list the reserved EBDA and BIOS area.
func TestEveryMemoryMapLeavesTheVGAWindowOut(t *testing.T) {
	le := binary.LittleEndian
	type entry = mapEntry
	for _, tt := range []struct {
		name   string
		kernel []byte
		read   func(t *testing.T, mem *machine.GuestMemory) []entry
	}{
		{"the zero page's e820 table of a bzImage", testBz{InitSize: 0x100000, PrefAddress: 0x100000}.build(), readZeroPageE820},
		{"the zero page's e820 table of an ELF64 kernel", validELF().build(), readZeroPageE820},
		{"the capsule memory map of an ELF64 kernel", validELF().build(), func(t *testing.T, mem *machine.GuestMemory) []entry {
			bi := readMem(t, mem, machine.CapsuleInfoAddr, BootInfoSize)
			return read24(t, mem, le.Uint64(bi[0x18:]), le.Uint64(bi[0x20:]))
		}},
		{"the PVH memmap", testVmlinux().build(), func(t *testing.T, mem *machine.GuestMemory) []entry {
			si := readMem(t, mem, machine.BootInfoAddr, pvhStartInfoSize)
			return read24(t, mem, le.Uint64(si[pvhMemmapPaddr:]), uint64(le.Uint32(si[pvhMemmapEntries:])))
		}},
		{"the Multiboot mmap", testMultibootKludge(), func(t *testing.T, mem *machine.GuestMemory) []entry {
			mbi := readMem(t, mem, machine.BootInfoAddr, 0x60)
			if le.Uint32(mbi[mbiFlags:])&mbiFlagMmap == 0 {
				t.Fatal("no MMAP flag")
			}
			addr, n := uint64(le.Uint32(mbi[mbiMmapAddr:])), uint64(le.Uint32(mbi[mbiMmapLength:]))
			mm := readMem(t, mem, addr, n)
			var es []entry
			for off := uint64(0); off+4 <= n; off += uint64(le.Uint32(mm[off:])) + 4 {
				r := mm[off:]
				es = append(es, entry{le.Uint64(r[4:]), le.Uint64(r[12:]), le.Uint32(r[20:])})
			}
			return es
		}},
	} {
		t.Run(tt.name+" has no entry over the VGA window", func(t *testing.T) {
			mem := newMem(t, 64*machine.MiB)
			if _, _, err := Load(mem, Config{Kernel: writeNamed(t, "kernel", tt.kernel), CPUs: 1}); err != nil {
				t.Fatal(err)
			}
			es := tt.read(t, mem)
			want := []entry{
				{0, 0x9fc00, machine.E820RAM},
				{0x9fc00, 0x400, machine.E820Reserved},
				{0xf0000, 0x10000, machine.E820Reserved},
				{0x100000, 63 * machine.MiB, machine.E820RAM},
			}
			if len(es) != len(want) {
				t.Fatalf("map %+v, want %+v", es, want)
			}
			for i, e := range es {
				if overlapsVGA(e.addr, e.size) {
					t.Errorf("entry %d [%#x, %#x) overlaps the VGA window", i, e.addr, e.addr+e.size)
				}
				if e != want[i] {
					t.Errorf("entry %d = %+v, want %+v", i, e, want[i])
				}
			}
		})
	}
}

// mapEntry is one memory-map entry as a kernel reads it.
type mapEntry struct {
	addr, size uint64
	typ        uint32
}

// readZeroPageE820 reads the e820 table of the zero page.
func readZeroPageE820(t *testing.T, mem *machine.GuestMemory) []mapEntry {
	t.Helper()
	zp := readMem(t, mem, machine.BootInfoAddr, ZeroPageSize)
	le := binary.LittleEndian
	var es []mapEntry
	for i := range int(zp[bpE820Entries]) {
		r := zp[bpE820Table+bpE820EntrySize*i:]
		es = append(es, mapEntry{le.Uint64(r), le.Uint64(r[8:]), le.Uint32(r[16:])})
	}
	return es
}

// read24 reads n memory-map records of 24 bytes (u64 address, u64 size,
// u32 type, u32 zero) at addr: the capsule memory map and PVH's memmap.
func read24(t *testing.T, mem *machine.GuestMemory, addr, n uint64) []mapEntry {
	t.Helper()
	le := binary.LittleEndian
	b := readMem(t, mem, addr, n*MemMapEntrySize)
	var es []mapEntry
	for i := range n {
		r := b[i*MemMapEntrySize:]
		es = append(es, mapEntry{le.Uint64(r), le.Uint64(r[8:]), le.Uint32(r[16:])})
	}
	return es
}
