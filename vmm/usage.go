package vmm

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// Usage is the VMM's memory use.
type Usage struct {
	RSS           uint64 // resident set of the whole process
	GuestResident uint64 // of which guest RAM
}

// Overhead is the memory the VMM itself uses: RSS less resident guest RAM.
func (u Usage) Overhead() uint64 {
	if u.GuestResident > u.RSS {
		return 0
	}
	return u.RSS - u.GuestResident
}

// MemoryUsage measures the process's RSS and the resident part of guest
// RAM. Call it before Close.
func (v *VM) MemoryUsage() (Usage, error) {
	var u Usage
	if v.mem == nil {
		return u, errors.New("vmm: VM closed")
	}
	g, err := v.mem.Resident()
	if err != nil {
		return u, err
	}
	u.GuestResident = g
	if v.status == nil {
		return u, errors.New("vmm: /proc/self/status was not open")
	}
	// Read through the descriptor New opened: a sandboxed VMM may no
	// longer open files.
	buf := make([]byte, 8192)
	n, err := v.status.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return u, fmt.Errorf("read /proc/self/status: %w", err)
	}
	b := buf[:n]
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb uint64
			if _, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), &kb); err != nil {
				return u, fmt.Errorf("parse VmRSS %q: %w", rest, err)
			}
			u.RSS = kb << 10
			return u, nil
		}
	}
	return u, errors.New("no VmRSS in /proc/self/status")
}
