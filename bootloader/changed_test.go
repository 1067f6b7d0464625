package bootloader

import (
	"errors"
	"os"
	"testing"
)

// truncateOnMap makes readImage's hook truncate the file at victim to 0
// bytes right after it is mapped, as a concurrent writer could.
func truncateOnMap(t *testing.T, victim string) {
	t.Helper()
	afterMap = func(path string) {
		if path == victim {
			if err := os.Truncate(path, 0); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(func() { afterMap = nil })
}

func TestAFileTruncatedWhileLoadingIsAnErrorNotACrash(t *testing.T) {
	t.Run("kernel, through Load", func(t *testing.T) {
		mem := newMem(t, 16<<20)
		k := writeNamed(t, "kernel", validELF().build())
		truncateOnMap(t, k)
		_, _, err := Load(mem, Config{Kernel: k, CPUs: 1})
		if !errors.Is(err, ErrChanged) || err.Error() != "kernel "+k+": changed while being read" {
			t.Fatalf("Load = %v, want %q", err, "kernel "+k+": changed while being read")
		}
	})
	t.Run("kernel, through LoadUnikernel", func(t *testing.T) {
		mem := newMem(t, 16<<20)
		k := writeNamed(t, "kernel", validELF().build())
		truncateOnMap(t, k)
		if _, err := LoadUnikernel(mem, k, "", 1); !errors.Is(err, ErrChanged) {
			t.Fatalf("LoadUnikernel = %v, want ErrChanged", err)
		}
	})
	t.Run("initrd", func(t *testing.T) {
		mem := newMem(t, 16<<20)
		k := writeNamed(t, "kernel", validELF().build())
		i := writeNamed(t, "initrd", make([]byte, 64<<10))
		truncateOnMap(t, i)
		_, _, err := Load(mem, Config{Kernel: k, Initrd: i, CPUs: 1})
		if !errors.Is(err, ErrChanged) || err.Error() != "initrd "+i+": changed while being read" {
			t.Fatalf("Load = %v, want %q", err, "initrd "+i+": changed while being read")
		}
	})
	t.Run("the same files load when left alone", func(t *testing.T) {
		mem := newMem(t, 16<<20)
		k := writeNamed(t, "kernel", validELF().build())
		i := writeNamed(t, "initrd", make([]byte, 64<<10))
		if _, _, err := Load(mem, Config{Kernel: k, Initrd: i, CPUs: 1}); err != nil {
			t.Fatal(err)
		}
	})
}
