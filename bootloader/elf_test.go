package bootloader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// testSeg describes one program header for buildELF. Data goes in the file;
// MemSize 0 means len(Data). VAddr 0 means Addr.
type testSeg struct {
	Type    uint32 // 0 means PT_LOAD
	Flags   uint32
	Addr    uint64
	VAddr   uint64
	Data    []byte
	MemSize uint64
}

// testELF describes an ELF64 image for buildELF; zero fields get the values
// of a valid x86-64 ET_EXEC executable.
type testELF struct {
	Entry uint64
	Segs  []testSeg
}

// ELF header and program header field offsets, for patching built images.
const (
	offClass     = 4
	offData      = 5
	offVersion   = 6
	offType      = 16
	offMachine   = 18
	offEntry     = 24
	offPhoff     = 32
	offPhentsize = 54
	offPhnum     = 56

	phOffType   = 0
	phOffFlags  = 4
	phOffOffset = 8
	phOffVAddr  = 16
	phOffPAddr  = 24
	phOffFilesz = 32
	phOffMemsz  = 40
)

// build assembles the image: the ELF header, the program headers right
// after it, then each segment's data at a 16-byte aligned offset.
func (e testELF) build() []byte {
	le := binary.LittleEndian
	phEnd := elfHeaderSize + elfPhdrSize*len(e.Segs)
	b := make([]byte, phEnd)
	copy(b, "\x7fELF")
	b[offClass], b[offData], b[offVersion] = elfClass64, elfDataLSB, elfVersion
	le.PutUint16(b[offType:], elfTypeExec)
	le.PutUint16(b[offMachine:], elfMachineX8)
	le.PutUint32(b[20:], 1) // e_version
	le.PutUint64(b[offEntry:], e.Entry)
	le.PutUint64(b[offPhoff:], elfHeaderSize)
	le.PutUint16(b[52:], elfHeaderSize) // e_ehsize
	le.PutUint16(b[offPhentsize:], elfPhdrSize)
	le.PutUint16(b[offPhnum:], uint16(len(e.Segs)))
	for i, s := range e.Segs {
		for len(b)%16 != 0 {
			b = append(b, 0)
		}
		off := len(b)
		b = append(b, s.Data...)
		typ, vaddr, memsz := s.Type, s.VAddr, s.MemSize
		if typ == 0 {
			typ = ptLoad
		}
		if vaddr == 0 {
			vaddr = s.Addr
		}
		if memsz == 0 {
			memsz = uint64(len(s.Data))
		}
		ph := b[elfHeaderSize+elfPhdrSize*i:]
		le.PutUint32(ph[phOffType:], typ)
		le.PutUint32(ph[phOffFlags:], s.Flags)
		le.PutUint64(ph[phOffOffset:], uint64(off))
		le.PutUint64(ph[phOffVAddr:], vaddr)
		le.PutUint64(ph[phOffPAddr:], s.Addr)
		le.PutUint64(ph[phOffFilesz:], uint64(len(s.Data)))
		le.PutUint64(ph[phOffMemsz:], memsz)
		le.PutUint64(ph[48:], 16) // p_align
	}
	return b
}

// phdr returns the bytes of program header i of b, for patching.
func phdr(b []byte, i int) []byte { return b[elfHeaderSize+elfPhdrSize*i:][:elfPhdrSize] }

var (
	testCode = []byte{0xb0, 0x7b, 0xe6, 0xf5, 0xfa, 0xf4, 0xeb, 0xfc} // mov al,123; out 0xf5,al; cli; hlt; jmp .-2
	testData = []byte("some initialised data")
)

// validELF is a two-segment image: code at 1 MiB, data plus bss at 2 MiB.
func validELF() testELF {
	return testELF{
		Entry: 0x100000,
		Segs: []testSeg{
			{Flags: PFR | PFX, Addr: 0x100000, Data: testCode},
			{Flags: PFR | PFW, Addr: 0x200000, Data: testData, MemSize: 0x3000},
		},
	}
}

func TestParseELFValid(t *testing.T) {
	data := validELF().build()
	img, err := ParseELF(data)
	if err != nil {
		t.Fatal(err)
	}
	if img.Entry != 0x100000 {
		t.Errorf("entry %#x, want 0x100000", img.Entry)
	}
	if len(img.Segments) != 2 {
		t.Fatalf("%d segments, want 2", len(img.Segments))
	}
	s := img.Segments[1]
	if s.Addr != 0x200000 || s.VAddr != 0x200000 || s.FileSize != uint64(len(testData)) || s.MemSize != 0x3000 || s.Flags != PFR|PFW {
		t.Errorf("segment 1 = %+v", s)
	}
	if !bytes.Equal(s.Data, testData) || !bytes.Equal(img.Segments[0].Data, testCode) {
		t.Errorf("segment data does not match the file")
	}
	checkImage(t, data, img)
}

func TestParseELFSortsAndSkips(t *testing.T) {
	e := testELF{
		Entry: 0x300004,
		Segs: []testSeg{
			{Type: 4, Addr: 0x1234, Data: []byte("note")},      // PT_NOTE: ignored
			{Flags: PFR | PFW, Addr: 0x400000, Data: testData}, // later in memory, first in file
			{Flags: PFR, Addr: 0x500000},                       // empty PT_LOAD: ignored
			{Flags: PFR | PFX, Addr: 0x300000, Data: testCode},
			{Type: 0x6474e551, Flags: PFR | PFW}, // PT_GNU_STACK: ignored
		},
	}
	img, err := ParseELF(e.build())
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Segments) != 2 || img.Segments[0].Addr != 0x300000 || img.Segments[1].Addr != 0x400000 {
		t.Fatalf("segments %+v, want 0x300000 then 0x400000", img.Segments)
	}
}

func TestParseELFErrors(t *testing.T) {
	le := binary.LittleEndian
	patch := func(f func(b []byte) []byte) []byte { return f(validELF().build()) }
	twoSegs := func(a, b testSeg, entry uint64) []byte {
		return testELF{Entry: entry, Segs: []testSeg{a, b}}.build()
	}
	code := testSeg{Flags: PFR | PFX, Addr: 0x100000, Data: testCode}
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrNotELF},
		{"short", []byte("\x7fEL"), ErrNotELF},
		{"text", []byte("capsule-host\n"), ErrNotELF},
		{"magic only", []byte("\x7fELF"), ErrTruncated},
		{"header cut", validELF().build()[:40], ErrTruncated},
		{"32-bit", patch(func(b []byte) []byte { b[offClass] = 1; return b }), ErrUnsupported},
		{"class 0", patch(func(b []byte) []byte { b[offClass] = 0; return b }), ErrUnsupported},
		{"big-endian", patch(func(b []byte) []byte { b[offData] = 2; return b }), ErrUnsupported},
		{"version 0", patch(func(b []byte) []byte { b[offVersion] = 0; return b }), ErrUnsupported},
		{"aarch64", patch(func(b []byte) []byte { le.PutUint16(b[offMachine:], 183); return b }), ErrUnsupported},
		{"i386", patch(func(b []byte) []byte { le.PutUint16(b[offMachine:], 3); return b }), ErrUnsupported},
		{"ET_DYN", patch(func(b []byte) []byte { le.PutUint16(b[offType:], elfTypeDyn); return b }), ErrUnsupported},
		{"ET_REL", patch(func(b []byte) []byte { le.PutUint16(b[offType:], 1); return b }), ErrUnsupported},
		{"no phdrs", patch(func(b []byte) []byte { le.PutUint16(b[offPhnum:], 0); return b }), ErrUnsupported},
		{"too many phdrs", patch(func(b []byte) []byte { le.PutUint16(b[offPhnum:], MaxProgramHeaders+1); return b }), ErrUnsupported},
		{"PN_XNUM", patch(func(b []byte) []byte { le.PutUint16(b[offPhnum:], 0xffff); return b }), ErrUnsupported},
		{"small phentsize", patch(func(b []byte) []byte { le.PutUint16(b[offPhentsize:], 32); return b }), ErrUnsupported},
		{"no PT_LOAD", testELF{Entry: 0x100000, Segs: []testSeg{{Type: 4, Addr: 0x100000, Data: testCode}}}.build(), ErrUnsupported},
		{"only empty PT_LOAD", testELF{Entry: 0x100000, Segs: []testSeg{{Flags: PFX, Addr: 0x100000}}}.build(), ErrUnsupported},
		{"PT_INTERP", testELF{Entry: 0x100000, Segs: []testSeg{{Type: ptInterp, Data: []byte("/lib/ld.so\x00")}, code}}.build(), ErrUnsupported},
		{"phdrs past end", patch(func(b []byte) []byte { return b[:elfHeaderSize+elfPhdrSize+10] }), ErrTruncated},
		{"phoff huge", patch(func(b []byte) []byte { le.PutUint64(b[offPhoff:], 1<<40); return b }), ErrTruncated},
		{"phoff overflow", patch(func(b []byte) []byte { le.PutUint64(b[offPhoff:], ^uint64(0)-10); return b }), ErrTruncated},
		{"segment data cut", patch(func(b []byte) []byte { return b[:len(b)-1] }), ErrTruncated},
		{"segment offset huge", patch(func(b []byte) []byte { le.PutUint64(phdr(b, 1)[phOffOffset:], 1<<50); return b }), ErrTruncated},
		{"segment offset overflow", patch(func(b []byte) []byte {
			le.PutUint64(phdr(b, 1)[phOffOffset:], ^uint64(0))
			return b
		}), ErrTruncated},
		{"filesz > memsz", patch(func(b []byte) []byte { le.PutUint64(phdr(b, 1)[phOffMemsz:], 4); return b }), ErrBadLayout},
		{"filesz > memsz 0", patch(func(b []byte) []byte { le.PutUint64(phdr(b, 1)[phOffMemsz:], 0); return b }), ErrBadLayout},
		{"paddr overflow", patch(func(b []byte) []byte { le.PutUint64(phdr(b, 1)[phOffPAddr:], ^uint64(0)-4); return b }), ErrBadLayout},
		{"vaddr overflow", patch(func(b []byte) []byte { le.PutUint64(phdr(b, 1)[phOffVAddr:], ^uint64(0)-4); return b }), ErrBadLayout},
		{"overlap", twoSegs(code, testSeg{Flags: PFR, Addr: 0x100004, Data: testData}, 0x100000), ErrBadLayout},
		{"overlap bss", twoSegs(testSeg{Flags: PFR | PFX, Addr: 0x100000, Data: testCode, MemSize: 0x2000},
			testSeg{Flags: PFR, Addr: 0x101000, Data: testData}, 0x100000), ErrBadLayout},
		{"same address", twoSegs(code, code, 0x100000), ErrBadLayout},
		{"entry outside", patch(func(b []byte) []byte { le.PutUint64(b[offEntry:], 0x180000); return b }), ErrBadLayout},
		{"entry past code", patch(func(b []byte) []byte { le.PutUint64(b[offEntry:], 0x100000+uint64(len(testCode))); return b }), ErrBadLayout},
		{"entry in data", patch(func(b []byte) []byte { le.PutUint64(b[offEntry:], 0x200000); return b }), ErrBadLayout},
		{"entry in bss", twoSegs(testSeg{Flags: PFR | PFX, Addr: 0x100000, Data: testCode, MemSize: 0x1000},
			testSeg{Flags: PFR, Addr: 0x200000, Data: testData}, 0x100800), ErrBadLayout},
		{"entry zero", patch(func(b []byte) []byte { le.PutUint64(b[offEntry:], 0); return b }), ErrBadLayout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := ParseELF(tt.data)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ParseELF = %+v, %v; want %v", img, err, tt.want)
			}
			if img != nil {
				t.Errorf("image %+v returned with an error", img)
			}
			t.Log(err)
		})
	}
}

// checkImage checks the invariants ParseELF promises for an accepted image.
func checkImage(t *testing.T, data []byte, img *ELFImage) {
	t.Helper()
	if img == nil {
		t.Fatal("nil image without error")
	}
	if n := len(img.Segments); n < 1 || n > MaxProgramHeaders {
		t.Fatalf("%d segments", n)
	}
	for i, s := range img.Segments {
		if s.MemSize == 0 || s.FileSize > s.MemSize {
			t.Errorf("segment %d: file size %#x, memory size %#x", i, s.FileSize, s.MemSize)
		}
		if uint64(len(s.Data)) != s.FileSize {
			t.Errorf("segment %d: %d data bytes, file size %#x", i, len(s.Data), s.FileSize)
		}
		if end, ok := add(s.Offset, s.FileSize); !ok || end > uint64(len(data)) || !bytes.Equal(s.Data, data[s.Offset:end]) {
			t.Errorf("segment %d: data [%#x, +%#x) not in the %d-byte file", i, s.Offset, s.FileSize, len(data))
		}
		if _, ok := add(s.Addr, s.MemSize); !ok {
			t.Errorf("segment %d: address %#x+%#x overflows", i, s.Addr, s.MemSize)
		}
		if _, ok := add(s.VAddr, s.MemSize); !ok {
			t.Errorf("segment %d: virtual address %#x+%#x overflows", i, s.VAddr, s.MemSize)
		}
		if i > 0 && s.Addr < img.Segments[i-1].End() {
			t.Errorf("segment %d at %#x overlaps or precedes the one ending at %#x", i, s.Addr, img.Segments[i-1].End())
		}
	}
	i := img.entrySegment()
	if i < 0 {
		t.Fatalf("entry %#x is in no executable segment", img.Entry)
	}
	if s := img.Segments[i]; s.Flags&PFX == 0 || img.Entry < s.Addr || img.Entry >= s.Addr+s.FileSize {
		t.Errorf("entry %#x outside executable segment %+v", img.Entry, s)
	}
}

func FuzzParseELF(f *testing.F) {
	f.Add(validELF().build())
	f.Add(testELF{Entry: 0x100002, Segs: []testSeg{{Flags: PFR | PFX, Addr: 0x100000, Data: testCode, MemSize: 0x10000}}}.build())
	f.Add(testELF{Entry: 0x300004, Segs: []testSeg{
		{Type: 4, Data: []byte("note")},
		{Flags: PFR | PFW, Addr: 0x400000, Data: testData},
		{Flags: PFR | PFX, Addr: 0x300000, Data: testCode},
	}}.build())
	f.Add(testELF{Entry: 0x100000, Segs: []testSeg{{Type: ptInterp, Data: []byte("/lib/ld.so\x00")}}}.build())
	f.Add([]byte("\x7fELF"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := ParseELF(data)
		if err != nil {
			if img != nil {
				t.Fatalf("image returned with error %v", err)
			}
			for _, s := range []error{ErrNotELF, ErrUnsupported, ErrTruncated, ErrBadLayout} {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error %q wraps no sentinel", err)
		}
		checkImage(t, data, img)
	})
}
