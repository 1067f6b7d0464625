package bootloader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/capsule-vm/capsule/machine"
)

// zeroPage reads the zero page the loader wrote at machine.BootInfoAddr.
func zeroPage(t *testing.T, mem *machine.GuestMemory) []byte {
	t.Helper()
	return readMem(t, mem, machine.BootInfoAddr, ZeroPageSize)
}

// checkZeroPageE820 checks that the zero page's e820 table is
// machine.E820(mem), entry for entry.
func checkZeroPageE820(t *testing.T, mem *machine.GuestMemory, zp []byte) {
	t.Helper()
	le := binary.LittleEndian
	e820 := machine.E820(mem)
	if int(zp[bpE820Entries]) != len(e820) || len(e820) == 0 {
		t.Fatalf("e820_entries %d, machine.E820 has %d", zp[bpE820Entries], len(e820))
	}
	for i, e := range e820 {
		r := zp[bpE820Table+bpE820EntrySize*i:]
		if a, s, ty := le.Uint64(r), le.Uint64(r[8:]), le.Uint32(r[16:]); a != e.Addr || s != e.Size || ty != e.Type {
			t.Errorf("e820 entry %d = %#x %#x %d, want %+v", i, a, s, ty, e)
		}
	}
}

func TestELF64EmptyCmdlineStillHasACmdLinePtr(t *testing.T) {
	mem := newMem(t, 16*machine.MiB)
	if err := mem.WriteAt([]byte("stale"), machine.CmdlineAddr); err != nil {
		t.Fatal(err)
	}
	entry, info, err := Load(mem, Config{Kernel: writeFile(t, validELF().build()), CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if info.Format != FormatUnikernel || entry.RSI != machine.BootInfoAddr {
		t.Fatalf("format %v, RSI %#x; want %v with RSI at the zero page", info.Format, entry.RSI, FormatUnikernel)
	}
	le := binary.LittleEndian
	zp := zeroPage(t, mem)
	if got := le.Uint16(zp[bzBootFlag:]); got != 0xaa55 {
		t.Errorf("boot_flag %#x, want 0xaa55", got)
	}
	if got := string(zp[bzHeaderMagic:][:4]); got != "HdrS" {
		t.Errorf("header %q, want HdrS", got)
	}
	if got := le.Uint32(zp[bzKernelAlignment:]); got != 0x1000000 {
		t.Errorf("kernel_alignment %#x, want 16 MiB as Firecracker", got)
	}
	if zp[bzTypeOfLoader] != 0xff {
		t.Errorf("type_of_loader %#x, want 0xff", zp[bzTypeOfLoader])
	}
	ptr := uint64(le.Uint32(zp[bzCmdLinePtr:])) | uint64(le.Uint32(zp[bpExtCmdLinePtr:]))<<32
	if ptr == 0 || ptr != machine.CmdlineAddr {
		t.Fatalf("cmd_line_ptr %#x, want %#x (never 0)", ptr, machine.CmdlineAddr)
	}
	if b, _ := mem.Uint8(ptr); b != 0 {
		t.Errorf("command line at cmd_line_ptr starts with %#x, want NUL", b)
	}
	if got := le.Uint32(zp[bzCmdlineSize:]); got != 1 {
		t.Errorf("cmdline_size %d, want 1 (the NUL)", got)
	}
	if ri, rs := le.Uint32(zp[bzRamdiskImage:]), le.Uint32(zp[bzRamdiskSize:]); ri != 0 || rs != 0 {
		t.Errorf("ramdisk_image %#x, ramdisk_size %#x without an initrd; want 0", ri, rs)
	}
	checkZeroPageE820(t, mem, zp)
}

func TestELF64ZeroPageAndBootInfoDescribeTheInitrd(t *testing.T) {
	mem := newMem(t, 32*machine.MiB)
	// Not a cpio archive: the initrd of an ELF64 kernel may hold anything.
	initrd := bytes.Repeat([]byte("unikernel data "), 1000)
	const cmdline = "console=ttyS0 exit=5"
	cfg := Config{Kernel: writeFile(t, validELF().build()), Initrd: writeNamed(t, "initrd", initrd), Cmdline: cmdline, CPUs: 2}
	entry, info, err := Load(mem, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := Entry{Mode: Mode64, RIP: 0x100000, RSP: machine.StackTop, RSI: machine.BootInfoAddr, RDI: machine.CapsuleInfoAddr}
	if entry != want {
		t.Errorf("entry %+v, want %+v", entry, want)
	}
	if info.InitrdSize != uint64(len(initrd)) || info.InitrdAddr%pageSize != 0 || info.InitrdAddr < info.KernelEnd ||
		info.InitrdAddr+info.InitrdSize > 32*machine.MiB {
		t.Fatalf("initrd placed at %#x+%#x, kernel ends at %#x", info.InitrdAddr, info.InitrdSize, info.KernelEnd)
	}
	if got := readMem(t, mem, info.InitrdAddr, info.InitrdSize); !bytes.Equal(got, initrd) {
		t.Error("initrd bytes not in guest memory")
	}
	le := binary.LittleEndian
	zp := zeroPage(t, mem)
	if ri, rs := le.Uint32(zp[bzRamdiskImage:]), le.Uint32(zp[bzRamdiskSize:]); uint64(ri) != info.InitrdAddr || uint64(rs) != info.InitrdSize {
		t.Errorf("ramdisk_image %#x, ramdisk_size %#x; want %#x, %#x", ri, rs, info.InitrdAddr, info.InitrdSize)
	}
	if ei, es := le.Uint32(zp[bpExtRamdiskImage:]), le.Uint32(zp[bpExtRamdiskSize:]); ei != 0 || es != 0 {
		t.Errorf("ext_ramdisk_image %#x, ext_ramdisk_size %#x; want 0", ei, es)
	}
	if got := le.Uint32(zp[bzCmdlineSize:]); got != uint32(len(cmdline)+1) {
		t.Errorf("cmdline_size %d, want %d", got, len(cmdline)+1)
	}
	if got := readMem(t, mem, uint64(le.Uint32(zp[bzCmdLinePtr:])), uint64(len(cmdline)+1)); string(got) != cmdline+"\x00" {
		t.Errorf("command line %q", got)
	}
	checkZeroPageE820(t, mem, zp)

	bi := readMem(t, mem, machine.CapsuleInfoAddr, BootInfoSize)
	wantBI := []uint64{BootMagic, machine.CmdlineAddr, uint64(len(cmdline)), machine.MemMapAddr, uint64(len(machine.E820(mem))),
		2, 32 * machine.MiB, info.InitrdAddr, info.InitrdSize}
	for i, w := range wantBI {
		if got := le.Uint64(bi[8*i:]); got != w {
			t.Errorf("boot info at %#x = %#x, want %#x", 8*i, got, w)
		}
	}
	// The two blocks do not overlap: the zero page ends where the boot
	// info starts.
	if machine.BootInfoAddr+ZeroPageSize > machine.CapsuleInfoAddr || machine.CapsuleInfoAddr+BootInfoSize > machine.MemMapAddr {
		t.Error("zero page, boot info and memory map overlap")
	}
}

// testVmlinuxNoPVH is shaped like a Linux vmlinux without a PVH note:
// text and data linked at 0xffffffff81000000 and loaded from 16 MiB, a
// per-CPU segment linked at 0 and loaded after them, and the physical
// entry point e_entry = 16 MiB (startup_64).
func testVmlinuxNoPVH() testELF {
	return testELF{
		Entry: 0x1000000,
		Segs: []testSeg{
			{Flags: PFR | PFX, Addr: 0x1000000, VAddr: 0xffffffff81000000, Data: testCode},
			{Flags: PFR | PFW, Addr: 0x1200000, VAddr: 0xffffffff81200000, Data: testData, MemSize: 0x5000},
			{Flags: PFR | PFW, Addr: 0x1300000, VAddr: 0x10, Data: testData},
			{Type: ptNote, Flags: PFR, Addr: 0x1100000, VAddr: 0xffffffff81100000, Data: note("GNU\x00", 3, []byte("id"))},
		},
	}
}

func TestELF64VmlinuxShapeIsEnteredAtItsPhysicalEntry(t *testing.T) {
	mem := newMem(t, 64*machine.MiB)
	initrd := cpioLike(0x3000)
	cfg := Config{Kernel: writeFile(t, testVmlinuxNoPVH().build()), Initrd: writeNamed(t, "initrd", initrd), Cmdline: "console=ttyS0", CPUs: 1}
	entry, info, err := Load(mem, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := Entry{Mode: Mode64, RIP: 0x1000000, RSP: machine.StackTop, RSI: machine.BootInfoAddr, RDI: machine.CapsuleInfoAddr}
	if entry != want {
		t.Errorf("entry %+v, want %+v", entry, want)
	}
	if info.Format != FormatUnikernel || info.KernelAddr != 0x1000000 || info.KernelEnd != 0x1300000+uint64(len(testData)) {
		t.Errorf("info %+v", info)
	}
	for _, s := range []struct {
		addr uint64
		data []byte
	}{{0x1000000, testCode}, {0x1200000, testData}, {0x1300000, testData}} {
		if got := readMem(t, mem, s.addr, uint64(len(s.data))); !bytes.Equal(got, s.data) {
			t.Errorf("segment at physical %#x = %x, want %x", s.addr, got, s.data)
		}
	}
	zp := zeroPage(t, mem)
	le := binary.LittleEndian
	if uint64(le.Uint32(zp[bzRamdiskImage:])) != info.InitrdAddr || uint64(le.Uint32(zp[bzRamdiskSize:])) != uint64(len(initrd)) {
		t.Errorf("ramdisk fields %#x+%#x, initrd at %#x", le.Uint32(zp[bzRamdiskImage:]), le.Uint32(zp[bzRamdiskSize:]), info.InitrdAddr)
	}
}

func TestELF64EntryMustBePhysical(t *testing.T) {
	e := testVmlinuxNoPVH()
	e.Entry = 0xffffffff81000000 // the virtual address of startup_64
	_, _, err := Load(newMem(t, 64*machine.MiB), Config{Kernel: writeFile(t, e.build()), CPUs: 1})
	if !errors.Is(err, ErrBadLayout) || !strings.Contains(err.Error(), "entry point 0xffffffff81000000") {
		t.Errorf("error %v, want a bad layout naming the entry point", err)
	}
}

func TestEmptyKernelFileSaysEmpty(t *testing.T) {
	path := writeNamed(t, "vmlinux", nil)
	_, _, err := Load(newMem(t, 4*machine.MiB), Config{Kernel: path, CPUs: 1})
	if err == nil || err.Error() != "kernel "+path+": empty file (0 bytes), not a kernel" || !errors.Is(err, ErrNotKernel) {
		t.Errorf("Load: error %v, want an ErrNotKernel that says the file is empty", err)
	}
	_, err = LoadUnikernel(newMem(t, 4*machine.MiB), path, "", 1)
	if err == nil || !strings.Contains(err.Error(), "empty") || !errors.Is(err, ErrNotELF) {
		t.Errorf("LoadUnikernel: error %v, want an ErrNotELF that says the file is empty", err)
	}
}
