package bootloader

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// testBz describes a bzImage for build; zero fields get the values of a
// 64-bit, relocatable, boot protocol 2.15 kernel.
type testBz struct {
	Version       uint16 // 0: 0x020f
	SetupSects    uint8  // as written in the file; 0 means 4
	ZImage        bool   // clear LOADED_HIGH in loadflags
	XLoadFlags    uint16 // 0: XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
	NoXLoadFlags  bool   // write 0 for xloadflags
	CmdlineSize   uint32 // 0: 2047
	InitrdAddrMax uint32 // 0: 0x7fffffff
	KernelAlign   uint32 // 0: 2 MiB
	NotReloc      bool
	PrefAddress   uint64 // 0: 16 MiB
	InitSize      uint32 // 0: 8 MiB
	Syssize       uint32 // 0: len(Payload)/16 rounded up
	KernelVersion string // written in the setup area, pointed to by kernel_version
	Payload       []byte // nil: 4 KiB pattern
}

// testPayload is the protected-mode code of a test bzImage.
func testPayload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}

func (t testBz) build() []byte {
	le := binary.LittleEndian
	def := func(v, d uint32) uint32 {
		if v == 0 {
			return d
		}
		return v
	}
	sects := int(t.SetupSects)
	if sects == 0 {
		sects = 4
	}
	payload := t.Payload
	if payload == nil {
		payload = testPayload(4096)
	}
	b := make([]byte, (sects+1)*512, (sects+1)*512+len(payload))
	version := t.Version
	if version == 0 {
		version = 0x020f
	}
	b[bzSetupSects] = t.SetupSects
	sys := t.Syssize
	if sys == 0 {
		sys = uint32((len(payload) + 15) / 16)
	}
	le.PutUint32(b[bzSyssize:], sys)
	le.PutUint16(b[0x1fa:], 0xffff) // vid_mode: normal
	le.PutUint16(b[bzBootFlag:], bzBootFlagValue)
	b[bzJump], b[bzJump+1] = bzJumpOpcode, 0x6a // header ends at 0x26c, as in 2.15
	copy(b[bzHeaderMagic:], bzMagic)
	le.PutUint16(b[bzVersion:], version)
	if t.KernelVersion != "" {
		copy(b[0x400:], t.KernelVersion+"\x00")
		le.PutUint16(b[bzKernelVersion:], 0x400-bzKernelVersionBase)
	}
	b[bzLoadflags] = LoadedHigh
	if t.ZImage {
		b[bzLoadflags] = 0
	}
	le.PutUint32(b[bzCode32Start:], 0x100000)
	le.PutUint32(b[bzInitrdAddrMax:], def(t.InitrdAddrMax, 0x7fffffff))
	le.PutUint32(b[bzKernelAlignment:], def(t.KernelAlign, 0x200000))
	if !t.NotReloc {
		b[bzRelocatable] = 1
	}
	b[bzMinAlignment] = 0x15
	if !t.NoXLoadFlags {
		le.PutUint16(b[bzXLoadflags:], uint16(def(uint32(t.XLoadFlags), XLFKernel64|2)))
	}
	le.PutUint32(b[bzCmdlineSize:], def(t.CmdlineSize, 2047))
	pref := t.PrefAddress
	if pref == 0 {
		pref = 0x1000000
	}
	le.PutUint64(b[bzPrefAddress:], pref)
	le.PutUint32(b[bzInitSize:], def(t.InitSize, 8<<20))
	le.PutUint32(b[0x268:], 0x11223344) // kernel_info_offset: must be copied as is
	return append(b, payload...)
}

// note encodes one ELF note with 4-byte padding.
func note(name string, typ uint32, desc []byte) []byte {
	le := binary.LittleEndian
	b := le.AppendUint32(nil, uint32(len(name)))
	b = le.AppendUint32(b, uint32(len(desc)))
	b = le.AppendUint32(b, typ)
	b = append(b, name...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	b = append(b, desc...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// pvhNote is the Xen PHYS32_ENTRY note for entry, in 8 bytes as Linux
// writes it on x86-64.
func pvhNote(entry uint64) []byte {
	return note("Xen\x00", xenElfnotePhys32Entry, binary.LittleEndian.AppendUint64(nil, entry))
}

// testVmlinux is a vmlinux-like ELF64 image: code linked at
// 0xffffffff81000000 but loaded at 16 MiB, data plus bss, a PT_NOTE with
// some notes and the PVH entry note; the PVH entry is 16 MiB + 0x10.
func testVmlinux(notes ...[]byte) testELF {
	if notes == nil {
		notes = [][]byte{
			note("GNU\x00", 3, []byte("build-id-bytes-20...")),
			note("Xen\x00", 6, []byte("linux\x00")),
			pvhNote(0x1000010),
			note("Linux\x00", 0x100, []byte("6.1")),
		}
	}
	var nb []byte
	for _, n := range notes {
		nb = append(nb, n...)
	}
	code := append(make([]byte, 0x10), testCode...)
	return testELF{
		Entry: 0xffffffff81000000,
		Segs: []testSeg{
			{Flags: PFR | PFX, Addr: 0x1000000, VAddr: 0xffffffff81000000, Data: code},
			{Flags: PFR | PFW, Addr: 0x1200000, VAddr: 0xffffffff81200000, Data: testData, MemSize: 0x5000},
			{Type: ptNote, Flags: PFR, Addr: 0x1100000, VAddr: 0xffffffff81100000, Data: nb},
		},
	}
}

// mbHeader encodes a Multiboot header; with addr the five address
// fields follow. The checksum is made valid.
func mbHeader(flags uint32, addr ...uint32) []byte {
	le := binary.LittleEndian
	b := le.AppendUint32(nil, MultibootHeaderMagic)
	b = le.AppendUint32(b, flags)
	b = le.AppendUint32(b, -(MultibootHeaderMagic + flags))
	for _, a := range addr {
		b = le.AppendUint32(b, a)
	}
	return b
}

// testMultibootKludge is a flat Multiboot image loaded at 1 MiB: 0x20
// bytes of padding, the header at file offset 0x20 (address 0x100020),
// code at 0x100040 (the entry), some data, and 0x2000 bytes of bss.
func testMultibootKludge() []byte {
	const load = 0x100000
	img := make([]byte, 0x20)
	hdr := mbHeader(MultibootPageAlign|MultibootMemInfo|MultibootAoutKludge,
		load+0x20, load, 0, 0, load+0x40)
	img = append(img, hdr...)
	for len(img) < 0x40 {
		img = append(img, 0)
	}
	img = append(img, testCode...)
	img = append(img, testData...)
	le := binary.LittleEndian
	end := uint32(load + len(img))
	le.PutUint32(img[0x20+mbLoadEndAddr:], end)
	le.PutUint32(img[0x20+mbBSSEndAddr:], end+0x2000)
	return img
}

// testELF32 describes an ELF32 i386 executable for build32.
type testELF32 struct {
	Entry uint32
	Segs  []testSeg
}

// build32 assembles an ELF32 image like testELF.build does for ELF64.
func (e testELF32) build32() []byte {
	le := binary.LittleEndian
	phEnd := elf32HdrSize + elf32PhdrSize*len(e.Segs)
	b := make([]byte, phEnd)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = elfClass32, elfDataLSB, elfVersion
	le.PutUint16(b[16:], elfTypeExec)
	le.PutUint16(b[18:], elfMachine386)
	le.PutUint32(b[20:], 1)
	le.PutUint32(b[elf32Entry:], e.Entry)
	le.PutUint32(b[elf32Phoff:], elf32HdrSize)
	le.PutUint16(b[40:], elf32HdrSize)
	le.PutUint16(b[elf32Phentsize:], elf32PhdrSize)
	le.PutUint16(b[elf32Phnum:], uint16(len(e.Segs)))
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
		ph := b[elf32HdrSize+elf32PhdrSize*i:]
		le.PutUint32(ph[ph32Type:], typ)
		le.PutUint32(ph[ph32Offset:], uint32(off))
		le.PutUint32(ph[ph32VAddr:], uint32(vaddr))
		le.PutUint32(ph[ph32PAddr:], uint32(s.Addr))
		le.PutUint32(ph[ph32Filesz:], uint32(len(s.Data)))
		le.PutUint32(ph[ph32Memsz:], uint32(memsz))
		le.PutUint32(ph[ph32Flags:], s.Flags)
		le.PutUint32(ph[ph32Align:], 4)
	}
	return b
}

// testMultibootELF32 is a higher-half ELF32 Multiboot kernel: code linked
// at 0xc0100000 and loaded at 1 MiB, with a virtual e_entry the loader
// must translate; the header (no address fields) opens the code.
func testMultibootELF32() []byte {
	code := append(mbHeader(MultibootPageAlign|MultibootMemInfo), testCode...)
	return testELF32{
		Entry: 0xc010000c,
		Segs: []testSeg{
			{Flags: PFR | PFX, Addr: 0x100000, VAddr: 0xc0100000, Data: code},
			{Flags: PFR | PFW, Addr: 0x101000, VAddr: 0xc0101000, Data: testData, MemSize: 0x3000},
		},
	}.build32()
}

// writeNamed writes data to a file called name in a new temporary
// directory.
func writeNamed(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
