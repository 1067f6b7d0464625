package rig

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults for the Config fields that are left zero.
const (
	DefaultTimeout = 15 * time.Minute
	DefaultMem     = "2G"
	// DefaultCPUs is 1: with two vCPUs, TCG's nested SVM occasionally
	// freezes the whole guest when one vCPU kicks another out of a running
	// L2 guest (1 in about 25 stops of a spinning capsule guest, never in
	// 150 with one vCPU).
	DefaultCPUs = 1
)

// Environment variables read by ConfigFromEnv.
const (
	EnvCache   = "CAPSULE_RIG_CACHE"
	EnvTimeout = "CAPSULE_RIG_TIMEOUT"
	EnvMem     = "CAPSULE_RIG_MEM"
	EnvCPUs    = "CAPSULE_RIG_CPUS"
	EnvVerbose = "CAPSULE_RIG_VERBOSE"
	EnvKernel  = "CAPSULE_RIG_KERNEL"
	EnvQEMU    = "CAPSULE_RIG_QEMU"
	// EnvHostRoot selects Config.HostRoot.
	EnvHostRoot = "CAPSULE_RIG_HOSTROOT"
	// EnvInRig is set to 1 in the test's environment inside the guest.
	EnvInRig = "CAPSULE_RIG"
)

// passedGoVars are Go runtime variables passed on to the test when set.
var passedGoVars = []string{"GODEBUG", "GOTRACEBACK", "GOGC", "GOMEMLIMIT", "GOMAXPROCS"}

// Config describes one run of a test binary in the guest.
type Config struct {
	// Binary is the static test binary to run; Args are its arguments.
	Binary string
	Args   []string
	// Dir is the working directory of the test, both on the host (to find
	// the module's files) and in the guest. Empty means the current one.
	Dir string
	// Env is the test's extra environment, as KEY=VALUE. CAPSULE_RIG=1 is
	// always added.
	Env []string

	// CacheDir holds the kernel and the base image. Empty means
	// DefaultCacheDir().
	CacheDir string
	// Kernel pins the Debian kernel package. Empty means resolve it with
	// apt-cache.
	Kernel string
	// Timeout bounds the whole run, cache building included.
	Timeout time.Duration
	// Mem is the guest memory as for qemu -m; CPUs is the vCPU count.
	Mem  string
	CPUs int
	// Verbose shows the kernel log, QEMU's warnings and timings.
	Verbose bool
	// QEMU adds the host's qemu-system-x86_64 to the guest, at /usr/bin
	// with its shared libraries and firmware, so that the test can start
	// its own KVM guests with QEMU.
	QEMU bool
	// HostRoot runs the test in the host's root filesystem, shared
	// read-only into the guest with virtio-fs under a tmpfs overlay, so
	// that it can run the host's programs (see the package doc). It needs
	// root on the host and QEMU's virtiofsd.
	HostRoot bool

	// Stdout receives the test's output; Stderr the rig's messages.
	// Nil means os.Stdout and os.Stderr.
	Stdout io.Writer
	Stderr io.Writer
}

// DefaultCacheDir returns $XDG_CACHE_HOME/capsule/rig, or
// ~/.cache/capsule/rig.
func DefaultCacheDir() (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find cache directory (set %s): %w", EnvCache, err)
	}
	return filepath.Join(base, "capsule", "rig"), nil
}

// ConfigFromEnv builds a Config from environment entries (as os.Environ
// returns them): the CAPSULE_RIG_* options, and the test environment made of
// all CAPSULE_* entries and the Go runtime variables.
func ConfigFromEnv(environ []string) (Config, error) {
	get := func(key string) string {
		v, _ := lookupEnv(environ, key)
		return v
	}
	cfg := Config{
		CacheDir: get(EnvCache),
		Kernel:   get(EnvKernel),
		Mem:      get(EnvMem),
		Verbose:  isTrue(get(EnvVerbose)),
		QEMU:     isTrue(get(EnvQEMU)),
		HostRoot: isTrue(get(EnvHostRoot)),
		Env:      testEnv(environ),
	}
	if v := get(EnvTimeout); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return Config{}, fmt.Errorf("%s=%q: want a positive duration such as 15m", EnvTimeout, v)
		}
		cfg.Timeout = d
	}
	if v := get(EnvCPUs); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return Config{}, fmt.Errorf("%s=%q: want a positive integer", EnvCPUs, v)
		}
		cfg.CPUs = n
	}
	return cfg, nil
}

var memPattern = regexp.MustCompile(`^[1-9][0-9]*[MGmg]?$`)

// withDefaults fills the zero fields and checks the others.
func (c Config) withDefaults() (Config, error) {
	var err error
	if c.Binary != "" {
		if c.Binary, err = filepath.Abs(c.Binary); err != nil {
			return c, fmt.Errorf("test binary path: %w", err)
		}
	}
	if c.Dir == "" {
		if c.Dir, err = os.Getwd(); err != nil {
			return c, fmt.Errorf("working directory: %w", err)
		}
	}
	if c.Dir, err = filepath.Abs(c.Dir); err != nil {
		return c, fmt.Errorf("working directory: %w", err)
	}
	if c.CacheDir == "" {
		if c.CacheDir, err = DefaultCacheDir(); err != nil {
			return c, err
		}
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Mem == "" {
		c.Mem = DefaultMem
	}
	if !memPattern.MatchString(c.Mem) {
		return c, fmt.Errorf("guest memory %q: want a size such as 2G or 2048M", c.Mem)
	}
	if c.CPUs <= 0 {
		c.CPUs = DefaultCPUs
	}
	if c.Stdout == nil {
		c.Stdout = os.Stdout
	}
	if c.Stderr == nil {
		c.Stderr = os.Stderr
	}
	return c, nil
}

// testEnv picks the entries of environ passed on to the test.
func testEnv(environ []string) []string {
	var env []string
	for _, kv := range environ {
		key, _, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if strings.HasPrefix(key, "CAPSULE_") || slices.Contains(passedGoVars, key) {
			env = append(env, kv)
		}
	}
	return env
}

func lookupEnv(environ []string, key string) (string, bool) {
	for i := len(environ) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(environ[i], "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

func isTrue(v string) bool {
	b, err := strconv.ParseBool(v)
	return err == nil && b
}
