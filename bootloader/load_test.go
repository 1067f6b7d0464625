package bootloader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capsule-vm/capsule/machine"
)

func TestLoadUnikernelFormat(t *testing.T) {
	mem := newMem(t, 16*machine.MiB)
	const cmdline = "exit=7"
	entry, info, err := Load(mem, Config{Kernel: writeFile(t, validELF().build()), Cmdline: cmdline, CPUs: 3})
	if err != nil {
		t.Fatal(err)
	}
	want := Entry{Mode: Mode64, RIP: 0x100000, RSP: machine.StackTop, RDI: machine.CapsuleInfoAddr, RSI: machine.BootInfoAddr}
	if entry != want {
		t.Errorf("entry %+v, want %+v", entry, want)
	}
	if want := (Info{Format: FormatUnikernel, KernelAddr: 0x100000, KernelEnd: 0x203000}); info != want {
		t.Errorf("info %+v, want %+v", info, want)
	}
	// The same memory as LoadUnikernel writes.
	mem2 := newMem(t, 16*machine.MiB)
	if _, err := LoadUnikernel(mem2, writeFile(t, validELF().build()), cmdline, 3); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]uint64{{0, 0x10000}, {machine.CmdlineAddr, 0x100}, {0x100000, 0x110000}} {
		if a, b := readMem(t, mem, r[0], r[1]), readMem(t, mem2, r[0], r[1]); !bytes.Equal(a, b) {
			t.Errorf("Load and LoadUnikernel wrote different bytes in [%#x, %#x)", r[0], r[0]+r[1])
		}
	}
}

func TestLoadHelloELF(t *testing.T) {
	const path = "../testdata/guests/hello.elf"
	if _, err := os.Stat(path); err != nil {
		t.Skip("testdata/guests/hello.elf not built; run make testdata/guests/hello.elf")
	}
	_, info, err := Load(newMem(t, 16*machine.MiB), Config{Kernel: path, CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if info.Format != FormatUnikernel {
		t.Errorf("format %v, want %v", info.Format, FormatUnikernel)
	}
}

func TestLoadNotKernel(t *testing.T) {
	path := writeNamed(t, "hostname", []byte("capsule-host\n"))
	_, _, err := Load(newMem(t, 4*machine.MiB), Config{Kernel: path, CPUs: 1})
	want := "kernel " + path + ": not a Linux bzImage, ELF or Multiboot kernel (no HdrS magic at 0x202, no ELF header, no Multiboot header)"
	if err == nil || err.Error() != want {
		t.Errorf("error %v, want %q", err, want)
	}
	if !errors.Is(err, ErrNotKernel) || !errors.Is(err, ErrNotELF) {
		t.Errorf("error %v is not ErrNotKernel and ErrNotELF", err)
	}
	if errors.Is(ErrNotELF, ErrNotKernel) {
		t.Error("ErrNotELF matches ErrNotKernel")
	}
	// HdrS without the boot flag: said so.
	b := testBz{}.build()
	b[bzBootFlag] = 0
	_, _, err = Load(newMem(t, 4*machine.MiB), Config{Kernel: writeNamed(t, "k", b), CPUs: 1})
	if !errors.Is(err, ErrNotKernel) || !strings.Contains(err.Error(), "HdrS magic at 0x202 but boot flag 0xaa00 at 0x1fe, not 0xaa55") {
		t.Errorf("error %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	le := binary.LittleEndian
	dir := t.TempDir()
	bz := testBz{InitSize: 0x100000, PrefAddress: 0x100000}.build() // needs [1 MiB, 3 MiB)
	vmlinux := testVmlinux().build()
	mbKludge := testMultibootKludge()
	noPVH := testVmlinux(note("GNU\x00", 3, []byte("id"))).build()
	tests := []struct {
		name    string
		kernel  []byte // written to a file; kernelPath used when nil
		kpath   string
		initrd  []byte // written to a file when not nil
		ipath   string
		cmdline string
		mem     uint64 // 16 MiB when 0
		cpus    int    // 1 when 0
		want    error
		msg     string // exact message when set; K and I stand for the paths
	}{
		// Any format.
		{name: "missing kernel", kpath: filepath.Join(dir, "missing"), want: ErrNotFound, msg: "K: no such file"},
		{name: "kernel is a directory", kpath: dir, want: ErrNotKernel, msg: "K: not a Linux bzImage, ELF or Multiboot kernel: is a directory"},
		{name: "kernel larger than RAM", kernel: make([]byte, 4*machine.MiB+1), mem: 4 * machine.MiB, want: ErrBadLayout},
		{name: "no vCPU", kernel: bz, cpus: -1, want: nil, msg: "K: vCPU count -1 is not positive"},

		// bzImage.
		{name: "bzImage protocol 2.04", kernel: testBz{Version: 0x0204}.build(), want: ErrUnsupported,
			msg: "K: unsupported bzImage: boot protocol 2.04 is older than 2.06"},
		{name: "bzImage protocol 2.10", kernel: testBz{Version: 0x020a}.build(), want: ErrUnsupported,
			msg: "K: unsupported bzImage: boot protocol 2.10 has no 64-bit entry point (2.12 and XLF_KERNEL_64 needed)"},
		{name: "bzImage without 64-bit entry", kernel: testBz{NoXLoadFlags: true}.build(), want: ErrUnsupported,
			msg: "K: unsupported bzImage: no 64-bit entry point (XLF_KERNEL_64 clear in xloadflags 0x0); capsule boots x86-64 kernels only"},
		{name: "bzImage truncated", kernel: bz[:len(bz)-1], want: ErrTruncated},
		{name: "bzImage cmdline over cmdline_size", kernel: testBz{CmdlineSize: 10, InitSize: 0x100000}.build(), cmdline: "console=tty0",
			want: ErrCmdlineTooLong, msg: "K: command line too long: 12 bytes, the kernel accepts at most 10 (cmdline_size)"},
		{name: "bzImage cmdline with NUL", kernel: bz, cmdline: "a\x00b", want: ErrBadCmdline},
		{name: "bzImage needs more RAM", kernel: testBz{}.build(), want: ErrBadLayout,
			msg: "K: kernel needs guest RAM up to 0x1800000 (4 KiB of code at 0x100000, init_size 8 MiB at 0x1000000), but RAM below the MMIO gap ends at 0x1000000; give more --memory"},
		{name: "bzImage bad kernel_alignment", kernel: testBz{KernelAlign: 0x300000}.build(), mem: 64 * machine.MiB, want: ErrBadLayout},
		{name: "bzImage pref_address in the MMIO gap", kernel: testBz{PrefAddress: 0xd0000000}.build(), mem: 64 * machine.MiB, want: ErrBadLayout},
		{name: "empty initrd", kernel: bz, initrd: []byte{}, want: ErrBadInitrd, msg: "I: empty file"},
		{name: "initrd that Linux cannot unpack", kernel: bz, initrd: []byte("corrupt, not an archive"), want: ErrBadInitrd, msg: "I: not a cpio archive nor a compressed one (starts with 63 6f 72 72 75 70; want cpio, gzip, bzip2, xz, lzma, lzo, lz4 or zstd)"},
		{name: "missing initrd", kernel: bz, ipath: filepath.Join(dir, "nope"), want: ErrNotFound, msg: "I: no such file"},
		{name: "initrd is a directory", kernel: bz, ipath: dir, want: ErrBadInitrd, msg: "I: not a usable initrd: is a directory"},
		{name: "initrd larger than RAM", kernel: bz, initrd: cpioLike(16*machine.MiB + 1), want: ErrBadLayout,
			msg: "I: bad memory layout: file is 16777217 bytes, larger than the 16 MiB of guest RAM"},
		{name: "initrd does not fit", kernel: bz, initrd: cpioLike(14 * machine.MiB), want: ErrBadLayout,
			msg: "I: 14 MiB does not fit in guest RAM below 0xffffff next to the kernel; give more --memory"},
		{name: "initrd above initrd_addr_max", kernel: testBz{InitSize: 0x100000, PrefAddress: 0x100000, InitrdAddrMax: 0x3fffff}.build(),
			initrd: cpioLike(0x100001), want: ErrBadLayout,
			msg: "I: 1.0 MiB does not fit in guest RAM below 0x3fffff next to the kernel; give more --memory"},

		// PVH.
		{name: "PVH bad note size", kernel: testVmlinux(note("Xen\x00", 18, []byte{1, 2})).build(), want: ErrBadLayout},
		{name: "PVH note past end", kernel: func() []byte {
			b := testVmlinux().build()
			le.PutUint64(phdr(b, 2)[phOffFilesz:], 1<<20)
			return b
		}(), want: ErrTruncated},
		{name: "PVH entry outside the code", kernel: testVmlinux(pvhNote(0x2000000)).build(), want: ErrBadLayout},
		{name: "PVH entry in the bss", kernel: testVmlinux(pvhNote(0x1200100)).build(), want: ErrBadLayout},
		{name: "PVH segment past RAM", kernel: vmlinux, mem: 16 * machine.MiB, want: ErrBadLayout},
		{name: "PVH segment below 1 MiB", kernel: testELF{Entry: 0x80000, Segs: []testSeg{
			{Type: ptNote, Data: pvhNote(0x80000)},
			{Flags: PFR | PFX, Addr: 0x80000, Data: testCode},
		}}.build(), want: ErrBadLayout},
		{name: "PVH cmdline too long", kernel: vmlinux, mem: 64 * machine.MiB, cmdline: strings.Repeat("x", machine.CmdlineMax), want: ErrCmdlineTooLong},
		{name: "PVH initrd does not fit", kernel: vmlinux, mem: 20 * machine.MiB, initrd: cpioLike(2 * machine.MiB), want: ErrBadLayout,
			msg: "I: 2 MiB does not fit in guest RAM below 0x13fffff next to the kernel; give more --memory"},

		// Multiboot.
		{name: "Multiboot bad checksum", kernel: func() []byte {
			b := testMultibootKludge()
			le.PutUint32(b[0x20+mbChecksum:], 1)
			return b
		}(), want: ErrBadHeader},
		{name: "Multiboot load_end_addr past the file", kernel: func() []byte {
			b := testMultibootKludge()
			le.PutUint32(b[0x20+mbLoadEndAddr:], 0x200000)
			return b
		}(), want: ErrTruncated},
		{name: "Multiboot header_addr before the file", kernel: func() []byte {
			b := testMultibootKludge()
			le.PutUint32(b[0x20+mbLoadAddr:], 0xfff00)
			return b
		}(), want: ErrBadLayout},
		{name: "Multiboot bss past RAM", kernel: func() []byte {
			b := testMultibootKludge()
			le.PutUint32(b[0x20+mbBSSEndAddr:], 0x1000001)
			return b
		}(), want: ErrBadLayout},
		{name: "Multiboot not ELF without address fields", kernel: append(make([]byte, 64), mbHeader(0)...), want: ErrUnsupported,
			msg: "K: unsupported Multiboot kernel: header at 0x40 has no address fields (flag 16) and the file is not ELF"},
		{name: "Multiboot ELF entry outside", kernel: testELF{Entry: 0x300000, Segs: []testSeg{
			{Flags: PFR | PFX, Addr: 0x200000, Data: append(mbHeader(0), testCode...)}}}.build(), want: ErrBadLayout},
		{name: "Multiboot ELF segment below 1 MiB", kernel: testELF{Entry: 0x80000, Segs: []testSeg{
			{Flags: PFR | PFX, Addr: 0x80000, Data: append(mbHeader(0), testCode...)}}}.build(), want: ErrBadLayout},
		{name: "Multiboot ELF overlapping segments", kernel: testELF{Entry: 0x200000, Segs: []testSeg{
			{Flags: PFR | PFX, Addr: 0x200000, Data: append(mbHeader(0), testCode...)},
			{Flags: PFR, Addr: 0x200004, Data: testData}}}.build(), want: ErrBadLayout},
		{name: "Multiboot module does not fit", kernel: mbKludge, initrd: make([]byte, 15*machine.MiB), want: ErrBadLayout,
			msg: "I: 15 MiB does not fit in guest RAM below 0xffffff next to the kernel; give more --memory"},

		// ELF64 entered in 64-bit mode.
		{name: "empty kernel file", kernel: []byte{}, want: ErrNotKernel, msg: "K: empty file (0 bytes), not a kernel"},
		{name: "ELF64 initrd does not fit", kernel: validELF().build(), initrd: make([]byte, 14*machine.MiB), want: ErrBadLayout,
			msg: "I: 14 MiB does not fit in guest RAM below 0xffffff next to the kernel; give more --memory"},
		{name: "ELF64 segment in the VGA window", kernel: testELF{Entry: 0xa0000, Segs: []testSeg{{Flags: PFR | PFX, Addr: 0xa0000, Data: testCode}}}.build(),
			want: ErrBadLayout},
		{name: "ELF64 segment past the RAM below the MMIO gap", kernel: testELF{Entry: 0x1000000, Segs: []testSeg{{Flags: PFR | PFX, Addr: 0x1000000, Data: testCode}}}.build(),
			want: ErrBadLayout},
		{name: "vmlinux without PVH note", kernel: noPVH, mem: 64 * machine.MiB, want: ErrBadLayout},
		{name: "32-bit ELF without notes", kernel: testELF32{Entry: 0x100000, Segs: []testSeg{{Flags: PFX, Addr: 0x100000, Data: testCode}}}.build32(),
			want: ErrUnsupported, msg: "K: unsupported ELF: 32-bit (ELFCLASS32), want 64-bit x86-64 (an ELF file without a PVH note or Multiboot header is entered as an ELF64 kernel in 64-bit mode)"},
		{name: "ELF cut", kernel: validELF().build()[:40], want: ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			size := tt.mem
			if size == 0 {
				size = 16 * machine.MiB
			}
			mem := newMem(t, size)
			cfg := Config{Kernel: tt.kpath, Initrd: tt.ipath, Cmdline: tt.cmdline, CPUs: tt.cpus}
			if tt.kernel != nil {
				cfg.Kernel = writeNamed(t, "kernel", tt.kernel)
			}
			if tt.initrd != nil {
				cfg.Initrd = writeNamed(t, "initrd", tt.initrd)
			}
			if cfg.CPUs == 0 {
				cfg.CPUs = 1
			}
			entry, info, err := Load(mem, cfg)
			if err == nil {
				t.Fatalf("Load = %+v, %+v, nil; want an error", entry, info)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("error %q does not wrap %v", err, tt.want)
			}
			if entry != (Entry{}) || info != (Info{}) {
				t.Errorf("entry %+v, info %+v returned with an error", entry, info)
			}
			msg := err.Error()
			prefix := "kernel " + cfg.Kernel + ": "
			if strings.HasPrefix(tt.msg, "I:") {
				prefix = "initrd " + cfg.Initrd + ": "
			}
			if !strings.HasPrefix(msg, prefix) || strings.Contains(msg, "\n") {
				t.Errorf("error %q does not start with %q on one line", msg, prefix)
			}
			if tt.msg != "" {
				want := strings.NewReplacer("K:", "kernel "+cfg.Kernel+":", "I:", "initrd "+cfg.Initrd+":").Replace(tt.msg)
				if msg != want {
					t.Errorf("error %q\nwant  %q", msg, want)
				}
			}
			// Nothing written.
			for _, r := range [][2]uint64{{0, 0x10000}, {machine.CmdlineAddr, 0x1000}, {0x100000, 0x10000}, {size - 0x10000, 0x10000}} {
				if b := readMem(t, mem, r[0], r[1]); bytes.ContainsFunc(b, func(r rune) bool { return r != 0 }) {
					t.Errorf("guest memory at [%#x, %#x) written although loading failed", r[0], r[0]+r[1])
				}
			}
			t.Log(msg)
		})
	}
}

func TestLoadNilMemory(t *testing.T) {
	if _, _, err := Load(nil, Config{Kernel: "k", CPUs: 1}); err == nil || err.Error() != "kernel k: no guest memory" {
		t.Errorf("error %v", err)
	}
}

func TestFormatString(t *testing.T) {
	for f, want := range map[Format]string{
		FormatUnikernel: "ELF64 (64-bit boot protocol)",
		FormatBzImage:   "Linux bzImage",
		FormatPVH:       "ELF vmlinux (PVH)",
		FormatMultiboot: "Multiboot",
		Format(0):       "Format(0)",
	} {
		if got := f.String(); got != want {
			t.Errorf("Format(%d) = %q, want %q", uint8(f), got, want)
		}
	}
	if got := Mode32.String(); got != "32-bit protected mode" {
		t.Errorf("Mode32 = %q", got)
	}
}

func TestSizeString(t *testing.T) {
	for n, want := range map[uint64]string{
		0: "0 bytes", 1023: "1023 bytes", 1024: "1 KiB", 1025: "2 KiB",
		machine.MiB: "1 MiB", 300 * machine.MiB: "300 MiB", machine.MiB * 3 / 2: "1.5 MiB",
	} {
		if got := sizeString(n); got != want {
			t.Errorf("sizeString(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestPlanCheck(t *testing.T) {
	mem := newMem(t, 4*machine.MiB)
	for _, tt := range []struct {
		name   string
		writes []memWrite
		ok     bool
	}{
		{"disjoint", []memWrite{{0x1000, make([]byte, 0x1000), 0}, {0x2000, nil, 0x10}}, true},
		{"empty write anywhere", []memWrite{{1 << 40, nil, 0}}, true},
		{"overlap", []memWrite{{0x1000, make([]byte, 0x1000), 0}, {0x1fff, []byte{1}, 0}}, false},
		{"GDT", []memWrite{{0x500, []byte{1}, 0}}, false},
		{"page tables", []memWrite{{0xe000, nil, 0x2000}}, false},
		{"MP table", []memWrite{{0xfffff, []byte{1}, 0}}, false},
		{"outside RAM", []memWrite{{4*machine.MiB - 1, []byte{1, 2}, 0}}, false},
		{"overflow", []memWrite{{0x100000, []byte{1}, ^uint64(0)}}, false},
	} {
		p := &plan{writes: tt.writes}
		if err := p.check(mem); (err == nil) != tt.ok {
			t.Errorf("%s: check = %v", tt.name, err)
		}
	}
}

// FuzzLoadImage runs the whole loader on arbitrary kernel bytes with a
// small initrd: it must not panic, and whatever it accepts must pass the
// plan's own checks and be written without error.
func FuzzLoadImage(f *testing.F) {
	f.Add(testBz{InitSize: 0x100000, PrefAddress: 0x100000}.build())
	f.Add(testVmlinux().build())
	f.Add(testMultibootKludge())
	f.Add(testMultibootELF32())
	f.Add(validELF().build())
	f.Add(testVmlinuxNoPVH().build())
	mem, err := machine.NewGuestMemory(64 * machine.MiB)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	initrd := &initrdFile{path: "initrd", data: []byte("initrd")}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := Config{Kernel: "kernel", Initrd: "initrd", Cmdline: "console=ttyS0", CPUs: 1}
		p, err := prepareImage(mem, data, cfg, func() (*initrdFile, error) { return initrd, nil })
		if err != nil {
			if p != nil {
				t.Fatal("plan returned with an error")
			}
			if msg := err.Error(); strings.Contains(msg, "\n") || !(strings.HasPrefix(msg, "kernel kernel: ") || strings.HasPrefix(msg, "initrd initrd: ")) {
				t.Fatalf("error %q", msg)
			}
			return
		}
		if err := p.check(mem); err != nil {
			t.Fatalf("accepted image fails the plan check: %v", err)
		}
		if err := p.apply(mem); err != nil {
			t.Fatal(err)
		}
		if p.entry.Mode != Mode32 && p.entry.Mode != Mode64 {
			t.Fatalf("entry mode %v", p.entry.Mode)
		}
	})
}

// cpioLike returns n bytes that start with the newc cpio magic, so that
// the loader's initrd format check accepts them.
func cpioLike(n int) []byte {
	b := make([]byte, n)
	copy(b, "070701")
	return b
}
