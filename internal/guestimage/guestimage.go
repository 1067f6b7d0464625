// Package guestimage finds the guest kernel and initramfs that capsule
// boots when the command line names none: capsule's default kernel and the
// initramfs holding its guest agent.
//
// For each of the two, the first of these places that applies wins:
//
//  1. the command line's --kernel or --initrd, used as given;
//  2. $CAPSULE_KERNEL or $CAPSULE_INITRD, which must name a file;
//  3. the installation: <prefix>/share/capsule/vmlinux and agent.cpio.gz,
//     where <prefix>/bin holds the capsule executable (make install);
//  4. a checkout of capsule's module, found above the executable's
//     directory or the working directory: its testdata/images/default.vmlinux
//     and agent.cpio.gz (make images), which is what tests and bin/capsule
//     in a checkout find.
//
// When none applies, the error names every place looked at.
package guestimage

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Module is capsule's module path, which identifies a checkout's go.mod.
const Module = "github.com/capsule-vm/capsule"

// Where the images are looked for.
const (
	EnvKernel = "CAPSULE_KERNEL"
	EnvInitrd = "CAPSULE_INITRD"

	// ShareDir is the images' directory relative to the installation
	// prefix, and KernelFile and InitrdFile their names there.
	ShareDir   = "share/capsule"
	KernelFile = "vmlinux"
	InitrdFile = "agent.cpio.gz"

	// CheckoutDir is the images' directory relative to a checkout's root,
	// and CheckoutKernelFile and CheckoutInitrdFile their names there (as
	// internal/images writes them).
	CheckoutDir        = "testdata/images"
	CheckoutKernelFile = "default.vmlinux"
	CheckoutInitrdFile = "agent.cpio.gz"
)

// Sources, as Images reports them.
const (
	FromFlag     = "flag"
	FromEnv      = "environment"
	FromInstall  = "installation"
	FromCheckout = "checkout"
)

// Options are the inputs of Find. The zero value looks where capsule run
// without --kernel and --initrd does.
type Options struct {
	// Kernel and Initrd are the command line's --kernel and --initrd; an
	// empty one was not given.
	Kernel, Initrd string
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
	// Executable is the capsule executable; empty means os.Executable().
	Executable string
	// WorkDir is where a checkout is looked for after the executable's
	// directory; empty means the working directory.
	WorkDir string
}

// Images are the kernel and initramfs found, and where each came from
// (FromFlag, FromEnv, FromInstall or FromCheckout).
type Images struct {
	Kernel, Initrd         string
	KernelFrom, InitrdFrom string
}

// image is what Find looks for, once for the kernel and once for the
// initramfs.
type image struct {
	what         string // for errors
	flag, env    string // the flag's name and the environment variable
	given        string // the flag's value
	file         string // name under ShareDir
	checkoutFile string // name under CheckoutDir
}

// Find returns the kernel and initramfs to boot, looked for as the package
// documentation says. The error is one line.
func Find(o Options) (Images, error) {
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	dirs := searchDirs(o)
	kernel, kfrom, err := find(image{"guest kernel", "--kernel", EnvKernel, o.Kernel, KernelFile, CheckoutKernelFile}, o.Getenv, dirs)
	if err != nil {
		return Images{}, err
	}
	initrd, ifrom, err := find(image{"guest initramfs", "--initrd", EnvInitrd, o.Initrd, InitrdFile, CheckoutInitrdFile}, o.Getenv, dirs)
	if err != nil {
		return Images{}, err
	}
	return Images{Kernel: kernel, Initrd: initrd, KernelFrom: kfrom, InitrdFrom: ifrom}, nil
}

// dirs are the directories Find looks in after the flag and the
// environment.
type dirs struct {
	share     string   // <prefix>/share/capsule, or "" without an executable
	checkouts []string // <root>/testdata/images of each checkout found
	searched  []string // where checkouts were looked for
}

func searchDirs(o Options) dirs {
	var d dirs
	exe := o.Executable
	if exe == "" {
		exe, _ = os.Executable()
	}
	var starts []string
	if exe != "" {
		if r, err := filepath.EvalSymlinks(exe); err == nil {
			exe = r
		}
		if abs, err := filepath.Abs(exe); err == nil {
			exe = abs
		}
		bin := filepath.Dir(exe)
		d.share = filepath.Join(filepath.Dir(bin), filepath.FromSlash(ShareDir))
		starts = append(starts, bin)
	}
	wd := o.WorkDir
	if wd == "" {
		wd, _ = os.Getwd()
	}
	if wd != "" {
		if abs, err := filepath.Abs(wd); err == nil {
			starts = append(starts, abs)
		}
	}
	for _, s := range starts {
		d.searched = append(d.searched, s)
		if root, ok := ModuleRoot(s); ok {
			c := filepath.Join(root, filepath.FromSlash(CheckoutDir))
			if len(d.checkouts) == 0 || d.checkouts[0] != c {
				d.checkouts = append(d.checkouts, c)
			}
		}
	}
	return d
}

func find(img image, getenv func(string) string, d dirs) (path, from string, err error) {
	if img.given != "" {
		return img.given, FromFlag, nil
	}
	if p := getenv(img.env); p != "" {
		if err := isFile(p); err != nil {
			return "", "", fmt.Errorf("$%s: %w", img.env, err)
		}
		return p, FromEnv, nil
	}
	var looked []string
	if d.share != "" {
		p := filepath.Join(d.share, img.file)
		if isFile(p) == nil {
			return p, FromInstall, nil
		}
		looked = append(looked, p)
	}
	for _, c := range d.checkouts {
		p := filepath.Join(c, img.checkoutFile)
		if isFile(p) == nil {
			return p, FromCheckout, nil
		}
		looked = append(looked, p)
	}
	where := "looked at " + strings.Join(looked, ", ")
	if len(looked) == 0 {
		where = "no capsule executable to look beside"
	}
	if len(d.checkouts) == 0 {
		where += fmt.Sprintf(" and found no checkout of %s above %s", Module, strings.Join(d.searched, " or "))
	}
	return "", "", fmt.Errorf("no %s: none given with %s or $%s; %s (make install puts one in %s, make images in %s)",
		img.what, img.flag, img.env, where, ShareDir, CheckoutDir)
}

// isFile fails unless path is a regular file (or a link to one).
func isFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return &fs.PathError{Op: "open", Path: path, Err: errors.New("not a regular file")}
	}
	return nil
}

// ModuleRoot walks up from dir to the directory whose go.mod declares
// Module, and reports false when there is none.
func ModuleRoot(dir string) (string, bool) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", false
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			for _, line := range strings.Split(string(data), "\n") {
				f := strings.Fields(line)
				if len(f) == 2 && f[0] == "module" && strings.Trim(f[1], `"`) == Module {
					return dir, true
				}
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}
