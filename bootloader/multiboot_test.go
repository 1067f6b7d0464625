package bootloader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/capsule-vm/capsule/machine"
)

func TestParseMultibootKludge(t *testing.T) {
	img := testMultibootKludge()
	h, err := ParseMultiboot(img)
	if err != nil {
		t.Fatal(err)
	}
	end := uint32(0x100000 + len(img))
	want := MultibootHeader{
		Offset: 0x20, Flags: MultibootPageAlign | MultibootMemInfo | MultibootAoutKludge,
		HeaderAddr: 0x100020, LoadAddr: 0x100000, LoadEndAddr: end, BSSEndAddr: end + 0x2000, EntryAddr: 0x100040,
		LoadOffset: 0, LoadSize: uint64(len(img)), MemSize: uint64(len(img)) + 0x2000,
	}
	if *h != want || !h.HasAddress() {
		t.Errorf("header %+v, want %+v", *h, want)
	}
}

func TestParseMultibootELF(t *testing.T) {
	h, err := ParseMultiboot(testMultibootELF32())
	if err != nil {
		t.Fatal(err)
	}
	if h.Offset != 0x80 || h.HasAddress() || h.Flags != MultibootPageAlign|MultibootMemInfo {
		t.Errorf("header %+v", *h)
	}
}

func TestParseMultibootSearch(t *testing.T) {
	le := binary.LittleEndian
	// The last aligned slot of the first 8 KiB.
	img := append(make([]byte, 8192-12), mbHeader(0)...)
	if h, err := ParseMultiboot(img); err != nil || h.Offset != 8192-12 {
		t.Errorf("header at 8180: %+v, %v", h, err)
	}
	// Not aligned: not found.
	img = append(make([]byte, 102), mbHeader(0)...)
	if _, err := ParseMultiboot(img); !errors.Is(err, ErrNotKernel) {
		t.Errorf("unaligned header: %v, want ErrNotKernel", err)
	}
	// Past 8 KiB: not found.
	img = append(make([]byte, 8192), mbHeader(0)...)
	if _, err := ParseMultiboot(img); !errors.Is(err, ErrNotKernel) {
		t.Errorf("header at 8192: %v, want ErrNotKernel", err)
	}
	// A bad candidate before a good one: the good one wins.
	bad := mbHeader(0)
	le.PutUint32(bad[8:], 0)
	img = append(bad, mbHeader(MultibootVideoMode, 0, 0, 0, 0, 0, 0, 1024, 768, 32)...)
	h, err := ParseMultiboot(img)
	if err != nil || h.Offset != 12 || h.Width != 1024 || h.Height != 768 || h.Depth != 32 {
		t.Errorf("second header: %+v, %v", h, err)
	}
}

func TestParseMultibootErrors(t *testing.T) {
	le := binary.LittleEndian
	patch := func(off int, v uint32) []byte {
		b := testMultibootKludge()
		le.PutUint32(b[0x20+off:], v)
		if off != mbChecksum {
			le.PutUint32(b[0x20+mbChecksum:], -(le.Uint32(b[0x20:]) + le.Uint32(b[0x20+mbFlags:])))
		}
		return b
	}
	img := testMultibootKludge()
	end := uint32(0x100000 + len(img))
	tests := []struct {
		name string
		data []byte
		want error
		msg  string
	}{
		{"empty", nil, ErrNotKernel, "no Multiboot header in the first 8192 bytes"},
		{"text", []byte("hello, world\n"), ErrNotKernel, ""},
		{"bad checksum", patch(mbChecksum, 0), ErrBadHeader,
			"bad Multiboot header at 0x20: checksum 0x0 makes magic+flags+checksum 0x1baeb005, want 0"},
		{"unknown required flag", patch(mbFlags, MultibootAoutKludge|1<<5), ErrUnsupported, ""},
		{"address fields cut", testMultibootKludge()[:0x30], ErrTruncated, ""},
		{"load_addr above header_addr", patch(mbLoadAddr, 0x100040), ErrBadLayout, ""},
		{"load_addr before the file", patch(mbLoadAddr, 0xfff00), ErrBadLayout, ""},
		{"load_addr below 1 MiB", patch(mbHeaderAddr, 0x20+0x80000), ErrBadLayout, ""},
		{"load_end_addr past the file", patch(mbLoadEndAddr, end+1), ErrTruncated, ""},
		{"load_end_addr not above load_addr", patch(mbLoadEndAddr, 0x100000), ErrBadLayout, ""},
		{"bss_end_addr below load_end_addr", patch(mbBSSEndAddr, end-1), ErrBadLayout, ""},
		{"entry below load_addr", patch(mbEntryAddr, 0xfffff), ErrBadLayout, ""},
		{"entry past the loaded bytes", patch(mbEntryAddr, end), ErrBadLayout, ""},
		{"image above 4 GiB", func() []byte {
			b := patch(mbHeaderAddr, 0xfffffff0)
			le.PutUint32(b[0x20+mbLoadAddr:], 0xfffffff0-0x20)
			le.PutUint32(b[0x20+mbLoadEndAddr:], 0)
			le.PutUint32(b[0x20+mbBSSEndAddr:], 0)
			le.PutUint32(b[0x20+mbEntryAddr:], 0xfffffff0)
			le.PutUint32(b[0x20+mbChecksum:], -(le.Uint32(b[0x20:]) + le.Uint32(b[0x20+mbFlags:])))
			return b
		}(), ErrBadLayout, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseMultiboot(tt.data)
			if !errors.Is(err, tt.want) || h != nil {
				t.Fatalf("ParseMultiboot = %+v, %v; want %v", h, err, tt.want)
			}
			if tt.msg != "" && err.Error() != tt.msg {
				t.Errorf("error %q, want %q", err, tt.msg)
			}
			t.Log(err)
		})
	}
}

// checkMultibootInfo checks the Multiboot information structure and
// memory map in mem.
func checkMultibootInfo(t *testing.T, mem *machine.GuestMemory, initrdAddr, initrdSize uint64) {
	t.Helper()
	le := binary.LittleEndian
	mbi := readMem(t, mem, machine.BootInfoAddr, pageSize)
	e820 := machine.E820(mem)
	flags := uint64(1<<0 | 1<<2 | 1<<6 | 1<<9)
	mods, modsAddr, modString := uint64(0), uint64(0), uint64(0)
	if initrdSize != 0 {
		flags |= 1 << 3
		mods, modsAddr, modString = 1, MultibootModsAddr, 0x1440
	}
	for _, f := range []struct{ off, want uint64 }{
		{0, flags},
		{4, 639},                               // mem_lower
		{8, (mem.Size() - machine.MiB) / 1024}, // mem_upper (RAM below 3 GiB here)
		{12, 0},                                // boot_device
		{16, machine.CmdlineAddr},              // cmdline
		{20, mods},                             // mods_count
		{24, modsAddr},                         // mods_addr
		{44, uint64(24 * len(e820))},           // mmap_length
		{48, machine.MemMapAddr},               // mmap_addr
		{64, machine.BootInfoAddr + 0x800},     // boot_loader_name
		{0x400, initrdAddr},                    // mod_start
		{0x404, initrdAddr + initrdSize},       // mod_end
		{0x408, modString},                     // string
		{0x40c, 0},                             // reserved
	} {
		if got := uint64(le.Uint32(mbi[f.off:])); got != f.want {
			t.Errorf("Multiboot info at %#x = %#x, want %#x", f.off, got, f.want)
		}
	}
	if mbi[0x440] != 0 {
		t.Error("module string not empty")
	}
	if got := string(mbi[0x800:0x808]); got != "capsule\x00" {
		t.Errorf("boot loader name %q", got)
	}
	mm := readMem(t, mem, machine.MemMapAddr, uint64(24*len(e820)+4))
	for i, e := range e820 {
		r := mm[24*i:]
		if sz, a, l, ty := le.Uint32(r), le.Uint64(r[4:]), le.Uint64(r[12:]), le.Uint32(r[20:]); sz != 20 || a != e.Addr || l != e.Size || ty != e.Type {
			t.Errorf("mmap entry %d = size %d %#x %#x %d, want %+v", i, sz, a, l, ty, e)
		}
	}
	if le.Uint32(mm[24*len(e820):]) != 0 {
		t.Error("memory past the mmap not zero")
	}
}

func TestLoadMultibootKludge(t *testing.T) {
	mem := newMem(t, 32*machine.MiB)
	img := testMultibootKludge()
	bssStart := uint64(0x100000 + len(img))
	if err := mem.WriteAt(bytes.Repeat([]byte{0xaa}, 0x3000), bssStart); err != nil {
		t.Fatal(err)
	}
	if err := mem.WriteAt(bytes.Repeat([]byte{0xcc}, pageSize), machine.BootInfoAddr); err != nil {
		t.Fatal(err)
	}
	initrd := []byte("a small module")
	const cmdline = "kernel.bin verbose"
	entry, info, err := Load(mem, Config{Kernel: writeNamed(t, "kernel.bin", img), Initrd: writeNamed(t, "mod", initrd), Cmdline: cmdline, CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Entry{Mode: Mode32, RIP: 0x100040, RAX: 0x2badb002, RBX: machine.BootInfoAddr}); entry != want {
		t.Errorf("entry %+v, want %+v", entry, want)
	}
	initrdAddr := uint64(32*machine.MiB - pageSize)
	if want := (Info{Format: FormatMultiboot, KernelAddr: 0x100000, KernelEnd: bssStart + 0x2000, InitrdAddr: initrdAddr, InitrdSize: uint64(len(initrd))}); info != want {
		t.Errorf("info %+v, want %+v", info, want)
	}
	if got := readMem(t, mem, 0x100000, uint64(len(img))); !bytes.Equal(got, img) {
		t.Error("image not loaded at load_addr")
	}
	if bss := readMem(t, mem, bssStart, 0x2000); bytes.ContainsFunc(bss, func(r rune) bool { return r != 0 }) {
		t.Error("bss not zeroed")
	}
	if b := readMem(t, mem, bssStart+0x2000, 1); b[0] != 0xaa {
		t.Errorf("byte past the bss is %#x", b[0])
	}
	if got := readMem(t, mem, initrdAddr, uint64(len(initrd))); !bytes.Equal(got, initrd) {
		t.Error("module bytes differ")
	}
	if got := readMem(t, mem, machine.CmdlineAddr, uint64(len(cmdline)+1)); string(got) != cmdline+"\x00" {
		t.Errorf("command line %q", got)
	}
	checkMultibootInfo(t, mem, initrdAddr, uint64(len(initrd)))
}

func TestLoadMultibootELF32(t *testing.T) {
	mem := newMem(t, 16*machine.MiB)
	entry, info, err := Load(mem, Config{Kernel: writeNamed(t, "kernel.elf", testMultibootELF32()), CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	// e_entry 0xc010000c is virtual: the loader jumps to its physical
	// address, 12 bytes into the code at 1 MiB.
	if want := (Entry{Mode: Mode32, RIP: 0x10000c, RAX: 0x2badb002, RBX: machine.BootInfoAddr}); entry != want {
		t.Errorf("entry %+v, want %+v", entry, want)
	}
	if want := (Info{Format: FormatMultiboot, KernelAddr: 0x100000, KernelEnd: 0x104000}); info != want {
		t.Errorf("info %+v, want %+v", info, want)
	}
	if got := readMem(t, mem, 0x10000c, uint64(len(testCode))); !bytes.Equal(got, testCode) {
		t.Errorf("code at entry %x", got)
	}
	if got := readMem(t, mem, 0x101000, uint64(len(testData))); !bytes.Equal(got, testData) {
		t.Errorf("data %q", got)
	}
	checkMultibootInfo(t, mem, 0, 0)
}

func TestLoadMultibootELF64(t *testing.T) {
	// A 64-bit kernel with a 32-bit Multiboot entry, linked at its load
	// address.
	code := append(mbHeader(0), testCode...)
	img := testELF{Entry: 0x20000c, Segs: []testSeg{{Flags: PFR | PFX, Addr: 0x200000, Data: code}}}.build()
	entry, info, err := Load(newMem(t, 16*machine.MiB), Config{Kernel: writeNamed(t, "kernel64", img), CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if entry.Mode != Mode32 || entry.RIP != 0x20000c || info.Format != FormatMultiboot {
		t.Errorf("entry %+v, info %+v", entry, info)
	}
}

func FuzzParseMultiboot(f *testing.F) {
	f.Add(testMultibootKludge())
	f.Add(testMultibootELF32())
	f.Add(append(make([]byte, 8192-12), mbHeader(0)...))
	f.Add(mbHeader(MultibootVideoMode, 0, 0, 0, 0, 0, 0, 1024, 768, 32))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseMultiboot(data)
		if err != nil {
			if h != nil {
				t.Fatal("header returned with an error")
			}
			for _, s := range []error{ErrNotKernel, ErrBadHeader, ErrUnsupported, ErrTruncated, ErrBadLayout} {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error %q wraps no sentinel", err)
		}
		le := binary.LittleEndian
		o := int(h.Offset)
		if o%4 != 0 || o+12 > min(len(data), 8192) || le.Uint32(data[o:]) != MultibootHeaderMagic ||
			le.Uint32(data[o:])+le.Uint32(data[o+4:])+le.Uint32(data[o+8:]) != 0 || h.Flags&0xfff8 != 0 {
			t.Fatalf("accepted header %+v", h)
		}
		if !h.HasAddress() {
			return
		}
		end := h.LoadOffset + h.LoadSize
		if end > uint64(len(data)) || end < h.LoadOffset || h.LoadSize == 0 || h.MemSize < h.LoadSize ||
			uint64(h.LoadAddr) < machine.KernelMin || uint64(h.LoadAddr)+h.LoadSize > 1<<32 ||
			h.EntryAddr < h.LoadAddr || uint64(h.EntryAddr) >= uint64(h.LoadAddr)+h.LoadSize {
			t.Fatalf("accepted address fields %+v in %d bytes", h, len(data))
		}
	})
}
