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

// rigKernels lists the Debian cloud kernels the test rig caches.
func rigKernels(t *testing.T) []string {
	t.Helper()
	home, err := os.UserHomeDir()
	if err != nil {
		t.Skipf("no home directory (%v): no rig kernel to test", err)
	}
	pattern := filepath.Join(home, ".cache", "capsule", "rig", "kernel", "*", "vmlinuz")
	paths, _ := filepath.Glob(pattern)
	if len(paths) == 0 {
		t.Skipf("no real kernel at %s (the rig downloads Debian's cloud kernel there); skipping", pattern)
	}
	return paths
}

// TestRigKernelBzImage parses and loads the Debian cloud kernel, a real
// bzImage, with a small initrd.
func TestRigKernelBzImage(t *testing.T) {
	for _, path := range rigKernels(t) {
		t.Run(filepath.Base(filepath.Dir(path)), func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b, err := ParseBzImage(data)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("boot protocol %s, kernel %q, xloadflags %#x, init_size %#x, pref_address %#x, cmdline_size %d, initrd_addr_max %#x",
				b.VersionString(), b.KernelVersion, b.XLoadFlags, b.InitSize, b.PrefAddress, b.CmdlineSize, b.InitrdAddrMax)
			if b.Version < 0x020f {
				t.Errorf("boot protocol %s, want 2.15 or later", b.VersionString())
			}
			if b.XLoadFlags&XLFKernel64 == 0 || !b.Has64BitEntry() {
				t.Errorf("xloadflags %#x lack XLF_KERNEL_64", b.XLoadFlags)
			}
			if b.KernelVersion == "" || b.InitSize == 0 || b.CmdlineSize < 255 {
				t.Errorf("header %+v", b)
			}

			mem := newMem(t, 256*machine.MiB)
			initrd := bytes.Repeat([]byte("070701"), 10000)
			const cmdline = "console=ttyS0 panic=-1"
			entry, info, err := Load(mem, Config{Kernel: path, Initrd: writeNamed(t, "initrd", initrd), Cmdline: cmdline, CPUs: 1})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%v %s: kernel [%#x, %#x), initrd at %#x", info.Format, info.Version, info.KernelAddr, info.KernelEnd, info.InitrdAddr)
			if want := (Entry{Mode: Mode64, RIP: 0x100200, RSP: LinuxStackTop, RSI: machine.BootInfoAddr}); entry != want {
				t.Errorf("entry %+v, want %+v", entry, want)
			}
			if info.Format != FormatBzImage || !strings.HasSuffix(info.Version, ", boot protocol "+b.VersionString()) {
				t.Errorf("info %+v", info)
			}
			if end := info.InitrdAddr + info.InitrdSize; info.InitrdAddr%pageSize != 0 || info.InitrdAddr < info.KernelEnd ||
				end-1 > uint64(b.InitrdAddrMax) || end > 256*machine.MiB || 256*machine.MiB-end >= pageSize {
				t.Errorf("initrd at [%#x, %#x)", info.InitrdAddr, end)
			}
			if got := readMem(t, mem, info.InitrdAddr, info.InitrdSize); !bytes.Equal(got, initrd) {
				t.Error("initrd bytes differ")
			}
			if got := readMem(t, mem, 0x100000, 4096); !bytes.Equal(got, b.Payload[:4096]) {
				t.Error("protected-mode code not at 1 MiB")
			}
			if v, _ := mem.Uint16(machine.BootInfoAddr + bzVersion); v != b.Version {
				t.Errorf("zero page version %#x", v)
			}
			if v, _ := mem.Uint32(machine.BootInfoAddr + bzRamdiskImage); uint64(v) != info.InitrdAddr {
				t.Errorf("ramdisk_image %#x", v)
			}
		})
	}
}

// TestRigKernelPVH unpacks the vmlinux inside the Debian kernel (an ELF
// file, compressed with LZ4 in Debian's build) and boots it through PVH.
func TestRigKernelPVH(t *testing.T) {
	if testing.Short() {
		t.Skip("unpacking 50 MB of vmlinux is skipped in -short mode")
	}
	for _, path := range rigKernels(t) {
		t.Run(filepath.Base(filepath.Dir(path)), func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b, err := ParseBzImage(data)
			if err != nil {
				t.Fatal(err)
			}
			// payload_offset and payload_length (2.08+) locate the
			// compressed vmlinux in the protected-mode code.
			le := binary.LittleEndian
			off, n := uint64(le.Uint32(data[0x248:])), uint64(le.Uint32(data[0x24c:]))
			if off+n > uint64(len(b.Payload)) {
				t.Fatalf("payload at %#x+%#x outside the protected-mode code", off, n)
			}
			vmlinux, err := unLZ4Legacy(b.Payload[off : off+n])
			if err != nil {
				t.Skipf("payload not unpacked (%v); only LZ4 is handled here", err)
			}
			entry, ok, err := FindPVHEntry(vmlinux)
			if err != nil || !ok {
				t.Fatalf("FindPVHEntry = %#x, %v, %v", entry, ok, err)
			}
			t.Logf("vmlinux of %d bytes, PVH entry %#x", len(vmlinux), entry)
			mem := newMem(t, 256*machine.MiB)
			initrd := bytes.Repeat([]byte("070701"), 1000)
			e, info, err := Load(mem, Config{Kernel: writeNamed(t, "vmlinux", vmlinux), Initrd: writeNamed(t, "initrd", initrd), CPUs: 1})
			if err != nil {
				t.Fatal(err)
			}
			if e != (Entry{Mode: Mode32, RIP: uint64(entry), RBX: machine.BootInfoAddr}) || info.Format != FormatPVH {
				t.Errorf("entry %+v, info %+v", e, info)
			}
			t.Logf("kernel [%#x, %#x), initrd at %#x", info.KernelAddr, info.KernelEnd, info.InitrdAddr)
		})
	}
}

// unLZ4Legacy decompresses the LZ4 legacy frame format the kernel build
// uses: the magic 0x184c2102, then blocks of a u32 compressed size and
// LZ4 block data, until the data ends (the build appends the
// uncompressed size, which reads as a block that does not fit).
func unLZ4Legacy(src []byte) ([]byte, error) {
	le := binary.LittleEndian
	if len(src) < 4 || le.Uint32(src) != 0x184c2102 {
		return nil, errors.New("not an LZ4 legacy frame")
	}
	var out []byte
	for i := 4; i+4 <= len(src); {
		n := int(le.Uint32(src[i:]))
		if n == 0x184c2102 {
			i += 4
			continue
		}
		if n > len(src)-i-4 {
			break
		}
		var err error
		if out, err = unLZ4Block(src[i+4:i+4+n], out); err != nil {
			return nil, err
		}
		i += 4 + n
	}
	return out, nil
}

// unLZ4Block appends the decompressed LZ4 block src to out.
func unLZ4Block(src, out []byte) ([]byte, error) {
	bad := errors.New("corrupt LZ4 block")
	length := func(i, n int) (int, int, error) {
		if n != 15 {
			return i, n, nil
		}
		for {
			if i >= len(src) {
				return 0, 0, bad
			}
			c := src[i]
			i++
			n += int(c)
			if c != 255 {
				return i, n, nil
			}
		}
	}
	for i := 0; i < len(src); {
		token := src[i]
		i++
		var lit int
		var err error
		if i, lit, err = length(i, int(token>>4)); err != nil {
			return nil, err
		}
		if lit > len(src)-i {
			return nil, bad
		}
		out = append(out, src[i:i+lit]...)
		i += lit
		if i == len(src) {
			break // the last sequence has literals only
		}
		if i+2 > len(src) {
			return nil, bad
		}
		dist := int(le16(src[i:]))
		i += 2
		var m int
		if i, m, err = length(i, int(token&15)); err != nil {
			return nil, err
		}
		m += 4
		if dist == 0 || dist > len(out) {
			return nil, bad
		}
		from := len(out) - dist
		for k := range m {
			out = append(out, out[from+k])
		}
	}
	return out, nil
}

func le16(b []byte) uint16 { return binary.LittleEndian.Uint16(b) }
