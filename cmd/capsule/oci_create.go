package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/capsule-vm/capsule/internal/guestimage"
	"github.com/capsule-vm/capsule/jail"
	"github.com/capsule-vm/capsule/ocirt"
	"github.com/capsule-vm/capsule/sandbox"
	"github.com/capsule-vm/capsule/vmm"
)

// createTimeout bounds create's wait for its monitor: the boot's own
// bound, and some.
const createTimeout = sandbox.DefaultBootTimeout + 30*time.Second

// ociCreate is capsule oci create: it checks the bundle, makes the state
// directory and starts the container's monitor, which boots the VM; once
// the monitor says the agent is ready, it writes the monitor's pid to
// --pid-file and exits. Nothing is left behind when it fails.
func ociCreate(g *ociGlobals, args []string, stdout, stderr io.Writer) error {
	fs := ociFlags("create", stdout)
	bundle := fs.StringP("bundle", "b", ".", "the bundle directory (config.json and the root)")
	pidFile := fs.String("pid-file", "", "write the container's pid (its monitor's) to this file")
	consoleSocket := fs.String("console-socket", "", "for a process.terminal container (not supported yet)")
	fs.Bool("no-pivot", false, "accepted for runc's sake")
	fs.Bool("no-new-keyring", false, "accepted for runc's sake")
	fs.Int("preserve-fds", 0, "accepted for runc's sake: descriptors do not reach the guest")
	if err := parseOCI(fs, args, 1, 1); err != nil {
		return err
	}
	c, err := g.container(fs)
	if err != nil {
		return err
	}
	b, err := ocirt.LoadBundle(*bundle)
	if err != nil {
		return err
	}
	if _, err := b.VM(); err != nil {
		return err
	}
	if _, err := b.Process("init"); err != nil {
		return err
	}
	if err := ocirt.CheckHooks(b.Spec.Hooks); err != nil {
		return err
	}
	if *consoleSocket != "" {
		g.log.Warnf("container %s: --console-socket %s: ignored (process.terminal is false)", c.ID, *consoleSocket)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := c.Make(); err != nil {
		return err
	}
	created := false
	defer func() {
		if !created {
			c.Remove()
		}
	}()
	images, err := guestimage.Find(guestimage.Options{})
	if err != nil {
		return err
	}
	err = c.Write(ocirt.State{
		OCIVersion: specs.Version, ID: c.ID, Status: specs.StateCreating,
		Bundle: b.Dir, Rootfs: b.RootFS, Created: time.Now().UTC(),
		Annotations: b.Spec.Annotations, ExitStatus: -1,
	})
	if err != nil {
		return err
	}

	// The monitor: this executable again, in a session of its own, with
	// this process's stdio (the container's), telling us on a pipe when
	// the VM is up, holding the container's lock (taken here).
	margs, err := g.childArgs()
	if err != nil {
		return err
	}
	if g.debug {
		margs = append(margs, "--debug")
	}
	margs = append(margs, "monitor", "--kernel", images.Kernel, "--initrd", images.Initrd, c.ID)
	lock, err := c.Lock()
	if err != nil {
		return err
	}
	cmd, readyR, err := startDetached(self, "the container's monitor", margs, lock) // the lock is the monitor's now
	if err != nil {
		return err
	}
	defer readyR.Close()
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(readyR).ReadString('\n')
		answer <- strings.TrimSpace(line)
	}()
	var line string
	t := time.NewTimer(createTimeout)
	defer t.Stop()
	select {
	case line = <-answer:
	case <-t.C:
		line = fmt.Sprintf("error: the container's VM was not up after %v", createTimeout)
	}
	if err := readyOrKill(cmd, line, func(status error) error {
		return fmt.Errorf("container %s: the monitor ended before the VM was up (%v)", c.ID, status)
	}); err != nil {
		return err
	}
	// The VM is up: the hooks of the runtime's namespace run (a failure
	// fails create), then the pid file is written.
	err = func() error {
		st, err := c.Read()
		if err != nil {
			return err
		}
		for _, point := range []string{ocirt.HookPrestart, ocirt.HookCreateRuntime} {
			if err := ocirt.RunHooks(point, b.Hooks(point), st, specs.StateCreating); err != nil {
				return err
			}
		}
		if *pidFile != "" {
			return writePidFile(*pidFile, cmd.Process.Pid)
		}
		return nil
	}()
	if err != nil {
		// Not created after all: the monitor goes.
		cmd.Process.Kill()
		cmd.Wait()
		return err
	}
	created = true
	// The monitor is not waited for: whoever runs create (conmon, the
	// shim, as a subreaper) inherits it.
	cmd.Process.Release()
	return nil
}

// startDetached starts this executable (self) again with args, the child
// of a capsule oci command that outlives it (name says which, in errors):
// in a session of its own, in /, with this process's stdio, the write end
// of a pipe as descriptor 3 for its answer, and extra after it, which
// are closed here (the child's now) whether or not it started. It returns
// the child and the pipe's read end.
func startDetached(self, name string, args []string, extra ...*os.File) (*exec.Cmd, *os.File, error) {
	defer func() {
		for _, f := range extra {
			f.Close()
		}
	}()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(self, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = append([]*os.File{readyW}, extra...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	readyW.Close()
	if err != nil {
		readyR.Close()
		return nil, nil, fmt.Errorf("starting %s: %w", name, err)
	}
	return cmd, readyR, nil
}

// readyOrKill takes a detached child's answer line: ocirt.ReadyOK, or
// "error: MSG". On anything else the child is killed and reaped, and the
// error is MSG, or ended(its status) when it gave no error line.
func readyOrKill(cmd *exec.Cmd, line string, ended func(status error) error) error {
	if line == ocirt.ReadyOK {
		return nil
	}
	cmd.Process.Kill()
	status := cmd.Wait()
	if msg, ok := strings.CutPrefix(line, "error: "); ok {
		return errors.New(msg)
	}
	return ended(status)
}

// writePidFile writes pid to path atomically, as runc does (no newline).
func writePidFile(path string, pid int) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(abs), "."+filepath.Base(abs)+".tmp")
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("--pid-file: %w", err)
	}
	if err := os.Rename(tmp, abs); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("--pid-file: %w", err)
	}
	return nil
}

// ociMonitor is the hidden monitor command that create starts: the
// container's VMM, until the container has ended; its exit status is the
// container's. Descriptor 3 is create's pipe, 4 the container's lock.
func ociMonitor(g *ociGlobals, args []string, stdout, stderr io.Writer) error {
	fs := ociFlags("monitor", stdout)
	kernel := fs.String("kernel", "", "the guest kernel")
	initrd := fs.String("initrd", "", "the agent initramfs")
	bootTimeout := fs.Duration("boot-timeout", sandbox.DefaultBootTimeout, "bound on the boot")
	if err := parseOCI(fs, args, 1, 1); err != nil {
		return err
	}
	c, err := g.container(fs)
	if err != nil {
		return err
	}
	ready, lock := os.NewFile(3, "ready"), os.NewFile(4, "lock")
	if ready == nil || lock == nil {
		return errors.New("monitor: no descriptors 3 and 4 (the monitor is started by create)")
	}
	// Without --log, the monitor logs nothing: its stderr is the
	// container's.
	log := g.log
	if g.logFile == nil {
		log = nil
	}
	status := ocirt.RunMonitor(c, ocirt.MonitorConfig{
		Kernel: *kernel, Initrd: *initrd, BootTimeout: *bootTimeout, Ready: ready,
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Log: log, Lock: lock,
		// As capsule run --rootfs: root's powers go but for the
		// shares' file ones, and the VMM's seccomp filter confines it
		// (what the monitor does besides, writing its state file,
		// serving its socket, dialling the agent, is within what the
		// shares and vsock need).
		Confine: func(devs []vmm.Device) error {
			cfg := vmm.Config{Devices: devs}
			if os.Geteuid() == 0 {
				if err := jail.DropCapabilities(shareCapabilities(cfg)...); err != nil {
					return err
				}
			}
			return jail.Seccomp(seccompRules(cfg))
		},
	})
	return exitError{status}
}
