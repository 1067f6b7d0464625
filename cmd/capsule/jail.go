package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/capsule-vm/capsule/jail"
	"github.com/capsule-vm/capsule/vmm"
)

// jailFlags are capsule run's --jail flags.
type jailFlags struct {
	dir, id, user string
	cpus          float64
	memoryMiB     int
	child         bool // this process is the jailed VMM (hidden flag)
}

func (j *jailFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&j.dir, "jail", "", "run the VMM jailed, as Firecracker's jailer does: in new mount, PID, IPC, UTS\n"+
		"(and, without --net, network) namespaces, with `DIR`/ID/root as its root holding only\n"+
		"the VM's files (kernel, initrd, disks, /dev/kvm, /dev/net/tun), as --jail-user with no\n"+
		"capabilities once the VM is set up, in a cgroup when --jail-cpus or --jail-memory\n"+
		"is set. DIR must be owned by root and writable by nobody else. The vsock socket is\n"+
		"created in the jail's root under its base name. Needs root")
	fs.StringVar(&j.id, "jail-id", "", "the jail's name (default capsule-PID)")
	fs.StringVar(&j.user, "jail-user", "65534:65534", "the user and group the jailed VMM runs as, `UID[:GID]`")
	fs.Float64Var(&j.cpus, "jail-cpus", 0, "limit the jailed VMM to this many CPUs of time (cgroup v2 cpu.max)")
	fs.IntVar(&j.memoryMiB, "jail-memory", 0, "limit the jailed VMM's memory, guest RAM included, to this many `MiB` (cgroup v2 memory.max)")
	fs.BoolVar(&j.child, "jail-child", false, "")
	fs.MarkHidden("jail-child")
}

// set reports whether a jail was asked for.
func (j *jailFlags) set() bool { return j.dir != "" }

// spec returns the jail for cfg and the configuration as the jailed VMM
// sees it, with every path inside the jail.
func (j *jailFlags) spec(cfg vmm.Config) (jail.Spec, vmm.Config, error) {
	uid, gid, err := jail.ParseUser(j.user)
	if err != nil {
		return jail.Spec{}, cfg, usageErrorf("--jail-user %w", err)
	}
	s := jail.Spec{Dir: j.dir, ID: j.id, UID: uid, GID: gid, CPUs: j.cpus, MemoryMiB: j.memoryMiB}
	bind := func(host, inside string, write bool) (string, error) {
		abs, err := filepath.Abs(host)
		if err != nil {
			return "", err
		}
		s.Binds = append(s.Binds, jail.Bind{Host: abs, Jail: inside, Write: write})
		return inside, nil
	}
	in := cfg
	if in.Kernel, err = bind(cfg.Kernel, "/kernel", false); err != nil {
		return s, cfg, err
	}
	if cfg.Initrd != "" {
		if in.Initrd, err = bind(cfg.Initrd, "/initrd", false); err != nil {
			return s, cfg, err
		}
	}
	bind(vmm.KVMDevice, vmm.KVMDevice, true)
	in.Devices = nil
	tun, resolv := false, false
	for i, d := range cfg.Devices {
		switch d := d.(type) {
		case vmm.Disk:
			p, err := bind(d.Path, fmt.Sprintf("/disks/%d/%s", i, filepath.Base(d.Path)), !d.ReadOnly)
			if err != nil {
				return s, cfg, err
			}
			d.Path = p
			in.Devices = append(in.Devices, d)
		case vmm.Vsock:
			d.Path = "/" + filepath.Base(d.Path)
			in.Devices = append(in.Devices, d)
		case vmm.Share:
			// The jailed VMM has no /proc once sealed and drops to a user
			// that cannot read its own /proc/self/fd, which hostfs needs.
			return s, cfg, usageErrorf("--share does not work with --jail yet")
		case vmm.Net:
			s.HostNetwork = true
			if d.User && !resolv {
				// The user network forwards DNS to the host's resolver.
				if _, err := os.Stat(resolvConf); err == nil {
					resolv = true
					bind(resolvConf, resolvConf, false)
				}
			}
			if !d.User && !tun {
				tun = true
				bind("/dev/net/tun", "/dev/net/tun", true)
			}
			in.Devices = append(in.Devices, d)
		default:
			in.Devices = append(in.Devices, d)
		}
	}
	return s, in, nil
}

// shareCapabilities are the capabilities a VMM run as root keeps for
// cfg's shared directories: with them what the guest creates gets the
// guest's owner, and the guest's root reaches every file of the
// directory, as root does.
func shareCapabilities(cfg vmm.Config) []int {
	for _, d := range cfg.Devices {
		if _, ok := d.(vmm.Share); ok {
			return []int{unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_DAC_READ_SEARCH, unix.CAP_FOWNER}
		}
	}
	return nil
}

// resolvConf names the host's DNS resolvers.
const resolvConf = "/etc/resolv.conf"

// parentFD is the descriptor of a jailed VMM that its parent holds the
// other end of: it reads end of file when the parent is gone.
const parentFD = 3

// watchParent calls gone when the jail's parent process ends (its end of
// the pipe at parentFD closes), so that a jailed VMM whose parent was
// killed stops cleanly instead of running on unattended.
func watchParent(gone func()) {
	f := os.NewFile(parentFD, "parent")
	if f == nil {
		return
	}
	go func() {
		var b [1]byte
		for {
			if _, err := f.Read(b[:]); err != nil {
				gone()
				return
			}
		}
	}()
}

// runJailed starts this program again in the jail, with the same
// arguments and --jail-child, waits for it, and removes the jail. Signals
// that would stop capsule are passed on to it.
func runJailed(j *jailFlags, cfg vmm.Config, args []string, stderr io.Writer) error {
	if j.id == "" {
		j.id = "capsule-" + strconv.Itoa(os.Getpid())
		args = append(args, "--jail-id", j.id)
	}
	s, _, err := j.spec(cfg)
	if err != nil {
		return err
	}
	// The jail's own flags go first, before the user's.
	cmd := exec.Command("/proc/self/exe", append([]string{"run", "--jail-child"}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// The child learns of this process's end by the pipe, which works
	// whatever credentials it has by then (a parent-death signal does not
	// survive its change of user).
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pw.Close()
	cmd.ExtraFiles = []*os.File{pr} // parentFD
	// The parent-death signal is tied to the thread that forks.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	jailed, err := jail.Start(s, cmd)
	pr.Close()
	if err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case sig := <-sigs:
				cmd.Process.Signal(sig)
			case <-done:
				return
			}
		}
	}()
	werr := cmd.Wait()
	close(done)
	if err := jailed.Cleanup(); err != nil {
		fmt.Fprintf(stderr, "capsule: %v\n", err)
	}
	var ee *exec.ExitError
	switch {
	case werr == nil:
		return nil
	case errors.As(werr, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return exitError{128 + int(ws.Signal())}
		}
		return exitError{ee.ExitCode()}
	}
	return werr
}

// seccompRules are what the seccomp filter must allow for cfg's devices.
func seccompRules(cfg vmm.Config) jail.Rules {
	r := jail.Rules{Ioctls: append(vmm.RunIoctls(), jail.TerminalIoctls...)}
	inet, tap := false, false
	for _, d := range cfg.Devices {
		switch d := d.(type) {
		case vmm.Vsock:
			r.SocketFamilies = append(r.SocketFamilies, unix.AF_UNIX)
			r.Unlink = true
		case vmm.Share:
			r.Files = true
		case vmm.Net:
			inet = inet || d.User
			tap = tap || !d.User
		}
	}
	if inet {
		r.SocketFamilies = append(r.SocketFamilies, unix.AF_INET, unix.AF_INET6)
	}
	if tap {
		r.Ioctls = append(r.Ioctls, jail.TAPIoctls...)
	}
	return r
}
