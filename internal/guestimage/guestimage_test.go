package guestimage

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// layout is a temporary file tree with an installation under prefix and a
// checkout under checkout, each with both images.
type layout struct {
	prefix, checkout, other string
	env                     map[string]string
}

func newLayout(t *testing.T) *layout {
	t.Helper()
	base := t.TempDir()
	l := &layout{
		prefix:   filepath.Join(base, "usr"),
		checkout: filepath.Join(base, "src", "capsule"),
		other:    filepath.Join(base, "elsewhere"),
		env:      map[string]string{},
	}
	for _, f := range []string{
		filepath.Join(l.prefix, "bin", "capsule"),
		filepath.Join(l.prefix, ShareDir, KernelFile),
		filepath.Join(l.prefix, ShareDir, InitrdFile),
		filepath.Join(l.checkout, "bin", "capsule"),
		filepath.Join(l.checkout, CheckoutDir, CheckoutKernelFile),
		filepath.Join(l.checkout, CheckoutDir, CheckoutInitrdFile),
		filepath.Join(l.other, "bin", "capsule"),
		filepath.Join(l.other, "kernel"),
		filepath.Join(l.other, "initrd"),
	} {
		write(t, f, "x")
	}
	write(t, filepath.Join(l.checkout, "go.mod"), "module "+Module+"\n\ngo 1.26\n")
	// A module that is not capsule's is no checkout.
	write(t, filepath.Join(l.other, "go.mod"), "module example.com/other\n")
	return l
}

func write(t *testing.T, name, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(data), 0o755); err != nil {
		t.Fatal(err)
	}
}

func (l *layout) getenv(k string) string { return l.env[k] }

func TestFindOrder(t *testing.T) {
	l := newLayout(t)
	installed := filepath.Join(l.prefix, "bin", "capsule")
	share := filepath.Join(l.prefix, ShareDir)
	tree := filepath.Join(l.checkout, CheckoutDir)
	for _, tc := range []struct {
		name           string
		opts           Options
		env            map[string]string
		kernel, initrd string
		kfrom, ifrom   string
	}{
		{"flags win", Options{Kernel: "k", Initrd: "/nonexistent/i", Executable: installed, WorkDir: l.checkout},
			map[string]string{EnvKernel: filepath.Join(l.other, "kernel"), EnvInitrd: filepath.Join(l.other, "initrd")},
			"k", "/nonexistent/i", FromFlag, FromFlag},
		{"environment before the installation", Options{Executable: installed, WorkDir: l.checkout},
			map[string]string{EnvKernel: filepath.Join(l.other, "kernel"), EnvInitrd: filepath.Join(l.other, "initrd")},
			filepath.Join(l.other, "kernel"), filepath.Join(l.other, "initrd"), FromEnv, FromEnv},
		{"installation before the checkout", Options{Executable: installed, WorkDir: l.checkout}, nil,
			filepath.Join(share, KernelFile), filepath.Join(share, InitrdFile), FromInstall, FromInstall},
		{"checkout of the executable", Options{Executable: filepath.Join(l.checkout, "bin", "capsule"), WorkDir: l.other}, nil,
			filepath.Join(tree, CheckoutKernelFile), filepath.Join(tree, CheckoutInitrdFile), FromCheckout, FromCheckout},
		{"checkout of the working directory", Options{Executable: filepath.Join(l.other, "bin", "capsule"),
			WorkDir: filepath.Join(l.checkout, "cmd", "capsule")}, nil,
			filepath.Join(tree, CheckoutKernelFile), filepath.Join(tree, CheckoutInitrdFile), FromCheckout, FromCheckout},
		{"each image on its own", Options{Kernel: "k", Executable: installed}, map[string]string{EnvKernel: "ignored"},
			"k", filepath.Join(share, InitrdFile), FromFlag, FromInstall},
		{"one from the environment, one installed", Options{Executable: installed},
			map[string]string{EnvInitrd: filepath.Join(l.other, "initrd")},
			filepath.Join(share, KernelFile), filepath.Join(l.other, "initrd"), FromInstall, FromEnv},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l.env = tc.env
			tc.opts.Getenv = l.getenv
			got, err := Find(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			want := Images{Kernel: tc.kernel, Initrd: tc.initrd, KernelFrom: tc.kfrom, InitrdFrom: tc.ifrom}
			if got != want {
				t.Errorf("Find = %+v\nwant %+v", got, want)
			}
		})
	}
}

// TestFindThroughSymlink finds the installation of an executable reached
// through a symbolic link (as os.Executable reports it, resolved).
func TestFindThroughSymlink(t *testing.T) {
	l := newLayout(t)
	link := filepath.Join(t.TempDir(), "capsule")
	if err := os.Symlink(filepath.Join(l.prefix, "bin", "capsule"), link); err != nil {
		t.Fatal(err)
	}
	got, err := Find(Options{Executable: link, WorkDir: l.other, Getenv: l.getenv})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(l.prefix, ShareDir, KernelFile); got.Kernel != want || got.KernelFrom != FromInstall {
		t.Errorf("kernel %s from %s, want %s from the installation", got.Kernel, got.KernelFrom, want)
	}
}

func TestFindErrors(t *testing.T) {
	l := newLayout(t)
	installed := filepath.Join(l.prefix, "bin", "capsule")
	// A directory where the installed initramfs should be is skipped, and
	// the checkout has no initramfs.
	for _, err := range []error{
		os.Remove(filepath.Join(l.prefix, ShareDir, InitrdFile)),
		os.Mkdir(filepath.Join(l.prefix, ShareDir, InitrdFile), 0o755),
		os.Remove(filepath.Join(l.checkout, CheckoutDir, CheckoutInitrdFile)),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		opts Options
		env  map[string]string
		want []string
	}{
		{"environment names a missing file", Options{Executable: installed, WorkDir: l.checkout},
			map[string]string{EnvKernel: filepath.Join(l.other, "missing")},
			[]string{"$CAPSULE_KERNEL", filepath.Join(l.other, "missing"), "no such file"}},
		{"environment names a directory", Options{Executable: installed, WorkDir: l.checkout},
			map[string]string{EnvInitrd: l.other}, []string{"$CAPSULE_INITRD", l.other, "not a regular file"}},
		{"nothing anywhere", Options{Executable: installed, WorkDir: l.other, Kernel: "k"}, nil,
			[]string{"no guest initramfs", "--initrd", "$CAPSULE_INITRD", filepath.Join(l.prefix, ShareDir, InitrdFile),
				"found no checkout of " + Module + " above " + filepath.Join(l.prefix, "bin") + " or " + l.other, "make install"}},
		{"checkout without images", Options{Executable: filepath.Join(l.other, "bin", "capsule"), WorkDir: l.checkout,
			Kernel: "k"}, nil, []string{"no guest initramfs", filepath.Join(l.other, ShareDir, InitrdFile),
			filepath.Join(l.checkout, CheckoutDir, CheckoutInitrdFile), "make images"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l.env = tc.env
			tc.opts.Getenv = l.getenv
			got, err := Find(tc.opts)
			if err == nil {
				t.Fatalf("Find = %+v, want an error", got)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error of several lines: %q", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
		})
	}
}

// TestFindDefaults runs Find as capsule run would in this test: from the
// package directory of a checkout, where it must look in the checkout.
func TestFindDefaults(t *testing.T) {
	root, ok := ModuleRoot(".")
	if !ok {
		t.Fatal("this package is not in a checkout")
	}
	got, err := Find(Options{Getenv: func(string) string { return "" }})
	tree := filepath.Join(root, filepath.FromSlash(CheckoutDir))
	switch {
	case err != nil && !strings.Contains(err.Error(), tree):
		t.Errorf("error %q does not name %s", err, tree)
	case err == nil && (got.KernelFrom != FromCheckout || got.Kernel != filepath.Join(tree, CheckoutKernelFile)):
		t.Errorf("Find = %+v, want this checkout's images", got)
	}
}

func TestModuleRoot(t *testing.T) {
	l := newLayout(t)
	if r, ok := ModuleRoot(filepath.Join(l.checkout, CheckoutDir)); !ok || r != l.checkout {
		t.Errorf("ModuleRoot(checkout/testdata/images) = %q, %v", r, ok)
	}
	if r, ok := ModuleRoot(l.other); ok {
		t.Errorf("ModuleRoot(another module) = %q", r)
	}
}
