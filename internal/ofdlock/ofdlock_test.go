package ofdlock

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestLock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("x"), 0o644)
	open := func() *os.File {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	a, b, c := open(), open(), open()
	defer b.Close()
	defer c.Close()
	if err := Lock(a, false); err != nil {
		t.Fatal(err)
	}
	if err := Lock(b, false); err != nil {
		t.Errorf("two shared locks: %v", err)
	}
	if err := Lock(c, true); !errors.Is(err, ErrBusy) {
		t.Errorf("exclusive over shared: %v, want ErrBusy", err)
	}
	a.Close()
	b.Close()
	if err := Lock(c, true); err != nil {
		t.Errorf("exclusive once the others closed: %v", err)
	}
}
