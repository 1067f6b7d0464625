package jail

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/capsule-vm/capsule/internal/patherr"
)

// cgroupParent is the cgroup, below the cgroup v2 root, that holds the
// jails' cgroups.
const cgroupParent = "capsule"

// cpuPeriod is the cpu.max period, in microseconds.
const cpuPeriod = 100000

// cgroup2Root finds where the cgroup v2 hierarchy is mounted.
func cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("cgroup: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		if i := slices.Index(fields, "-"); i >= 5 && i+1 < len(fields) && fields[i+1] == "cgroup2" {
			return fields[4], nil
		}
	}
	return "", errors.New("cgroup: no cgroup v2 hierarchy is mounted (limits need one, e.g. mount -t cgroup2 none /sys/fs/cgroup)")
}

// makeCgroup creates the jail's cgroup with its limits and returns its
// directory (also when it fails after creating it, for Cleanup).
func makeCgroup(s Spec) (string, error) {
	root, err := cgroup2Root()
	if err != nil {
		return "", err
	}
	var want []string
	if s.CPUs > 0 {
		want = append(want, "cpu")
	}
	if s.MemoryMiB > 0 {
		want = append(want, "memory")
	}
	have, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		return "", fmt.Errorf("cgroup %s: %w", root, patherr.Unwrap(err))
	}
	for _, c := range want {
		if !slices.Contains(strings.Fields(string(have)), c) {
			return "", fmt.Errorf("cgroup %s has no %s controller (it is bound to a cgroup v1 hierarchy, or disabled), so the jail cannot limit %s", root, c, c)
		}
	}
	parent := filepath.Join(root, cgroupParent)
	if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("cgroup %s: %w", parent, patherr.Unwrap(err))
	}
	// Controllers reach a cgroup through its parents' subtree_control.
	for _, dir := range []string{root, parent} {
		for _, c := range want {
			if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+c), 0); err != nil {
				return "", fmt.Errorf("cgroup %s: enable %s: %w", dir, c, patherr.Unwrap(err))
			}
		}
	}
	dir := filepath.Join(parent, s.ID)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("cgroup %s: %w", dir, patherr.Unwrap(err))
	}
	if s.CPUs > 0 {
		quota := int64(s.CPUs * cpuPeriod)
		if quota < 1000 {
			return dir, fmt.Errorf("jail CPU limit %g: at least 0.01 CPUs", s.CPUs)
		}
		if err := os.WriteFile(filepath.Join(dir, "cpu.max"), fmt.Appendf(nil, "%d %d", quota, cpuPeriod), 0); err != nil {
			return dir, fmt.Errorf("cgroup %s: cpu.max: %w", dir, patherr.Unwrap(err))
		}
	}
	if s.MemoryMiB > 0 {
		if err := os.WriteFile(filepath.Join(dir, "memory.max"), fmt.Appendf(nil, "%d", uint64(s.MemoryMiB)<<20), 0); err != nil {
			return dir, fmt.Errorf("cgroup %s: memory.max: %w", dir, patherr.Unwrap(err))
		}
		// No swap: the limit is the memory the VM may use.
		os.WriteFile(filepath.Join(dir, "memory.swap.max"), []byte("0"), 0)
	}
	return dir, nil
}
