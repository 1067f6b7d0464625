package vmm

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// exitCounts counts one vCPU's exits to capsule: port I/O by port, MMIO
// by 4 KiB page, and the others by kind. Only its vCPU's thread writes it
// while the VM runs.
type exitCounts struct {
	io    map[uint16]uint64
	mmio  map[uint64]uint64
	other map[string]uint64
}

func newExitCounts() *exitCounts {
	return &exitCounts{io: map[uint16]uint64{}, mmio: map[uint64]uint64{}, other: map[string]uint64{}}
}

// ExitStats are the exits of every vCPU to capsule during Run: where a
// guest's time outside guest mode went (each is a return from KVM_RUN to
// capsule's vCPU thread; exits KVM handles itself are not counted).
type ExitStats struct {
	IO    map[uint16]uint64 // by port
	MMIO  map[uint64]uint64 // by 4 KiB page
	Other map[string]uint64 // by kind: "interrupted", "shutdown", ...
}

// Total is the number of exits.
func (s ExitStats) Total() uint64 {
	var n uint64
	for _, v := range s.IO {
		n += v
	}
	for _, v := range s.MMIO {
		n += v
	}
	for _, v := range s.Other {
		n += v
	}
	return n
}

// String is a one-line summary: the total, then the busiest ports and
// pages and the other kinds, most first.
func (s ExitStats) String() string {
	type item struct {
		what string
		n    uint64
	}
	var items []item
	for p, n := range s.IO {
		items = append(items, item{fmt.Sprintf("port %#x", p), n})
	}
	for a, n := range s.MMIO {
		items = append(items, item{fmt.Sprintf("mmio %#x", a), n})
	}
	for k, n := range s.Other {
		items = append(items, item{k, n})
	}
	slices.SortFunc(items, func(a, b item) int {
		if c := cmp.Compare(b.n, a.n); c != 0 {
			return c
		}
		return strings.Compare(a.what, b.what)
	})
	var b strings.Builder
	fmt.Fprintf(&b, "%d exits", s.Total())
	for i, it := range items {
		if i == 8 {
			fmt.Fprintf(&b, ", %d more kinds", len(items)-i)
			break
		}
		fmt.Fprintf(&b, ", %s %d", it.what, it.n)
	}
	return b.String()
}

// ExitStats sums the vCPUs' exits. Call it after Run.
func (v *VM) ExitStats() ExitStats {
	s := ExitStats{IO: map[uint16]uint64{}, MMIO: map[uint64]uint64{}, Other: map[string]uint64{}}
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, c := range v.exits {
		for k, n := range c.io {
			s.IO[k] += n
		}
		for k, n := range c.mmio {
			s.MMIO[k] += n
		}
		for k, n := range c.other {
			s.Other[k] += n
		}
	}
	return s
}
