package bootloader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/capsule-vm/capsule/machine"
)

func TestFindPVHEntry(t *testing.T) {
	le := binary.LittleEndian
	tests := []struct {
		name  string
		data  []byte
		entry uint32
		found bool
	}{
		{"vmlinux", testVmlinux().build(), 0x1000010, true},
		{"4-byte descriptor", testVmlinux(note("Xen\x00", 18, le.AppendUint32(nil, 0x1234567))).build(), 0x1234567, true},
		{"other notes only", testVmlinux(note("Xen\x00", 6, []byte("linux\x00")), note("GNU\x00", 18, []byte("abcd"))).build(), 0, false},
		{"empty note segment", testVmlinux([]byte{}).build(), 0, false},
		{"zero padding at the end", testVmlinux(note("GNU\x00", 3, []byte("id")), make([]byte, 8)).build(), 0, false},
		{"no note segment", validELF().build(), 0, false},
		{"second note segment", testELF{Entry: 0x100000, Segs: []testSeg{
			{Type: ptNote, Data: note("GNU\x00", 3, []byte("id"))},
			{Type: ptNote, Data: pvhNote(0x100000)},
			{Flags: PFR | PFX, Addr: 0x100000, Data: testCode},
		}}.build(), 0x100000, true},
		{"ELF32", testELF32{Entry: 0x100000, Segs: []testSeg{
			{Type: ptNote, Data: note("Xen\x00", 18, le.AppendUint32(nil, 0x100000))},
			{Flags: PFR | PFX, Addr: 0x100000, Data: testCode},
		}}.build32(), 0x100000, true},
		{"name without NUL", testVmlinux(note("Xen", 18, le.AppendUint32(nil, 1))).build(), 0, false},
		{"name too long", testVmlinux(note("Xen\x00\x00", 18, le.AppendUint32(nil, 1))).build(), 0, false},
		{"Xen note of another type", testVmlinux(note("Xen\x00", 17, le.AppendUint32(nil, 1))).build(), 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entry, found, err := FindPVHEntry(tt.data)
			if err != nil || entry != tt.entry || found != tt.found {
				t.Errorf("FindPVHEntry = %#x, %v, %v; want %#x, %v, nil", entry, found, err, tt.entry, tt.found)
			}
		})
	}
}

// withSections appends a section header table of ELF64 SHT_NOTE (and one
// SHT_PROGBITS) sections over the given byte ranges of b.
func withSections(b []byte, notes ...[2]uint64) []byte {
	le := binary.LittleEndian
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	shoff := len(b)
	b = append(b, make([]byte, elf64ShdrSize)...) // SHN_UNDEF
	progbits := make([]byte, elf64ShdrSize)
	le.PutUint32(progbits[shType:], 1)
	le.PutUint64(progbits[sh64Offset:], 1<<40) // not looked at
	b = append(b, progbits...)
	for _, n := range notes {
		sh := make([]byte, elf64ShdrSize)
		le.PutUint32(sh[shType:], shtNote)
		le.PutUint64(sh[sh64Offset:], n[0])
		le.PutUint64(sh[sh64Size:], n[1])
		le.PutUint64(sh[sh64Addralign:], 4)
		b = append(b, sh...)
	}
	le.PutUint64(b[elf64Shoff:], uint64(shoff))
	le.PutUint16(b[elf64Shentsize:], elf64ShdrSize)
	le.PutUint16(b[elf64Shnum:], uint16(2+len(notes)))
	return b
}

func TestFindPVHEntrySections(t *testing.T) {
	// No PT_NOTE segment: the notes are found through SHT_NOTE sections,
	// here in the data of a PT_LOAD segment.
	n := append(note("GNU\x00", 3, []byte("id")), pvhNote(0x100000)...)
	b := testELF{Entry: 0x100000, Segs: []testSeg{{Flags: PFR | PFX, Addr: 0x100000, Data: append(bytes.Clone(testCode), n...)}}}.build()
	off := uint64(bytes.Index(b, n))
	entry, found, err := FindPVHEntry(withSections(b, [2]uint64{off, uint64(len(n))}))
	if err != nil || !found || entry != 0x100000 {
		t.Errorf("FindPVHEntry = %#x, %v, %v; want 0x100000, true, nil", entry, found, err)
	}
	// A section table outside the file is ignored.
	b2 := withSections(b, [2]uint64{off, uint64(len(n))})
	binary.LittleEndian.PutUint64(b2[elf64Shoff:], 1<<50)
	if _, found, err := FindPVHEntry(b2); err != nil || found {
		t.Errorf("section table outside the file: %v, %v; want false, nil", found, err)
	}
	// A note section outside the file is an error.
	if _, _, err := FindPVHEntry(withSections(b, [2]uint64{off, 1 << 30})); !errors.Is(err, ErrTruncated) {
		t.Errorf("note section outside the file: %v, want ErrTruncated", err)
	}
}

func TestFindPVHEntryErrors(t *testing.T) {
	le := binary.LittleEndian
	hdr := func(namesz, descsz, typ uint32, rest string) []byte {
		b := le.AppendUint32(nil, namesz)
		b = le.AppendUint32(b, descsz)
		b = le.AppendUint32(b, typ)
		return append(b, rest...)
	}
	notePhdr := func(b []byte) []byte { return phdr(b, 2) }
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"not ELF", []byte("hello"), ErrNotELF},
		{"aarch64", func() []byte { b := testVmlinux().build(); le.PutUint16(b[offMachine:], 183); return b }(), ErrUnsupported},
		{"ET_DYN", func() []byte { b := testVmlinux().build(); le.PutUint16(b[offType:], elfTypeDyn); return b }(), ErrUnsupported},
		{"header cut", testVmlinux().build()[:50], ErrTruncated},
		{"namesz past end", testVmlinux(hdr(100, 4, 18, "Xen\x00")).build(), ErrBadLayout},
		{"namesz huge", testVmlinux(hdr(0xffffffff, 4, 18, "Xen\x00")).build(), ErrBadLayout},
		{"descsz past end", testVmlinux(hdr(4, 100, 18, "Xen\x00\x00\x00\x00\x01")).build(), ErrBadLayout},
		{"descsz huge", testVmlinux(hdr(4, 0xfffffffc, 18, "Xen\x00\x00\x00\x00\x01")).build(), ErrBadLayout},
		{"note header cut", testVmlinux(append(note("GNU\x00", 3, []byte("id")), 1, 2, 3, 4)).build(), ErrTruncated},
		{"descriptor of 3 bytes", testVmlinux(note("Xen\x00", 18, []byte{1, 2, 3})).build(), ErrBadLayout},
		{"descriptor of 16 bytes", testVmlinux(note("Xen\x00", 18, make([]byte, 16))).build(), ErrBadLayout},
		{"entry above 4 GiB", testVmlinux(pvhNote(0x1_0000_0000)).build(), ErrBadLayout},
		{"note segment past end", func() []byte {
			b := testVmlinux().build()
			le.PutUint64(notePhdr(b)[phOffFilesz:], 1<<20)
			return b
		}(), ErrTruncated},
		{"note segment offset overflow", func() []byte {
			b := testVmlinux().build()
			le.PutUint64(notePhdr(b)[phOffOffset:], ^uint64(0)-2)
			return b
		}(), ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entry, found, err := FindPVHEntry(tt.data)
			if !errors.Is(err, tt.want) || found || entry != 0 {
				t.Fatalf("FindPVHEntry = %#x, %v, %v; want %v", entry, found, err, tt.want)
			}
			t.Log(err)
		})
	}
}

func TestLoadPVH(t *testing.T) {
	mem := newMem(t, 64*machine.MiB)
	if err := mem.WriteAt(bytes.Repeat([]byte{0xaa}, 0x6000), 0x1200000); err != nil {
		t.Fatal(err)
	}
	if err := mem.WriteAt(bytes.Repeat([]byte{0xcc}, pageSize), machine.BootInfoAddr); err != nil {
		t.Fatal(err)
	}
	img := testVmlinux()
	initrd := append([]byte("070701"), bytes.Repeat([]byte{0x5a}, 3*pageSize+1-6)...)
	const cmdline = "console=hvc0"
	entry, info, err := Load(mem, Config{
		Kernel: writeNamed(t, "vmlinux", img.build()), Initrd: writeNamed(t, "initrd", initrd),
		Cmdline: cmdline, CPUs: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Entry{Mode: Mode32, RIP: 0x1000010, RBX: machine.BootInfoAddr}); entry != want {
		t.Errorf("entry %+v, want %+v", entry, want)
	}
	initrdAddr := uint64(64*machine.MiB - 4*pageSize)
	wantInfo := Info{Format: FormatPVH, Linux: true, KernelAddr: 0x1000000, KernelEnd: 0x1205000, InitrdAddr: initrdAddr, InitrdSize: uint64(len(initrd))}
	if info != wantInfo {
		t.Errorf("info %+v, want %+v", info, wantInfo)
	}
	// Segments at their physical addresses, the bss zeroed, the bytes
	// after it untouched.
	if got := readMem(t, mem, 0x1000010, uint64(len(testCode))); !bytes.Equal(got, testCode) {
		t.Errorf("code at the PVH entry %x", got)
	}
	if got := readMem(t, mem, 0x1200000, uint64(len(testData))); !bytes.Equal(got, testData) {
		t.Errorf("data %q", got)
	}
	if bss := readMem(t, mem, 0x1200000+uint64(len(testData)), 0x5000-uint64(len(testData))); bytes.ContainsFunc(bss, func(r rune) bool { return r != 0 }) {
		t.Error("bss not zeroed")
	}
	if b := readMem(t, mem, 0x1205000, 1); b[0] != 0xaa {
		t.Errorf("byte past the bss is %#x", b[0])
	}
	if got := readMem(t, mem, initrdAddr, uint64(len(initrd))); !bytes.Equal(got, initrd) {
		t.Error("initrd bytes differ")
	}
	if got := readMem(t, mem, machine.CmdlineAddr, uint64(len(cmdline)+1)); string(got) != cmdline+"\x00" {
		t.Errorf("command line %q", got)
	}

	le := binary.LittleEndian
	si := readMem(t, mem, machine.BootInfoAddr, pageSize)
	e820 := machine.E820(mem)
	for _, f := range []struct {
		off  int
		want uint64
		size int
	}{
		{0x00, 0x336ec578, 4},          // magic
		{0x04, 1, 4},                   // version
		{0x08, 0, 4},                   // flags
		{0x0c, 1, 4},                   // nr_modules
		{0x10, 0x1800, 8},              // modlist_paddr
		{0x18, machine.CmdlineAddr, 8}, // cmdline_paddr
		{0x20, 0, 8},                   // rsdp_paddr
		{0x28, machine.MemMapAddr, 8},  // memmap_paddr
		{0x30, uint64(len(e820)), 4},   // memmap_entries
		{0x34, 0, 4},                   // reserved
		{0x800, initrdAddr, 8},         // modlist[0].paddr
		{0x808, uint64(len(initrd)), 8},
		{0x810, 0, 8}, // modlist[0].cmdline_paddr
		{0x818, 0, 8}, // modlist[0].reserved
		{0x820, 0, 8}, // past the list
		{0x38, 0, 8},  // past hvm_start_info
	} {
		var got uint64
		if f.size == 4 {
			got = uint64(le.Uint32(si[f.off:]))
		} else {
			got = le.Uint64(si[f.off:])
		}
		if got != f.want {
			t.Errorf("start info at %#x = %#x, want %#x", f.off, got, f.want)
		}
	}
	mm := readMem(t, mem, machine.MemMapAddr, uint64(len(e820))*24)
	for i, e := range e820 {
		r := mm[24*i:]
		if a, s, ty, z := le.Uint64(r), le.Uint64(r[8:]), le.Uint32(r[16:]), le.Uint32(r[20:]); a != e.Addr || s != e.Size || ty != e.Type || z != 0 {
			t.Errorf("memmap entry %d = %#x %#x %d %d, want %+v", i, a, s, ty, z, e)
		}
	}
}

func TestLoadPVHNoInitrd(t *testing.T) {
	mem := newMem(t, 32*machine.MiB)
	_, info, err := Load(mem, Config{Kernel: writeNamed(t, "vmlinux", testVmlinux().build()), CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if info.InitrdSize != 0 {
		t.Errorf("info %+v", info)
	}
	for _, off := range []uint64{pvhNrModules, pvhModlistPaddr} {
		if v, _ := mem.Uint32(machine.BootInfoAddr + off); v != 0 {
			t.Errorf("start info %#x = %#x without an initrd", off, v)
		}
	}
}

func FuzzFindPVHEntry(f *testing.F) {
	le := binary.LittleEndian
	f.Add(testVmlinux().build())
	f.Add(testVmlinux(note("Xen\x00", 18, le.AppendUint32(nil, 0x1000000))).build())
	f.Add(testELF32{Entry: 0x100000, Segs: []testSeg{
		{Type: ptNote, Data: note("Xen\x00", 18, le.AppendUint32(nil, 0x100000))},
		{Flags: PFR | PFX, Addr: 0x100000, Data: testCode},
	}}.build32())
	n := pvhNote(0x100000)
	b := testELF{Entry: 0x100000, Segs: []testSeg{{Flags: PFR | PFX, Addr: 0x100000, Data: n}}}.build()
	f.Add(withSections(b, [2]uint64{uint64(bytes.Index(b, n)), uint64(len(n))}))
	f.Add(validELF().build())
	f.Fuzz(func(t *testing.T, data []byte) {
		entry, found, err := FindPVHEntry(data)
		if err != nil {
			if found || entry != 0 {
				t.Fatalf("%#x, %v with error %v", entry, found, err)
			}
			for _, s := range []error{ErrNotELF, ErrUnsupported, ErrTruncated, ErrBadLayout} {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error %q wraps no sentinel", err)
		}
		if !found && entry != 0 {
			t.Fatalf("entry %#x without a note", entry)
		}
	})
}
