package rig

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeELF writes a minimal x86-64 ELF executable header with one program
// header, PT_INTERP or PT_LOAD.
func fakeELF(t *testing.T, interp bool) string {
	t.Helper()
	var b bytes.Buffer
	le := binary.LittleEndian
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	binary.Write(&b, le, uint16(elf.ET_EXEC))
	binary.Write(&b, le, uint16(elf.EM_X86_64))
	binary.Write(&b, le, uint32(1))      // version
	binary.Write(&b, le, uint64(0x1000)) // entry
	binary.Write(&b, le, uint64(64))     // phoff
	binary.Write(&b, le, uint64(0))      // shoff
	binary.Write(&b, le, uint32(0))      // flags
	binary.Write(&b, le, []uint16{64, 56, 1, 64, 0, 0})
	typ := elf.PT_LOAD
	if interp {
		typ = elf.PT_INTERP
	}
	binary.Write(&b, le, uint32(typ))
	binary.Write(&b, le, uint32(elf.PF_R))
	binary.Write(&b, le, []uint64{0, 0, 0, 0, 0, 1})
	name := filepath.Join(t.TempDir(), "fake")
	if err := os.WriteFile(name, b.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestCheckStatic(t *testing.T) {
	if err := checkStatic(fakeELF(t, false), "test binary"); err != nil {
		t.Errorf("static fake: %v", err)
	}
	if err := checkStatic(fakeELF(t, true), "test binary"); !errors.Is(err, errDynamic) {
		t.Errorf("dynamic fake: %v, want a dynamic-linking error", err)
	}
	script := filepath.Join(t.TempDir(), "script")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	if err := checkStatic(script, "test binary"); err == nil {
		t.Error("shell script accepted")
	}
}

func TestCheckBinaryHint(t *testing.T) {
	dynamic := fakeELF(t, true)
	err := checkBinary(dynamic, false)
	if err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("checkBinary(dynamic) = %v, want a CGO_ENABLED=0 hint", err)
	}
	// The host's root has the C library.
	if err := checkBinary(dynamic, true); err != nil {
		t.Errorf("checkBinary(dynamic, host root) = %v", err)
	}
}

func TestLookToolHint(t *testing.T) {
	_, err := lookTool("qemu-system-nonexistent", qemuHint)
	if err == nil || err.Error() != "qemu-system-nonexistent not found: apt-get install qemu-system-x86" {
		t.Errorf("lookTool error %v", err)
	}
}
