package rig

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestParseKernelDepends(t *testing.T) {
	out := `linux-image-cloud-amd64
  Depends: linux-image-6.1.0-57-cloud-amd64
  Depends: linux-image-6.1.0-56-cloud-amd64
`
	if got := parseKernelDepends([]byte(out)); got != "linux-image-6.1.0-57-cloud-amd64" {
		t.Errorf("got %q", got)
	}
	if got := parseKernelDepends([]byte("linux-image-cloud-amd64\n  Recommends: x\n")); got != "" {
		t.Errorf("got %q, want none", got)
	}
	if got := parseKernelDepends([]byte(" |Depends: linux-image-6.12.1-cloud-amd64\n")); got != "linux-image-6.12.1-cloud-amd64" {
		t.Errorf("alternative: got %q", got)
	}
}

func TestDebID(t *testing.T) {
	pkg := "linux-image-6.1.0-57-cloud-amd64"
	cases := map[string]string{
		pkg + "_6.1.192-3_amd64.deb":     pkg + "_6.1.192-3",
		pkg + "_1%3a6.1.192-3_amd64.deb": pkg + "_1_6.1.192-3",
	}
	for in, want := range cases {
		if got := debID(in, pkg); got != want {
			t.Errorf("debID(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestCachedKernel(t *testing.T) {
	kdir := t.TempDir()
	old := time.Now().Add(-time.Hour)
	// linux-image-b_2 is newer but lacks the tun module (an older rig
	// staged it), so it does not count.
	for _, name := range []string{"linux-image-a_1", "linux-image-a_2", "linux-image-b_1", "linux-image-b_2", ".fetch-123"} {
		dir := filepath.Join(kdir, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		files := []string{"vmlinuz", "lib/modules/6.1.0-1-cloud-amd64/modules.dep"}
		for _, m := range stagedModules() {
			if name != "linux-image-b_2" || m.name != "tun" {
				files = append(files, m.name+".ko")
			}
		}
		for _, f := range files {
			os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755)
			if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if name != "linux-image-a_2" && name != "linux-image-b_2" {
			os.Chtimes(dir, old, old)
		}
	}
	if k, ok := cachedKernel(kdir, "linux-image-a"); !ok || k.id != "linux-image-a_2" {
		t.Errorf("cachedKernel(a) = %+v, %v", k, ok)
	}
	if k, ok := cachedKernel(kdir, "linux-image-b"); !ok || k.id != "linux-image-b_1" {
		t.Errorf("cachedKernel(b) = %+v, %v", k, ok)
	}
	if k, ok := cachedKernel(kdir, "linux-image-c"); ok {
		t.Errorf("cachedKernel(c) = %+v", k)
	}
	if k, ok := cachedKernel(kdir, ""); !ok || k.id != "linux-image-a_2" {
		t.Errorf("cachedKernel(any) = %+v, %v", k, ok)
	}
}

func TestResolveKernelPinnedAndMemo(t *testing.T) {
	kdir := t.TempDir()
	log := &logger{w: os.Stderr}
	if pkg, err := resolveKernel(t.Context(), Config{Kernel: "linux-image-x"}, kdir, log); err != nil || pkg != "linux-image-x" {
		t.Errorf("pinned: %q, %v", pkg, err)
	}
	if err := os.WriteFile(filepath.Join(kdir, "resolved"), []byte("linux-image-memo\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if pkg, err := resolveKernel(t.Context(), Config{}, kdir, log); err != nil || pkg != "linux-image-memo" {
		t.Errorf("memo: %q, %v", pkg, err)
	}
}

// TestPublishKernelKeepsExisting checks that a kernel staged again with
// more modules only gains the files it lacked: files that a rig running
// now may open never go missing.
func TestPublishKernelKeepsExisting(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "linux-image-a_1")
	staged := t.TempDir()
	for name, data := range map[string]string{"vmlinuz": "old", "stock-modules.cpio": "kept"} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range map[string]string{"vmlinuz": "new", "fuse.ko": "module"} {
		if err := os.WriteFile(filepath.Join(staged, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := publishKernel(staged, dir); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"vmlinuz": "old", "stock-modules.cpio": "kept", "fuse.ko": "module"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != want {
			t.Errorf("%s: %q, %v; want %q", name, b, err, want)
		}
	}
	// A fresh kernel directory is the staged one.
	fresh := filepath.Join(t.TempDir(), "linux-image-b_1")
	if err := publishKernel(staged, fresh); err != nil {
		t.Fatal(err)
	}
	if !exists(filepath.Join(fresh, "vmlinuz")) {
		t.Error("fresh kernel directory lacks vmlinuz")
	}
}

// TestStageKernel stages a fake unpacked package: vmlinuz, the module tree
// indexed by busybox depmod, and the staged modules linked from it.
func TestStageKernel(t *testing.T) {
	if _, err := staticBusybox(); err != nil {
		t.Skip(err)
	}
	tree := t.TempDir()
	const version = "6.1.0-1-cloud-amd64"
	files := map[string]string{"boot/vmlinuz-" + version: "kernel"}
	for _, m := range stagedModules() {
		files["lib/modules/"+version+"/"+m.path] = m.name
	}
	files["lib/modules/"+version+"/kernel/drivers/net/veth.ko"] = "veth"
	makeTree(t, tree, files)
	dst := filepath.Join(t.TempDir(), "out")
	if err := stageKernel(t.Context(), tree, dst); err != nil {
		t.Fatal(err)
	}
	k := kernel{dir: dst}
	if !k.complete() {
		t.Fatal("staged kernel is not complete")
	}
	if got, want := k.moduleTree(), filepath.Join(dst, "lib/modules", version); got != want {
		t.Errorf("module tree %s, want %s", got, want)
	}
	if b, err := os.ReadFile(filepath.Join(k.moduleTree(), "kernel/drivers/net/veth.ko")); err != nil || string(b) != "veth" {
		t.Errorf("veth.ko: %q, %v", b, err)
	}
	if b, err := os.ReadFile(k.module("kvm-amd")); err != nil || string(b) != "kvm-amd" {
		t.Errorf("kvm-amd.ko: %q, %v", b, err)
	}
}
