package rig

import (
	"debug/elf"
	"errors"
	"fmt"
	"os/exec"
)

// errDynamic marks a dynamically linked binary.
var errDynamic = errors.New("dynamically linked")

// lookTool finds a host program, with the install hint in the error.
func lookTool(name, hint string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found: %s", name, hint)
	}
	return p, nil
}

// checkStatic fails unless path is a static x86-64 ELF executable: the guest
// has no dynamic loader or C library.
func checkStatic(path, what string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, path, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("%s %s is built for %v, the guest runs x86-64", what, path, f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s %s is %w (it has an ELF interpreter); the rig runs only static binaries", what, path, errDynamic)
		}
	}
	return nil
}

// StaticBusybox returns the path of a static busybox on the host, as
// installed by Debian's busybox-static.
func StaticBusybox() (string, error) { return staticBusybox() }

// staticBusybox returns the path of a static busybox on the host.
func staticBusybox() (string, error) {
	var lastErr error
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		err := checkStatic(p, "busybox")
		if err == nil {
			return p, nil
		}
		lastErr = err
	}
	if p, err := exec.LookPath("busybox"); err == nil {
		if err := checkStatic(p, "busybox"); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no static busybox found (%v): apt-get install busybox-static", lastErr)
}
