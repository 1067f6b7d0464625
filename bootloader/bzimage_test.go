package bootloader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/capsule-vm/capsule/machine"
)

func TestParseBzImage(t *testing.T) {
	payload := testPayload(8192)
	data := testBz{KernelVersion: "6.1.0-test (builder@host) #1 SMP", Payload: payload, SetupSects: 0}.build()
	b, err := ParseBzImage(data)
	if err != nil {
		t.Fatal(err)
	}
	if b.Version != 0x020f || b.VersionString() != "2.15" {
		t.Errorf("version %#x %q, want 0x20f 2.15", b.Version, b.VersionString())
	}
	if b.SetupSects != 4 {
		t.Errorf("setup_sects %d, want 4 (0 in the file)", b.SetupSects)
	}
	if !b.Has64BitEntry() || b.XLoadFlags != 3 {
		t.Errorf("xloadflags %#x, 64-bit entry %v", b.XLoadFlags, b.Has64BitEntry())
	}
	if b.CmdlineSize != 2047 || b.InitrdAddrMax != 0x7fffffff || !b.Relocatable || b.KernelAlignment != 0x200000 ||
		b.PrefAddress != 0x1000000 || b.InitSize != 8<<20 || b.Code32Start != 0x100000 || b.MinAlignment != 0x15 ||
		b.LoadFlags != LoadedHigh {
		t.Errorf("header fields %+v", *b)
	}
	if b.KernelVersion != "6.1.0-test (builder@host) #1 SMP" {
		t.Errorf("kernel version %q", b.KernelVersion)
	}
	if len(b.Header) != 0x26c-0x1f1 || !bytes.Equal(b.Header, data[0x1f1:0x26c]) {
		t.Errorf("header is %d bytes, want file bytes 0x1f1 to 0x26c", len(b.Header))
	}
	if !bytes.Equal(b.Payload, payload) {
		t.Errorf("payload of %d bytes does not match", len(b.Payload))
	}
}

func TestParseBzImageSyssize(t *testing.T) {
	// Bytes past syssize*16 (a signature, say) are not loaded.
	data := append(testBz{}.build(), "trailing signature"...)
	b, err := ParseBzImage(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Payload) != 4096 {
		t.Errorf("payload %d bytes, want 4096", len(b.Payload))
	}
	// Without syssize the rest of the file is the payload.
	data = testBz{}.build()
	binary.LittleEndian.PutUint32(data[bzSyssize:], 0)
	data = append(data, "more"...)
	if b, err = ParseBzImage(data); err != nil || len(b.Payload) != 4100 {
		t.Errorf("without syssize: %v, payload %d bytes, want 4100", err, len(b.Payload))
	}
}

func TestParseBzImageOldVersionFields(t *testing.T) {
	// 2.06 has no xloadflags, pref_address nor init_size: they read as 0
	// whatever the bytes hold.
	data := testBz{Version: 0x0206}.build()
	b, err := ParseBzImage(data)
	if err != nil {
		t.Fatal(err)
	}
	if b.XLoadFlags != 0 || b.PrefAddress != 0 || b.InitSize != 0 || b.Has64BitEntry() {
		t.Errorf("2.06 fields %+v", *b)
	}
}

func TestParseBzImageErrors(t *testing.T) {
	patch := func(f func(b []byte)) []byte { b := testBz{}.build(); f(b); return b }
	tests := []struct {
		name string
		data []byte
		want error
		msg  string
	}{
		{"empty", nil, ErrNotKernel, "not a Linux bzImage (no HdrS magic at 0x202)"},
		{"text", []byte(strings.Repeat("hello\n", 200)), ErrNotKernel, ""},
		{"bad boot flag", patch(func(b []byte) { b[bzBootFlag] = 0 }), ErrBadHeader, "bad bzImage header: boot flag 0xaa00 at 0x1fe, want 0xaa55"},
		{"protocol 2.04", testBz{Version: 0x0204}.build(), ErrUnsupported, "unsupported bzImage: boot protocol 2.04 is older than 2.06"},
		{"protocol 1.00", testBz{Version: 0x0100}.build(), ErrUnsupported, ""},
		{"setup area cut", testBz{}.build()[:0x900], ErrTruncated,
			"truncated bzImage: file of 2304 bytes is shorter than its 2560-byte setup area (setup_sects 4)"},
		{"setup_sects 30 in a small file", testBz{SetupSects: 30}.build()[:20*512], ErrTruncated, ""},
		{"no payload", testBz{}.build()[:5*512], ErrTruncated, "truncated bzImage: no protected-mode code after the 2560-byte setup area"},
		{"payload cut", testBz{}.build()[:5*512+4000], ErrTruncated,
			"truncated bzImage: protected-mode code of 4096 bytes (syssize) cut at 4000 bytes"},
		{"syssize huge", testBz{Syssize: 0xffffffff}.build(), ErrTruncated, ""},
		{"zImage", testBz{ZImage: true}.build(), ErrUnsupported, ""},
		{"no jump", patch(func(b []byte) { b[bzJump] = 0x90 }), ErrBadHeader, ""},
		{"backward jump", patch(func(b []byte) { b[bzJump+1] = 0xfe }), ErrBadHeader, ""},
		{"header too short for 2.10", patch(func(b []byte) { b[bzJump+1] = 0x40 }), ErrBadHeader, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := ParseBzImage(tt.data)
			if !errors.Is(err, tt.want) || b != nil {
				t.Fatalf("ParseBzImage = %+v, %v; want %v", b, err, tt.want)
			}
			if tt.msg != "" && err.Error() != tt.msg {
				t.Errorf("error %q, want %q", err, tt.msg)
			}
			t.Log(err)
		})
	}
}

func TestParseBzImageKernelVersion(t *testing.T) {
	le := binary.LittleEndian
	// A pointer past the setup area is ignored.
	data := testBz{KernelVersion: "x"}.build()
	le.PutUint16(data[bzKernelVersion:], 0x1000)
	if b, err := ParseBzImage(data); err != nil || b.KernelVersion != "" {
		t.Errorf("pointer past the setup area: %v, %q", err, b.KernelVersion)
	}
	// The string stops at a control byte and at the setup area's end.
	data = testBz{KernelVersion: "1.2.3\x01junk"}.build()
	if b, err := ParseBzImage(data); err != nil || b.KernelVersion != "1.2.3" {
		t.Errorf("control byte: %v, %q", err, b.KernelVersion)
	}
	data = testBz{}.build()
	copy(data[0x9f0:], strings.Repeat("v", 16))
	le.PutUint16(data[bzKernelVersion:], 0x9f0-0x200)
	if b, err := ParseBzImage(data); err != nil || b.KernelVersion != strings.Repeat("v", 16) {
		t.Errorf("at the end of the setup area: %v, %q", err, b.KernelVersion)
	}
}

func TestLoadBzImage(t *testing.T) {
	const ramSize = 64 * machine.MiB
	mem := newMem(t, ramSize)
	// Dirty the zero page: the loader must clear what it does not set.
	if err := mem.WriteAt(bytes.Repeat([]byte{0xcc}, ZeroPageSize), machine.BootInfoAddr); err != nil {
		t.Fatal(err)
	}
	payload := testPayload(64 << 10)
	kernel := testBz{KernelVersion: "6.1.0-test (b@h) #1", Payload: payload, InitrdAddrMax: 0x1ffffff}.build()
	initrd := bytes.Repeat([]byte("070701cpio"), 100000) // 1000000 bytes, a cpio magic first
	const cmdline = "console=ttyS0 root=/dev/vda"
	entry, info, err := Load(mem, Config{
		Kernel:  writeNamed(t, "vmlinuz", kernel),
		Initrd:  writeNamed(t, "initrd.img", initrd),
		Cmdline: cmdline,
		CPUs:    2,
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Entry{Mode: Mode64, RIP: 0x100200, RSP: LinuxStackTop, RSI: machine.BootInfoAddr}); entry != want {
		t.Errorf("entry %+v, want %+v", entry, want)
	}
	// Relocatable, loaded at 1 MiB below pref_address 16 MiB: it runs at
	// 16 MiB and needs init_size (8 MiB) there.
	const kernelEnd = 0x1000000 + 8<<20
	initrdAddr := uint64(0x2000000-len(initrd)) &^ 0xfff
	wantInfo := Info{Format: FormatBzImage, Linux: true, Version: "6.1.0-test, boot protocol 2.15", KernelAddr: 0x100000, KernelEnd: kernelEnd,
		InitrdAddr: initrdAddr, InitrdSize: uint64(len(initrd))}
	if info != wantInfo {
		t.Errorf("info %+v, want %+v", info, wantInfo)
	}
	if got := readMem(t, mem, 0x100000, uint64(len(payload))); !bytes.Equal(got, payload) {
		t.Error("protected-mode code not at 0x100000")
	}
	if got := readMem(t, mem, initrdAddr, uint64(len(initrd))); !bytes.Equal(got, initrd) {
		t.Error("initrd bytes differ")
	}
	if got := readMem(t, mem, machine.CmdlineAddr, uint64(len(cmdline))+1); string(got) != cmdline+"\x00" {
		t.Errorf("command line %q", got)
	}

	zp := readMem(t, mem, machine.BootInfoAddr, ZeroPageSize)
	le := binary.LittleEndian
	// The header as the file has it, but for the fields the loader sets.
	hdr := bytes.Clone(kernel[0x1f1:0x26c])
	for _, f := range []struct {
		off  int
		want uint64
		size int
	}{
		{bzTypeOfLoader, 0xff, 1},
		{bzLoadflags, LoadedHigh | CanUseHeap, 1},
		{bzHeapEndPtr, 0xfe00, 2},
		{bzCmdLinePtr, machine.CmdlineAddr, 4},
		{bzRamdiskImage, initrdAddr, 4},
		{bzRamdiskSize, uint64(len(initrd)), 4},
		{bzCode32Start, 0x100000, 4},
		{bzVersion, 0x020f, 2},
		{bzInitrdAddrMax, 0x1ffffff, 4},
		{0x268, 0x11223344, 4}, // kernel_info_offset, copied
		{0x1fa, 0xffff, 2},     // vid_mode, copied
		{bpExtRamdiskImage, 0, 4},
		{bpExtRamdiskSize, 0, 4},
		{bpExtCmdLinePtr, 0, 4},
		{0x1ef, 0, 1}, // sentinel
		{0x26c, 0, 4}, // past the header
		{0x000, 0, 8}, // screen_info: zeroed
	} {
		var got uint64
		switch f.size {
		case 1:
			got = uint64(zp[f.off])
		case 2:
			got = uint64(le.Uint16(zp[f.off:]))
		case 4:
			got = uint64(le.Uint32(zp[f.off:]))
		case 8:
			got = le.Uint64(zp[f.off:])
		}
		if got != f.want {
			t.Errorf("zero page at %#x = %#x, want %#x", f.off, got, f.want)
		}
		if f.off >= 0x1f1 && f.off < 0x26c {
			copy(hdr[f.off-0x1f1:], zp[f.off:f.off+f.size])
		}
	}
	if !bytes.Equal(zp[0x1f1:0x26c], hdr) {
		t.Error("setup header not copied from the file")
	}
	e820 := machine.E820(mem)
	if int(zp[bpE820Entries]) != len(e820) || len(e820) != 4 {
		t.Fatalf("e820_entries %d, machine.E820 has %d", zp[bpE820Entries], len(e820))
	}
	for i, e := range e820 {
		r := zp[bpE820Table+20*i:]
		if a, s, ty := le.Uint64(r), le.Uint64(r[8:]), le.Uint32(r[16:]); a != e.Addr || s != e.Size || ty != e.Type {
			t.Errorf("e820 entry %d = %#x %#x %d, want %+v", i, a, s, ty, e)
		}
	}
	if rest := zp[bpE820Table+20*len(e820) : bpE820Table+20*bpE820Max]; bytes.ContainsFunc(rest, func(r rune) bool { return r != 0 }) {
		t.Error("e820 table not zero past its entries")
	}
	for i, c := range zp[0xd00:] {
		if c != 0 {
			t.Fatalf("zero page byte %#x = %#x, want 0", 0xd00+i, c)
		}
	}
}

func TestLoadBzImageInitrdPlacement(t *testing.T) {
	// With initrd_addr_max above RAM the initrd ends at the top of RAM,
	// page-aligned.
	mem := newMem(t, 64*machine.MiB)
	initrd := cpioLike(5000)
	_, info, err := Load(mem, Config{
		Kernel: writeNamed(t, "vmlinuz", testBz{}.build()),
		Initrd: writeNamed(t, "initrd", initrd), CPUs: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if info.InitrdAddr != 64*machine.MiB-0x2000 || info.InitrdSize != 5000 {
		t.Errorf("initrd at %#x+%d, want 0x3ffe000+5000", info.InitrdAddr, info.InitrdSize)
	}
	if info.KernelEnd != 0x1000000+8<<20 {
		t.Errorf("kernel end %#x, want 0x1800000", info.KernelEnd)
	}
}

func TestLoadBzImageNoInitrd(t *testing.T) {
	mem := newMem(t, 32*machine.MiB)
	_, info, err := Load(mem, Config{Kernel: writeNamed(t, "vmlinuz", testBz{InitSize: 0x100000, PrefAddress: 0x100000}.build()), CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if info.InitrdAddr != 0 || info.InitrdSize != 0 || info.Version != "boot protocol 2.15" {
		t.Errorf("info %+v", info)
	}
	// Relocatable, pref_address 1 MiB, aligned up to 2 MiB.
	if info.KernelEnd != 0x300000 {
		t.Errorf("kernel end %#x, want 0x300000", info.KernelEnd)
	}
	for _, off := range []uint64{bzRamdiskImage, bzRamdiskSize} {
		if v, _ := mem.Uint32(machine.BootInfoAddr + off); v != 0 {
			t.Errorf("zero page %#x = %#x without an initrd", off, v)
		}
	}
}

func TestLoadBzImageNotRelocatable(t *testing.T) {
	mem := newMem(t, 64*machine.MiB)
	_, info, err := Load(mem, Config{Kernel: writeNamed(t, "vmlinuz", testBz{NotReloc: true, PrefAddress: 0x1000000, InitSize: 0x2000000}.build()), CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if info.KernelEnd != 0x3000000 {
		t.Errorf("kernel end %#x, want 0x3000000 (pref_address + init_size)", info.KernelEnd)
	}
}

func FuzzParseBzImage(f *testing.F) {
	f.Add(testBz{}.build())
	f.Add(testBz{Version: 0x0206, SetupSects: 1, KernelVersion: "5.10"}.build())
	f.Add(testBz{Version: 0x020a, NotReloc: true}.build())
	f.Add(testBz{}.build()[:0x300])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBzImage(data)
		if err != nil {
			if b != nil {
				t.Fatal("image returned with an error")
			}
			for _, s := range []error{ErrNotKernel, ErrBadHeader, ErrUnsupported, ErrTruncated} {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error %q wraps no sentinel", err)
		}
		setup := (b.SetupSects + 1) * 512
		if b.Version < 0x0206 || b.LoadFlags&LoadedHigh == 0 || b.SetupSects < 1 || b.SetupSects > 255 {
			t.Fatalf("accepted header %+v", b)
		}
		if len(b.Header) < bzHeaderEnd206-0x1f1 || 0x1f1+len(b.Header) > bzHeaderEndMax || !bytes.Equal(b.Header, data[0x1f1:0x1f1+len(b.Header)]) {
			t.Fatalf("header of %d bytes", len(b.Header))
		}
		if len(b.Payload) == 0 || setup+len(b.Payload) > len(data) || !bytes.Equal(b.Payload, data[setup:setup+len(b.Payload)]) {
			t.Fatalf("payload of %d bytes after a %d-byte setup area in %d bytes", len(b.Payload), setup, len(data))
		}
		if len(b.KernelVersion) > bzVersionMax || strings.ContainsFunc(b.KernelVersion, func(r rune) bool { return r < 0x20 || r >= 0x7f }) {
			t.Fatalf("kernel version %q", b.KernelVersion)
		}
	})
}
