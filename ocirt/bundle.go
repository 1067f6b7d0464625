package ocirt

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/capsule-vm/capsule/agent"
	"github.com/capsule-vm/capsule/ociimage"
	"github.com/capsule-vm/capsule/sandbox"
	"github.com/capsule-vm/capsule/vmm"
)

// Guest RAM bounds: a memory limit below MinMemoryMiB gets MinMemoryMiB
// (the kernel and the agent need about that much), none gets
// DefaultMemoryMiB.
const (
	MinMemoryMiB     = 64
	DefaultMemoryMiB = 256
)

// Bundle is a loaded OCI bundle.
type Bundle struct {
	Dir    string // absolute
	Spec   *specs.Spec
	RootFS string // root.path, absolute
}

// LoadBundle reads and checks dir/config.json: it parses, names a root
// directory that exists and a process with arguments. Each error is one
// line.
func LoadBundle(dir string) (*Bundle, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(abs, "config.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("bundle %s: no config.json", abs)
	}
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", abs, err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("bundle %s: config.json is not valid: %v", abs, err)
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return nil, fmt.Errorf("bundle %s: config.json has no root.path", abs)
	}
	if spec.Process == nil || len(spec.Process.Args) == 0 {
		return nil, fmt.Errorf("bundle %s: config.json has no process.args", abs)
	}
	if !filepath.IsAbs(spec.Process.Cwd) && spec.Process.Cwd != "" {
		return nil, fmt.Errorf("bundle %s: config.json: process.cwd %q is not absolute", abs, spec.Process.Cwd)
	}
	root := spec.Root.Path
	if !filepath.IsAbs(root) {
		root = filepath.Join(abs, root)
	}
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: root.path %s: %w", abs, root, underlying(err))
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("bundle %s: root.path %s is not a directory", abs, root)
	}
	return &Bundle{Dir: abs, Spec: &spec, RootFS: root}, nil
}

// underlying is a *fs.PathError's own error (the path is said already).
func underlying(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// VMConfig is what a bundle makes of a sandbox VM.
type VMConfig struct {
	Root         string
	RootReadOnly bool
	Volumes      []sandbox.Volume
	Hostname     string
	CPUs         int
	MemoryMiB    int
	// Skipped says, one line each, what of config.json the VM does not
	// give the container (mounts it cannot make yet): for the log.
	Skipped []string
}

// Mount types and destinations the guest agent provides itself: /proc,
// /sys, /dev (devtmpfs), /dev/pts, /dev/shm and /tmp.
var guestMounts = []string{"/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/tmp"}

// VM maps config.json onto a sandbox VM: root.path and root.readonly; bind
// mounts of directories as volumes (ro honoured); /proc, /sys, /dev and
// the like as the agent makes them; hostname; linux.resources' CPU quota
// and memory limit as vCPUs and guest RAM.
func (b *Bundle) VM() (VMConfig, error) {
	s := b.Spec
	c := VMConfig{Root: b.RootFS, RootReadOnly: s.Root.Readonly, Hostname: s.Hostname, CPUs: vmm.DefaultCPUs, MemoryMiB: DefaultMemoryMiB}
	if c.Hostname == "" {
		c.Hostname = "capsule"
	}
	for _, m := range s.Mounts {
		dest := filepath.Clean(m.Destination)
		if !filepath.IsAbs(m.Destination) {
			return VMConfig{}, fmt.Errorf("config.json: mount destination %q is not absolute", m.Destination)
		}
		bind := m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
		switch {
		case bind && slices.Contains(guestMounts, dest):
			// podman's /dev/shm, shared by the containers of a pod:
			// a VM has its own.
			c.Skipped = append(c.Skipped, fmt.Sprintf("bind mount of %s at %s: the guest has its own", m.Source, dest))
		case bind:
			src := m.Source
			if !filepath.IsAbs(src) {
				src = filepath.Join(b.Dir, src)
			}
			fi, err := os.Stat(src)
			if err != nil {
				return VMConfig{}, fmt.Errorf("config.json: bind mount of %s: %w", src, underlying(err))
			}
			if !fi.IsDir() {
				c.Skipped = append(c.Skipped, fmt.Sprintf("bind mount of the file %s at %s: only directories are shared yet", src, dest))
				continue
			}
			if dest == "/" {
				return VMConfig{}, fmt.Errorf("config.json: bind mount of %s over /", src)
			}
			c.Volumes = append(c.Volumes, sandbox.Volume{HostDir: src, Path: dest, ReadOnly: slices.Contains(m.Options, "ro")})
		case slices.Contains(guestMounts, dest) || strings.HasPrefix(dest, "/sys/") || strings.HasPrefix(dest, "/proc/"):
			// The guest's own (cgroup, mqueue, sysfs and procfs
			// submounts included): nothing to share.
		case m.Type == "mqueue" || m.Type == "cgroup" || m.Type == "cgroup2" || m.Type == "devpts":
		default:
			c.Skipped = append(c.Skipped, fmt.Sprintf("%s mount at %s: not made yet", m.Type, dest))
		}
	}
	if l := s.Linux; l != nil && l.Resources != nil {
		r := l.Resources
		if cpu := r.CPU; cpu != nil && cpu.Quota != nil && *cpu.Quota > 0 {
			period := uint64(100000)
			if cpu.Period != nil && *cpu.Period > 0 {
				period = *cpu.Period
			}
			n := (uint64(*cpu.Quota) + period - 1) / period
			c.CPUs = int(min(n, vmm.MaxCPUs))
		}
		if mem := r.Memory; mem != nil && mem.Limit != nil && *mem.Limit > 0 {
			mib := *mem.Limit >> 20
			c.MemoryMiB = int(max(MinMemoryMiB, min(mib, vmm.MaxMemoryMiB)))
		}
	}
	return c, nil
}

// Process maps config.json's process onto the agent's (see
// MapProcess); id names it for the agent.
func (b *Bundle) Process(id string) (agent.ProcessSpec, error) {
	return MapProcess(b.Spec.Process, b.RootFS, id)
}

// MapProcess maps a runtime-spec process (config.json's, or exec's
// --process) onto the agent's: arguments, the environment (HOME from
// rootfs's /etc/passwd when it has none, as runc does), cwd, uid, gid and
// additional gids, rlimits. A terminal is refused (not supported yet).
func MapProcess(p *specs.Process, rootfs, id string) (agent.ProcessSpec, error) {
	if p.Terminal {
		return agent.ProcessSpec{}, errors.New("process.terminal: a terminal (--console-socket) is not supported yet")
	}
	if len(p.Args) == 0 {
		return agent.ProcessSpec{}, errors.New("process.args is empty")
	}
	spec := agent.ProcessSpec{
		ID: id, Args: p.Args, Env: p.Env, Cwd: p.Cwd,
		UID: p.User.UID, GID: p.User.GID, Groups: p.User.AdditionalGids,
	}
	if spec.Cwd == "" {
		spec.Cwd = "/"
	}
	if !slices.ContainsFunc(spec.Env, func(kv string) bool { return strings.HasPrefix(kv, "HOME=") }) {
		home := "/"
		if u, err := ociimage.LookupUser(rootfs, fmt.Sprint(p.User.UID)); err == nil && u.Home != "" {
			home = u.Home
		}
		spec.Env = append(slices.Clip(spec.Env), "HOME="+home)
	}
	for _, r := range p.Rlimits {
		spec.Rlimits = append(spec.Rlimits, agent.Rlimit{Resource: r.Type, Soft: r.Soft, Hard: r.Hard})
	}
	return spec, nil
}
