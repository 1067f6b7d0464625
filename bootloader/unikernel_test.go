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

func newMem(t *testing.T, size uint64) *machine.GuestMemory {
	t.Helper()
	mem, err := machine.NewGuestMemory(size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	return mem
}

func writeFile(t *testing.T, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kernel.elf")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func readMem(t *testing.T, mem *machine.GuestMemory, gpa, n uint64) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := mem.ReadAt(b, gpa); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadUnikernel(t *testing.T) {
	mem := newMem(t, 16*machine.MiB)
	// Dirty the bss range to see the loader zero it.
	if err := mem.WriteAt(bytes.Repeat([]byte{0xaa}, 0x4000), 0x200000); err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, validELF().build())
	const cmdline = "console=ttyS0 exit=7"
	entry, err := LoadUnikernel(mem, path, cmdline, 3)
	if err != nil {
		t.Fatal(err)
	}
	want := Entry{Mode: Mode64, RIP: 0x100000, RSP: machine.StackTop, RDI: machine.CapsuleInfoAddr, RSI: machine.BootInfoAddr}
	if entry != want {
		t.Errorf("entry %+v, want %+v", entry, want)
	}

	if got := readMem(t, mem, 0x100000, uint64(len(testCode))); !bytes.Equal(got, testCode) {
		t.Errorf("code segment = %x, want %x", got, testCode)
	}
	if got := readMem(t, mem, 0x200000, uint64(len(testData))); !bytes.Equal(got, testData) {
		t.Errorf("data segment = %q, want %q", got, testData)
	}
	bss := readMem(t, mem, 0x200000+uint64(len(testData)), 0x3000-uint64(len(testData)))
	if i := bytes.IndexFunc(bss, func(r rune) bool { return r != 0 }); i >= 0 {
		t.Errorf("bss byte at %#x not zeroed", 0x200000+len(testData)+i)
	}
	if got := readMem(t, mem, 0x203000, 1); got[0] != 0xaa {
		t.Errorf("byte past the bss changed to %#x", got[0])
	}

	if got := readMem(t, mem, machine.CmdlineAddr, uint64(len(cmdline))+1); string(got) != cmdline+"\x00" {
		t.Errorf("command line %q, want %q", got, cmdline+"\x00")
	}

	le := binary.LittleEndian
	bi := readMem(t, mem, machine.CapsuleInfoAddr, BootInfoSize)
	if string(bi[:8]) != "CAPSULE1" {
		t.Errorf("magic bytes %q, want CAPSULE1", bi[:8])
	}
	e820 := machine.E820(mem)
	wantBI := []uint64{BootMagic, machine.CmdlineAddr, uint64(len(cmdline)), machine.MemMapAddr, uint64(len(e820)), 3, 16 * machine.MiB, 0, 0}
	for i, w := range wantBI {
		if got := le.Uint64(bi[8*i:]); got != w {
			t.Errorf("boot info at %#x = %#x, want %#x", 8*i, got, w)
		}
	}

	if len(e820) != 4 {
		t.Fatalf("machine.E820 gave %d entries, want 4 for 16 MiB", len(e820))
	}
	mm := readMem(t, mem, machine.MemMapAddr, uint64(len(e820))*MemMapEntrySize+8)
	for i, e := range e820 {
		r := mm[MemMapEntrySize*i:]
		if a, s, ty, z := le.Uint64(r), le.Uint64(r[8:]), le.Uint32(r[16:]), le.Uint32(r[20:]); a != e.Addr || s != e.Size || ty != e.Type || z != 0 {
			t.Errorf("memory map entry %d = %#x %#x %d %d, want %+v", i, a, s, ty, z, e)
		}
	}
	if last := le.Uint64(mm[len(mm)-8:]); last != 0 {
		t.Errorf("memory past the map is %#x, want 0", last)
	}
}

func TestLoadUnikernelEmptyCmdline(t *testing.T) {
	mem := newMem(t, 4*machine.MiB)
	if err := mem.WriteAt([]byte("stale"), machine.CmdlineAddr); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadUnikernel(mem, writeFile(t, validELF().build()), "", 1); err != nil {
		t.Fatal(err)
	}
	if b, _ := mem.Uint8(machine.CmdlineAddr); b != 0 {
		t.Errorf("command line starts with %#x, want NUL", b)
	}
	if n, _ := mem.Uint64(machine.CapsuleInfoAddr + 0x10); n != 0 {
		t.Errorf("command line length %d, want 0", n)
	}
	if n, _ := mem.Uint64(machine.CapsuleInfoAddr + 0x28); n != 1 {
		t.Errorf("vCPU count %d, want 1", n)
	}
}

func TestLoadUnikernelHighSegment(t *testing.T) {
	// The last byte of a 16 MiB guest.
	e := testELF{Entry: 0xfff000, Segs: []testSeg{{Flags: PFR | PFX, Addr: 0xfff000, Data: testCode, MemSize: 0x1000}}}
	mem := newMem(t, 16*machine.MiB)
	if _, err := LoadUnikernel(mem, writeFile(t, e.build()), "", 1); err != nil {
		t.Fatal(err)
	}
}

func TestLoadUnikernelErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	seg := func(addr, memsz uint64) []byte {
		return testELF{Entry: addr, Segs: []testSeg{{Flags: PFR | PFX, Addr: addr, Data: testCode, MemSize: memsz}}}.build()
	}
	valid := writeFile(t, validELF().build())
	tests := []struct {
		name    string
		path    string
		data    []byte // written to a file when path is empty
		cmdline string
		mem     uint64
		want    error
		msg     string // in the error when set
	}{
		{name: "missing", path: missing, want: ErrNotFound},
		{name: "directory", path: dir, want: ErrNotELF},
		{name: "text file", data: []byte("capsule-host\n"), want: ErrNotELF},
		{name: "empty file", data: []byte{}, want: ErrNotELF, msg: "empty file (0 bytes), not a kernel"},
		{name: "32-bit", data: func() []byte { b := validELF().build(); b[offClass] = 1; return b }(), want: ErrUnsupported},
		{name: "truncated", data: validELF().build()[:100], want: ErrTruncated},
		{name: "larger than RAM", data: make([]byte, 2*machine.MiB+1), mem: 2 * machine.MiB, want: ErrBadLayout},
		{name: "below KernelMin", data: seg(0x80000, 0), want: ErrBadLayout},
		{name: "straddles KernelMin", data: seg(0xff000, 0x2000), want: ErrBadLayout},
		{name: "past RAM", data: seg(0x1000000, 0), want: ErrBadLayout},
		{name: "end past RAM", data: seg(0xfff000, 0x1001), want: ErrBadLayout},
		{name: "huge bss", data: seg(0x100000, 1<<40), want: ErrBadLayout},
		{name: "virtual entry of a segment linked elsewhere", data: testELF{Entry: 0xffffffff80100000, Segs: []testSeg{
			{Flags: PFR | PFX, Addr: 0x100000, VAddr: 0xffffffff80100000, Data: testCode}}}.build(), want: ErrBadLayout},
		{name: "cmdline too long", path: valid, cmdline: strings.Repeat("x", machine.CmdlineMax), want: ErrCmdlineTooLong},
		{name: "cmdline with NUL", path: valid, cmdline: "a\x00b", want: ErrBadCmdline},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			size := tt.mem
			if size == 0 {
				size = 16 * machine.MiB
			}
			mem := newMem(t, size)
			path := tt.path
			if path == "" {
				path = writeFile(t, tt.data)
			}
			entry, err := LoadUnikernel(mem, path, tt.cmdline, 1)
			if !errors.Is(err, tt.want) {
				t.Fatalf("LoadUnikernel = %+v, %v; want %v", entry, err, tt.want)
			}
			if entry != (Entry{}) {
				t.Errorf("entry %+v returned with an error", entry)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.msg) {
				t.Errorf("error %q does not say %q", msg, tt.msg)
			}
			if !strings.HasPrefix(msg, "kernel "+path+": ") || strings.Contains(msg, "\n") {
				t.Errorf("error %q does not start with %q on one line", msg, "kernel "+path+": ")
			}
			// A rejected image leaves guest memory untouched.
			if b, _ := mem.Uint64(machine.CapsuleInfoAddr); b != 0 {
				t.Errorf("boot info written although loading failed")
			}
			t.Log(msg)
		})
	}
}

func TestLoadUnikernelMessages(t *testing.T) {
	mem := newMem(t, 4*machine.MiB)
	_, err := LoadUnikernel(mem, "/nonexistent/x", "", 1)
	if got, want := err.Error(), "kernel /nonexistent/x: no such file"; got != want {
		t.Errorf("error %q, want %q", got, want)
	}
	path := writeFile(t, []byte("capsule-host\n"))
	_, err = LoadUnikernel(mem, path, "", 1)
	if got, want := err.Error(), "kernel "+path+": not an ELF file (bad magic)"; got != want {
		t.Errorf("error %q, want %q", got, want)
	}
}

func TestLoadUnikernelBadArgs(t *testing.T) {
	path := writeFile(t, validELF().build())
	if _, err := LoadUnikernel(nil, path, "", 1); err == nil {
		t.Error("nil memory accepted")
	}
	if _, err := LoadUnikernel(newMem(t, 4*machine.MiB), path, "", 0); err == nil {
		t.Error("0 vCPUs accepted")
	}
}

func TestModeString(t *testing.T) {
	if s := Mode64.String(); s != "64-bit long mode" {
		t.Errorf("Mode64 = %q", s)
	}
	if s := Mode(0).String(); s != "Mode(0)" {
		t.Errorf("Mode(0) = %q", s)
	}
}

// TestHelloELF loads the real hello unikernel when it has been built.
func TestHelloELF(t *testing.T) {
	const path = "../testdata/guests/hello.elf"
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Skip("testdata/guests/hello.elf not built; run make testdata/guests/hello.elf")
	}
	if err != nil {
		t.Fatal(err)
	}
	img, err := ParseELF(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Segments) != 1 {
		t.Errorf("%d PT_LOAD segments, want 1", len(img.Segments))
	}
	if hasLinuxNote(data) {
		t.Error("hello.elf taken for Linux")
	}
	mem := newMem(t, 16*machine.MiB)
	entry, err := LoadUnikernel(mem, path, "exit=3", 1)
	if err != nil {
		t.Fatal(err)
	}
	if entry.RIP < 0x100000 || entry.RIP >= 0x100100 {
		t.Errorf("entry %#x, want 0x1000xx", entry.RIP)
	}
	s := img.Segments[0]
	if s.Addr != 0x100000 || entry.RIP < s.Addr || entry.RIP >= s.Addr+s.FileSize || s.Flags&PFX == 0 {
		t.Errorf("entry %#x not in the executable segment %#x+%#x (flags %#x)", entry.RIP, s.Addr, s.FileSize, s.Flags)
	}
	// The entry starts with mov al,123; out 0xf5,al.
	if got := readMem(t, mem, entry.RIP, 4); !bytes.Equal(got, []byte{0xb0, 123, 0xe6, 0xf5}) {
		t.Errorf("code at entry %x, want b07be6f5 (mov al,123; out 0xf5,al)", got)
	}
}
