package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"golang.org/x/sys/unix"

	"github.com/capsule-vm/capsule/ocirt"
)

// ociStart is capsule oci start: the monitor starts the process.
func ociStart(g *ociGlobals, args []string, stdout, stderr io.Writer) error {
	fs := ociFlags("start", stdout)
	if err := parseOCI(fs, args, 1, 1); err != nil {
		return err
	}
	c, st, err := g.containerState(fs)
	if err != nil {
		return err
	}
	switch st.Status {
	case specs.StateCreated:
		if err := c.Call(ocirt.Request{Op: ocirt.OpStart}); err != nil {
			return err
		}
		// poststart hooks: a failure is a warning, as runtime-spec says.
		if b, err := ocirt.LoadBundle(st.Bundle); err == nil {
			if err := ocirt.RunHooks(ocirt.HookPoststart, b.Hooks(ocirt.HookPoststart), st, specs.StateRunning); err != nil {
				g.warn(stderr, fmt.Errorf("container %s: %w", c.ID, err))
			}
		}
		return nil
	case specs.StateRunning:
		return errors.New("cannot start an already running container")
	case specs.StateStopped:
		return errors.New("cannot start a container that has stopped")
	}
	return fmt.Errorf("cannot start a container in the %s state", st.Status)
}

// ociState is capsule oci state: runc's JSON.
func ociState(g *ociGlobals, args []string, stdout, stderr io.Writer) error {
	fs := ociFlags("state", stdout)
	if err := parseOCI(fs, args, 1, 1); err != nil {
		return err
	}
	_, st, err := g.containerState(fs)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(st.Public(), "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", b)
	return err
}

// parseSignal takes a signal as runc does: a number, or a name with or
// without SIG, in any case.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 || n > 64 {
			return 0, fmt.Errorf("unknown signal %q", s)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig := unix.SignalNum(name)
	if sig == 0 {
		return 0, fmt.Errorf("unknown signal %q", s)
	}
	return sig, nil
}

// ociKill is capsule oci kill: the monitor delivers the signal into the
// guest.
func ociKill(g *ociGlobals, args []string, stdout, stderr io.Writer) error {
	fs := ociFlags("kill", stdout)
	all := fs.BoolP("all", "a", false, "signal every process of the container (the container's process: the rest end with the VM)")
	if err := parseOCI(fs, args, 1, 2); err != nil {
		return err
	}
	c, err := g.container(fs)
	if err != nil {
		return err
	}
	sig := syscall.SIGTERM
	if fs.NArg() == 2 {
		if sig, err = parseSignal(fs.Arg(1)); err != nil {
			return err
		}
	}
	st, err := c.State()
	if err != nil {
		return err
	}
	if st.Status == specs.StateStopped {
		return ocirt.ErrNotRunning
	}
	return c.Call(ocirt.Request{Op: ocirt.OpKill, Signal: int(sig), All: *all})
}

// ociDelete is capsule oci delete: a stopped container's state goes; a
// created one is ended first (as runc does); a running one only with
// --force. The monitor is SIGKILLed, which ends its VM with it.
func ociDelete(g *ociGlobals, args []string, stdout, stderr io.Writer) error {
	fs := ociFlags("delete", stdout)
	force := fs.BoolP("force", "f", false, "delete a running container too (its VM is killed)")
	if err := parseOCI(fs, args, 1, 1); err != nil {
		return err
	}
	c, err := g.container(fs)
	if err != nil {
		return err
	}
	st, err := c.State()
	switch {
	case errors.Is(err, ocirt.ErrNotExist) && !c.Exists():
		if *force {
			return nil
		}
		return err
	case errors.Is(err, ocirt.ErrNotExist):
		// A create killed before it wrote the state: nothing runs.
		return c.Remove()
	case err != nil:
		return err
	}
	switch st.Status {
	case specs.StateStopped:
	case specs.StateRunning, specs.StateCreating:
		if !*force {
			return fmt.Errorf("cannot delete container %s that is not stopped: %s", c.ID, st.Status)
		}
		fallthrough
	default:
		if st.MonitorPid <= 0 { // create has not started it yet
			return fmt.Errorf("cannot delete container %s: it is being created", c.ID)
		}
		if err := syscall.Kill(st.MonitorPid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("container %s: killing its monitor (pid %d): %w", c.ID, st.MonitorPid, err)
		}
		if err := c.WaitMonitor(); err != nil {
			return err
		}
	}
	if err := c.Remove(); err != nil {
		return err
	}
	// poststop hooks, once the container is gone: a failure is a
	// warning; a bundle that is gone has none to run.
	if b, err := ocirt.LoadBundle(st.Bundle); err == nil {
		if err := ocirt.RunHooks(ocirt.HookPoststop, b.Hooks(ocirt.HookPoststop), st, specs.StateStopped); err != nil {
			g.warn(stderr, fmt.Errorf("container %s: %w", c.ID, err))
		}
	}
	return nil
}

// ociList is capsule oci list.
func ociList(g *ociGlobals, args []string, stdout, stderr io.Writer) error {
	fs := ociFlags("list", stdout)
	format := fs.StringP("format", "f", "table", "table or json")
	quiet := fs.BoolP("quiet", "q", false, "print the ids only")
	if err := parseOCI(fs, args, 0, 0); err != nil {
		return err
	}
	if *format != "table" && *format != "json" {
		return fmt.Errorf("list: --format %q: want table or json", *format)
	}
	entries, err := os.ReadDir(g.root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var states []any
	w := tabwriter.NewWriter(stdout, 12, 1, 3, ' ', 0)
	if !*quiet && *format == "table" {
		fmt.Fprint(w, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n")
	}
	for _, e := range entries {
		c, err := ocirt.Open(g.root, e.Name())
		if err != nil || !e.IsDir() {
			continue
		}
		st, err := c.State()
		if err != nil {
			continue
		}
		switch {
		case *quiet:
			fmt.Fprintln(stdout, st.ID)
		case *format == "json":
			states = append(states, st.Public())
		default:
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\n", st.ID, st.Pid, st.Status, st.Bundle, st.Created.Format(time.RFC3339Nano), st.Owner)
		}
	}
	if *format == "json" && !*quiet {
		if states == nil {
			states = []any{}
		}
		b, err := json.Marshal(states)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", b)
		return nil
	}
	return w.Flush()
}

// ociSpec is capsule oci spec: a default config.json in the bundle, never
// over one that exists.
func ociSpec(g *ociGlobals, args []string, stdout, stderr io.Writer) error {
	fs := ociFlags("spec", stdout)
	bundle := fs.StringP("bundle", "b", ".", "the bundle directory to write config.json in")
	fs.Bool("rootless", false, "accepted for runc's sake (the same spec)")
	if err := parseOCI(fs, args, 0, 0); err != nil {
		return err
	}
	b, err := json.MarshalIndent(defaultSpec(), "", "\t")
	if err != nil {
		return err
	}
	path := filepath.Join(*bundle, "config.json")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spec: bundle %s: no such directory", *bundle)
	}
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("file %s exists: remove it first", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// defaultSpec is the config.json that spec writes: sh in ./rootfs, read
// only, with the usual mounts and namespaces of a Linux container (the
// VM gives the container its own of everything anyway).
func defaultSpec() *specs.Spec {
	ro := []string{"nosuid", "noexec", "nodev", "ro"}
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args: []string{"sh"},
			Env:  []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"},
			Cwd:  "/",
			Rlimits: []specs.POSIXRlimit{
				{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024},
			},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: "rootfs", Readonly: true},
		Hostname: "capsule",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: ro},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: append([]string{"relatime"}, ro...)},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace}, {Type: specs.CgroupNamespace},
			},
			MaskedPaths:   []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}

// ociFeatures is capsule oci features: runtime-spec's features document.
func ociFeatures(g *ociGlobals, args []string, stdout, stderr io.Writer) error {
	fs := ociFlags("features", stdout)
	if err := parseOCI(fs, args, 0, 0); err != nil {
		return err
	}
	no := false
	f := features.Features{
		OCIVersionMin: "1.0.0",
		OCIVersionMax: specs.Version,
		// Hooks are not run yet; the mounts are shared directories.
		Hooks:        []string{},
		MountOptions: []string{"bind", "rbind", "ro", "rw"},
		Linux: &features.Linux{
			Namespaces: []string{"cgroup", "ipc", "mount", "network", "pid", "user", "uts"},
			Cgroup:     &features.Cgroup{V1: &no, V2: &no, Systemd: &no, SystemdUser: &no},
			Seccomp:    &features.Seccomp{Enabled: &no},
			Apparmor:   &features.Apparmor{Enabled: &no},
			Selinux:    &features.Selinux{Enabled: &no},
			IntelRdt:   &features.IntelRdt{Enabled: &no},
		},
		Annotations: map[string]string{
			"io.github.capsule-vm.capsule.vm":      "true",
			"io.github.capsule-vm.capsule.version": version,
		},
	}
	b, err := json.MarshalIndent(f, "", "    ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", b)
	return err
}

// ociPs is capsule oci ps: the host processes of the container, which is
// its monitor (the container's own processes live in the guest);
// --format json prints their pids as runc's does.
func ociPs(g *ociGlobals, args []string, stdout, stderr io.Writer) error {
	fs := ociFlags("ps", stdout)
	format := fs.StringP("format", "f", "table", "table or json")
	fs.SetInterspersed(false) // ps(1) options may follow the ID
	if err := parseOCI(fs, args, 1, -1); err != nil {
		return err
	}
	if *format != "table" && *format != "json" {
		return fmt.Errorf("ps: --format %q: want table or json", *format)
	}
	_, st, err := g.containerState(fs)
	if err != nil {
		return err
	}
	pids := []int{}
	if st.Status != specs.StateStopped {
		pids = append(pids, st.Pid)
	}
	if *format == "json" {
		b, err := json.Marshal(pids)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	w := tabwriter.NewWriter(stdout, 8, 1, 2, ' ', 0)
	fmt.Fprint(w, "PID\tCMD\n")
	for _, pid := range pids {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		fmt.Fprintf(w, "%d\t%s\n", pid, strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " ")))
	}
	return w.Flush()
}
