package bootloader

import (
	"encoding/binary"
	"errors"
	"os"
	"testing"

	"github.com/capsule-vm/capsule/internal/kvmtest"
	"github.com/capsule-vm/capsule/machine"
)

// checkEnteredAsELF64 loads a vmlinux whose PVH note is hidden and checks
// that it is entered the Firecracker way: long mode at the physical
// e_entry, RSI = the zero page.
func checkEnteredAsELF64(t *testing.T, kernel []byte, mem *machine.GuestMemory, initrd []byte) Info {
	t.Helper()
	if _, ok, err := FindPVHEntry(kernel); ok || err != nil {
		t.Fatalf("FindPVHEntry still finds the entry (ok %v, %v)", ok, err)
	}
	cfg := Config{Kernel: writeNamed(t, "vmlinux", kernel), Cmdline: "console=ttyS0", CPUs: 1}
	if initrd != nil {
		cfg.Initrd = writeNamed(t, "initrd", initrd)
	}
	entry, info, err := Load(mem, cfg)
	if err != nil {
		t.Fatal(err)
	}
	eEntry := binary.LittleEndian.Uint64(kernel[elf64Entry:])
	if info.Format != FormatUnikernel || entry.Mode != Mode64 || entry.RIP != eEntry || entry.RSI != machine.BootInfoAddr {
		t.Fatalf("format %v, entry %+v; want %v in long mode at e_entry %#x with RSI %#x",
			info.Format, entry, FormatUnikernel, eEntry, machine.BootInfoAddr)
	}
	zp := readMem(t, mem, machine.BootInfoAddr, ZeroPageSize)
	if binary.LittleEndian.Uint16(zp[bzBootFlag:]) != 0xaa55 || string(zp[bzHeaderMagic:][:4]) != "HdrS" ||
		binary.LittleEndian.Uint32(zp[bzCmdLinePtr:]) != machine.CmdlineAddr {
		t.Error("zero page lacks the boot flag, HdrS or cmd_line_ptr")
	}
	return info
}

func TestVmlinuxWithItsPVHNoteHiddenIsEnteredAsELF64(t *testing.T) {
	e := testVmlinux()
	e.Entry = 0x1000010 // physical, as Linux's ENTRY(phys_startup_64)
	data := e.build()
	if _, ok, _ := FindPVHEntry(data); !ok {
		t.Fatal("the test vmlinux has no PVH note to hide")
	}
	if err := kvmtest.HidePVHNote(data); err != nil {
		t.Fatal(err)
	}
	if info := checkEnteredAsELF64(t, data, newMem(t, 64*machine.MiB), cpioLike(0x1000)); !info.Linux {
		t.Error("a vmlinux-shaped ELF with a \"Linux\" note is not known as Linux")
	}
}

// TestMinimalVmlinuxWithoutPVH is the recipe for booting
// testdata/images/minimal.vmlinux through the ELF64 path, checked on the
// host: hide the PVH note in a copy and load it.
func TestMinimalVmlinuxWithoutPVH(t *testing.T) {
	const path = "../testdata/images/minimal.vmlinux"
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Skip("testdata/images/minimal.vmlinux not built; run make images")
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := kvmtest.HidePVHNote(data); err != nil {
		t.Fatal(err)
	}
	info := checkEnteredAsELF64(t, data, newMem(t, 256*machine.MiB), cpioLike(0x1000))
	if !info.Linux {
		t.Error("a vmlinux without PVH is not known as Linux (its \"Linux\" ELF notes were not found)")
	}
}
