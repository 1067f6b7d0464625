package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRuntimeDirMustBeOurs(t *testing.T) {
	tmp := t.TempDir()
	victim := filepath.Join(tmp, "victim")
	os.MkdirAll(filepath.Join(victim, "vm"), 0o700)
	os.WriteFile(filepath.Join(victim, "vm", "keep"), []byte("x"), 0o600)
	// A link planted where the runtime directory goes is refused, and
	// nothing behind it is removed.
	t.Setenv("XDG_RUNTIME_DIR", tmp)
	if err := os.Symlink(victim, filepath.Join(tmp, "capsule")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := privateDir("vm"); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("privateDir through a symbolic link: %v", err)
	}
	if _, err := os.Stat(filepath.Join(victim, "vm", "keep")); err != nil {
		t.Fatal("a file behind the link was removed")
	}
	// A directory open to others is refused too.
	os.Remove(filepath.Join(tmp, "capsule"))
	os.Mkdir(filepath.Join(tmp, "capsule"), 0o755)
	os.Chmod(filepath.Join(tmp, "capsule"), 0o755)
	if _, _, err := privateDir("vm"); err == nil {
		t.Fatal("privateDir in a directory others can read")
	}
}

func TestNamedVMDirectory(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	dir, lock, err := privateDir("one")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := privateDir("one"); err == nil || !strings.Contains(err.Error(), "is running") {
		t.Fatalf("a second VM of one name: %v", err)
	}
	if _, err := Dial(context.Background(), "two"); err == nil || !strings.Contains(err.Error(), "no VM named two") {
		t.Fatalf("Dial of a name no VM has: %v", err)
	}
	// A killed VM leaves its directory and its lock file, but not the
	// lock: the next VM of that name replaces the directory.
	os.WriteFile(filepath.Join(dir, "stale"), nil, 0o600)
	lock.Close()
	if _, err := Dial(context.Background(), "one"); err == nil || !strings.Contains(err.Error(), "no VM named one") {
		t.Fatalf("Dial of a dead VM: %v", err)
	}
	dir2, lock2, err := privateDir("one")
	if err != nil {
		t.Fatal(err)
	}
	defer lock2.Close()
	if _, err := os.Stat(filepath.Join(dir2, "stale")); err == nil {
		t.Fatal("the killed VM's directory was kept")
	}
	for _, bad := range []string{"", ".x", "-x", "a/b", "..", strings.Repeat("a", 65)} {
		if CheckName(bad) == nil {
			t.Errorf("CheckName(%q) accepted", bad)
		}
	}
}
