package ocirt

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/capsule-vm/capsule/agent"
	"github.com/capsule-vm/capsule/sandbox"
)

// writeBundle makes a bundle with a root directory (rootfs, with an
// /etc/passwd) and config.json from spec.
func writeBundle(t *testing.T, spec *specs.Spec) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "rootfs/etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "rootfs/etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"), 0o644)
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func minimalSpec() *specs.Spec {
	return &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: "rootfs"},
		Process: &specs.Process{Args: []string{"sh"}, Cwd: "/"},
	}
}

func TestLoadBundleRefusesGarbage(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T) string
		want  string
	}{
		{"no config.json", func(t *testing.T) string { return t.TempDir() }, "no config.json"},
		{"invalid JSON", func(t *testing.T) string {
			d := writeBundle(t, minimalSpec())
			os.WriteFile(filepath.Join(d, "config.json"), []byte("{\"process\": "), 0o644)
			return d
		}, "config.json is not valid"},
		{"wrong types", func(t *testing.T) string {
			d := writeBundle(t, minimalSpec())
			os.WriteFile(filepath.Join(d, "config.json"), []byte(`{"process": {"args": "sh"}}`), 0o644)
			return d
		}, "config.json is not valid"},
		{"no root", func(t *testing.T) string {
			s := minimalSpec()
			s.Root = nil
			return writeBundle(t, s)
		}, "no root.path"},
		{"missing root", func(t *testing.T) string {
			s := minimalSpec()
			s.Root.Path = "nosuch"
			return writeBundle(t, s)
		}, "nosuch: no such file or directory"},
		{"root is a file", func(t *testing.T) string {
			s := minimalSpec()
			s.Root.Path = "config.json"
			return writeBundle(t, s)
		}, "is not a directory"},
		{"no process", func(t *testing.T) string {
			s := minimalSpec()
			s.Process = nil
			return writeBundle(t, s)
		}, "no process.args"},
		{"empty args", func(t *testing.T) string {
			s := minimalSpec()
			s.Process.Args = nil
			return writeBundle(t, s)
		}, "no process.args"},
		{"relative cwd", func(t *testing.T) string {
			s := minimalSpec()
			s.Process.Cwd = "tmp"
			return writeBundle(t, s)
		}, "is not absolute"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadBundle(tc.setup(t))
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %v; want one line with %q", err, tc.want)
			}
		})
	}
}

func TestBundleMapsOntoTheVM(t *testing.T) {
	vol, file := t.TempDir(), filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(file, nil, 0o644)
	quota, period, limit := int64(250000), uint64(100000), int64(512<<20)
	s := minimalSpec()
	s.Root.Readonly = true
	s.Hostname = "box"
	s.Mounts = []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs"},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts"},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue"},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup"},
		{Destination: "/data", Type: "bind", Source: vol, Options: []string{"rbind", "ro"}},
		{Destination: "/rw/", Source: vol, Options: []string{"bind", "rw"}},
		{Destination: "/etc/resolv.conf", Type: "bind", Source: file, Options: []string{"bind"}},
		{Destination: "/run", Type: "tmpfs", Source: "tmpfs"},
		{Destination: "/dev/shm", Type: "bind", Source: vol, Options: []string{"rbind"}},
	}
	s.Linux = &specs.Linux{Resources: &specs.LinuxResources{
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
		Memory: &specs.LinuxMemory{Limit: &limit},
	}}
	b, err := LoadBundle(writeBundle(t, s))
	if err != nil {
		t.Fatal(err)
	}
	c, err := b.VM()
	if err != nil {
		t.Fatal(err)
	}
	wantVols := []sandbox.Volume{{HostDir: vol, Path: "/data", ReadOnly: true}, {HostDir: vol, Path: "/rw"}}
	if c.Root != b.RootFS || !c.RootReadOnly || c.Hostname != "box" || c.CPUs != 3 || c.MemoryMiB != 512 ||
		!reflect.DeepEqual(c.Volumes, wantVols) {
		t.Fatalf("VM config %+v", c)
	}
	if len(c.Skipped) != 3 || !strings.Contains(c.Skipped[0], "/etc/resolv.conf") || !strings.Contains(c.Skipped[1], "tmpfs mount at /run") ||
		!strings.Contains(c.Skipped[2], "at /dev/shm: the guest has its own") {
		t.Fatalf("skipped %q; want the file bind, the tmpfs and the bind over /dev/shm", c.Skipped)
	}

	// A tiny memory limit gets the minimum; none gets the defaults.
	small := int64(8 << 20)
	s.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &small}}
	s.Mounts, s.Hostname = nil, ""
	b, _ = LoadBundle(writeBundle(t, s))
	if c, _ := b.VM(); c.MemoryMiB != MinMemoryMiB || c.CPUs != 1 || c.Hostname != "capsule" {
		t.Fatalf("small limit: %+v", c)
	}
	s.Linux = nil
	b, _ = LoadBundle(writeBundle(t, s))
	if c, _ := b.VM(); c.MemoryMiB != DefaultMemoryMiB || c.CPUs != 1 {
		t.Fatalf("no resources: %+v", c)
	}

	// A bind mount of something missing is an error.
	s.Mounts = []specs.Mount{{Destination: "/x", Type: "bind", Source: "/nonexistent"}}
	b, _ = LoadBundle(writeBundle(t, s))
	if _, err := b.VM(); err == nil || !strings.Contains(err.Error(), "/nonexistent") {
		t.Fatalf("missing bind source: %v", err)
	}
}

func TestBundleMapsTheProcess(t *testing.T) {
	s := minimalSpec()
	s.Process = &specs.Process{
		Args: []string{"sh", "-c", "id"}, Env: []string{"PATH=/bin", "A=b"}, Cwd: "/tmp",
		User:    specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{50}},
		Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 100, Hard: 200}},
	}
	b, err := LoadBundle(writeBundle(t, s))
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.Process("init")
	if err != nil {
		t.Fatal(err)
	}
	want := agent.ProcessSpec{ID: "init", Args: s.Process.Args, Env: []string{"PATH=/bin", "A=b", "HOME=/home/app"}, Cwd: "/tmp",
		UID: 1000, GID: 1000, Groups: []uint32{50}, Rlimits: []agent.Rlimit{{Resource: "RLIMIT_NOFILE", Soft: 100, Hard: 200}}}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("process\n%+v\nwant\n%+v", p, want)
	}
	// HOME given is kept; an unknown uid gets /; no cwd is /.
	s.Process = &specs.Process{Args: []string{"true"}, Env: []string{"HOME=/x"}, User: specs.User{UID: 7}}
	b, _ = LoadBundle(writeBundle(t, s))
	if p, _ := b.Process("init"); !reflect.DeepEqual(p.Env, []string{"HOME=/x"}) || p.Cwd != "/" {
		t.Fatalf("env %q cwd %q", p.Env, p.Cwd)
	}
	s.Process.Env = nil
	b, _ = LoadBundle(writeBundle(t, s))
	if p, _ := b.Process("init"); !reflect.DeepEqual(p.Env, []string{"HOME=/"}) {
		t.Fatalf("unknown uid: env %q", p.Env)
	}
	s.Process.Terminal = true
	b, _ = LoadBundle(writeBundle(t, s))
	if _, err := b.Process("init"); err == nil || !strings.Contains(err.Error(), "terminal") {
		t.Fatalf("terminal: %v", err)
	}
}
