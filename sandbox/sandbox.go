// Package sandbox runs programs from a host directory inside a micro-VM
// of their own: capsule's default kernel boots with the agent initramfs
// (cmd/capsule-agent as init), the directory is the guest's root over
// virtio-9p, and the guest agent (package agent), reached over vsock,
// starts the programs and carries their stdio and exit status.
//
// A VM is made by New, booted by Start (which returns once the agent has
// set the root up), used through Agent, and ended by Stop and Close.
// Nothing of it is left behind after Close: the VM's private directory
// (holding the vsock socket) is removed.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/capsule-vm/capsule/agent"
	"github.com/capsule-vm/capsule/internal/ofdlock"
	"github.com/capsule-vm/capsule/vmm"
)

// Mount tags of the shares New adds; a user's own shares must use others.
const (
	RootTag      = "capsule-root"
	volumePrefix = "capsule-vol"
)

// guestCID is the guest's vsock context ID (the first one after the
// host's).
const guestCID = 3

// Cmdline is the kernel command line of a sandbox guest, before Config's
// own words.
const Cmdline = "console=ttyS0 quiet reboot=k panic=-1"

// DefaultBootTimeout bounds the boot: from Start to the agent answering.
const DefaultBootTimeout = 60 * time.Second

// Volume is a host directory mounted at Path in the guest.
type Volume struct {
	HostDir  string
	Path     string // absolute, in the guest's root
	ReadOnly bool
}

// Config describes a sandbox VM.
type Config struct {
	// Kernel and Initrd are the default kernel and the agent initramfs
	// (package internal/guestimage finds them).
	Kernel, Initrd string
	// Cmdline is added to the kernel command line (Cmdline).
	Cmdline   string
	CPUs      int
	MemoryMiB int
	// Root is the host directory that becomes the guest's root. With
	// RootReadOnly the guest cannot change it: its writes go to a tmpfs
	// overlay, discarded at power-off.
	Root         string
	RootReadOnly bool
	Volumes      []Volume
	Hostname     string
	// Devices are further devices (disks, networks, shares of the user's
	// own); not a vsock device, which is the agent's.
	Devices []vmm.Device
	// Console gets the guest kernel's console; nil discards it. Log gets
	// capsule's device messages (vmm.Config.Log).
	Console, Log io.Writer
	// Name names the VM for Exec: its private directory is then
	// RuntimeDir()/Name, and one VM of a name runs at a time. Empty: a
	// fresh directory under os.TempDir().
	Name string
	// Dir, when set (and no Name is), is the VM's private directory
	// instead: New makes it (it must not exist; its parent must) and
	// Close removes it. An OCI runtime puts it in its container's state
	// directory, so that deleting the container removes what a killed
	// VMM left there.
	Dir string
}

// RuntimeDir is where named VMs keep their directories:
// $XDG_RUNTIME_DIR/capsule, else /run/capsule for root, else
// capsule-UID in the temporary directory.
func RuntimeDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "capsule")
	}
	if os.Geteuid() == 0 {
		return "/run/capsule"
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("capsule-%d", os.Geteuid()))
}

// CheckName says what is wrong with a VM name, or nil.
func CheckName(name string) error {
	if name == "" || len(name) > 64 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != "" ||
		name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("name %q: want 1 to 64 letters, digits, '_', '.' or '-', not starting with '.' or '-'", name)
	}
	return nil
}

// DialTimeout bounds Dial.
const DialTimeout = 10 * time.Second

// Dial connects to the agent of the running VM called name (see
// Config.Name), within DialTimeout.
func Dial(ctx context.Context, name string) (*agent.Client, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	lock, err := os.Open(filepath.Join(RuntimeDir(), name+".lock"))
	if err == nil {
		err = ofdlock.Lock(lock, false)
		lock.Close()
	}
	if !errors.Is(err, ofdlock.ErrBusy) { // nothing holds it: no VM
		return nil, fmt.Errorf("no VM named %s is running", name)
	}
	ctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	c, err := agent.Dial(ctx, agent.HybridDialer(AgentSocket(name)))
	if err != nil {
		return nil, fmt.Errorf("VM %s: %w", name, err)
	}
	return c, nil
}

// AgentSocket is the socket through which the agent of the VM called
// name is reached (see Dial).
func AgentSocket(name string) string { return SocketIn(filepath.Join(RuntimeDir(), name)) }

// SocketIn is the agent's socket of the VM whose private directory is
// dir (Config.Dir).
func SocketIn(dir string) string { return filepath.Join(dir, "vsock") }

// privateDir makes the VM's directory: a fresh temporary one, or
// RuntimeDir()/name, replacing one a VM of that name left behind when it
// was killed. A named VM holds an exclusive lock on RuntimeDir()/name.lock
// while it lives (lock, which the caller closes last): a directory whose
// lock can be taken is stale.
func privateDir(name string) (dir string, lock *os.File, err error) {
	if name == "" {
		dir, err = os.MkdirTemp("", "capsule-")
		return dir, nil, err
	}
	if err := CheckName(name); err != nil {
		return "", nil, err
	}
	parent := RuntimeDir()
	if err := ownDir(parent); err != nil {
		return "", nil, err
	}
	lock, err = os.OpenFile(filepath.Join(parent, name+".lock"), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return "", nil, err
	}
	if err := ofdlock.Lock(lock, true); err != nil {
		lock.Close()
		if errors.Is(err, ofdlock.ErrBusy) {
			return "", nil, fmt.Errorf("a VM named %s is running (its directory is %s)", name, filepath.Join(parent, name))
		}
		return "", nil, err
	}
	dir = filepath.Join(parent, name)
	if err := os.RemoveAll(dir); err != nil { // a killed VM's
		lock.Close()
		return "", nil, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		lock.Close()
		return "", nil, err
	}
	return dir, lock, nil
}

// ownDir makes dir if it is missing, and checks that it is a directory
// (not a link) owned by this user and closed to everyone else: another
// user's directory, or a symbolic link planted in a shared /tmp, would let
// that user steer what capsule removes and which socket exec talks to.
func ownDir(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(dir, &st); err != nil {
		return err
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR || int(st.Uid) != os.Geteuid() || st.Mode&0o077 != 0 {
		return fmt.Errorf("%s: not a directory of this user's closed to others (mode %o, owner %d): refusing to use it", dir, st.Mode, st.Uid)
	}
	return nil
}

// VM is a sandbox micro-VM.
type VM struct {
	cfg  Config
	vm   *vmm.VM
	devs []vmm.Device
	dir  string
	lock *os.File // a named VM's lock, held until Close

	mu     sync.Mutex
	client *agent.Client // once Start has it
	ended  bool          // Run has returned

	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned
	res    vmm.Result
	runErr error
	once   sync.Once
}

// New checks cfg, makes the VM's private directory and the VM (vmm.New):
// devices are open and the kernel loaded, but nothing runs yet.
func New(cfg Config) (*VM, error) {
	if cfg.Root == "" {
		return nil, errors.New("sandbox: no root directory")
	}
	if fi, err := os.Stat(cfg.Root); err != nil {
		return nil, fmt.Errorf("root %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("root %s: not a directory", cfg.Root)
	}
	for _, d := range cfg.Devices {
		if _, ok := d.(vmm.Vsock); ok {
			return nil, errors.New("a vsock device of its own cannot be given: the guest agent's vsock device is capsule's")
		}
		if s, ok := d.(vmm.Share); ok && (s.Tag == RootTag || strings.HasPrefix(s.Tag, volumePrefix)) {
			return nil, fmt.Errorf("share tag %s: %s and %s* are capsule's own", s.Tag, RootTag, volumePrefix)
		}
	}
	for _, v := range cfg.Volumes {
		if !filepath.IsAbs(v.Path) || filepath.Clean(v.Path) == "/" {
			return nil, fmt.Errorf("volume %s:%s: the guest path must be absolute and not /", v.HostDir, v.Path)
		}
	}
	var (
		dir  string
		lock *os.File
		err  error
	)
	switch {
	case cfg.Dir != "" && cfg.Name != "":
		return nil, errors.New("sandbox: a VM has a Name or a Dir, not both")
	case cfg.Dir != "":
		dir, err = cfg.Dir, os.Mkdir(cfg.Dir, 0o700)
	default:
		dir, lock, err = privateDir(cfg.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	fail := func() {
		os.RemoveAll(dir)
		if lock != nil {
			lock.Close()
		}
	}
	devs := []vmm.Device{
		vmm.Share{HostDir: cfg.Root, Tag: RootTag, ReadOnly: cfg.RootReadOnly},
		vmm.Vsock{CID: guestCID, Path: SocketIn(dir)},
		vmm.RNG{},
	}
	for i, v := range cfg.Volumes {
		devs = append(devs, vmm.Share{HostDir: v.HostDir, Tag: fmt.Sprintf("%s%d", volumePrefix, i), ReadOnly: v.ReadOnly})
	}
	devs = append(devs, cfg.Devices...)
	console := cfg.Console
	if console == nil {
		console = io.Discard
	}
	cmdline := Cmdline
	if cfg.Cmdline != "" {
		cmdline += " " + cfg.Cmdline
	}
	vm, err := vmm.New(vmm.Config{
		Kernel: cfg.Kernel, Initrd: cfg.Initrd, Cmdline: cmdline,
		CPUs: cfg.CPUs, MemoryMiB: cfg.MemoryMiB,
		Console: console, Log: cfg.Log, Devices: devs,
	})
	if err != nil {
		fail()
		return nil, err
	}
	return &VM{cfg: cfg, vm: vm, devs: devs, dir: dir, lock: lock, done: make(chan struct{})}, nil
}

// VMM is the underlying VM (for its phases and statistics).
func (v *VM) VMM() *vmm.VM { return v.vm }

// Devices are the VM's devices, the agent's included (for a seccomp
// filter that must allow what they do).
func (v *VM) Devices() []vmm.Device { return v.devs }

// Start runs the VM and waits, until ctx ends, for the agent to answer
// and set the root up. The VM keeps running after Start returns, until
// Stop or the guest ends it.
func (v *VM) Start(ctx context.Context) error {
	runCtx, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	go func() {
		defer close(v.done)
		v.res, v.runErr = v.vm.Run(runCtx)
		// The agent's connection ends with the guest, so that a caller
		// waiting on it hears of a crash at once (ErrAgentLost).
		v.mu.Lock()
		v.ended = true
		c := v.client
		v.mu.Unlock()
		if c != nil {
			c.Close()
		}
	}()
	// The dial gives up when the VM stops before its agent answers.
	dialCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-v.done:
			stop()
		case <-dialCtx.Done():
		}
	}()
	c, err := agent.Dial(dialCtx, agent.HybridDialer(SocketIn(v.dir)))
	if err != nil {
		return v.bootErr(ctx, err)
	}
	v.mu.Lock()
	ended := v.ended
	v.client = c
	v.mu.Unlock()
	if ended {
		c.Close()
		return v.bootErr(ctx, agent.ErrAgentLost)
	}
	sb := agent.Sandbox{Hostname: v.cfg.Hostname, RootTag: RootTag, RootReadOnly: v.cfg.RootReadOnly}
	for i, vol := range v.cfg.Volumes {
		sb.Mounts = append(sb.Mounts, agent.Mount{Tag: fmt.Sprintf("%s%d", volumePrefix, i), Path: vol.Path, ReadOnly: vol.ReadOnly})
	}
	if err := c.Setup(dialCtx, sb); err != nil {
		return v.bootErr(ctx, err)
	}
	return nil
}

// bootErr says why the agent did not come up: the VM's end when it has
// ended, else err.
func (v *VM) bootErr(ctx context.Context, err error) error {
	select {
	case <-v.done:
		return fmt.Errorf("the guest stopped before its agent was ready: %s", v.describeEnd())
	default:
	}
	if ctx.Err() != nil {
		return fmt.Errorf("the guest agent did not answer in time: %w", err)
	}
	return err
}

// describeEnd is how the VM ended, once it has.
func (v *VM) describeEnd() string {
	if v.runErr != nil {
		return v.runErr.Error()
	}
	s := v.res.Reason.String()
	if v.res.Detail != "" {
		s += ": " + v.res.Detail
	}
	return s
}

// Agent is the connection to the guest agent, once Start has succeeded.
func (v *VM) Agent() *agent.Client {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.client
}

// Done is closed when the VM has stopped.
func (v *VM) Done() <-chan struct{} { return v.done }

// Result is how the VM ended; valid once Done is closed.
func (v *VM) Result() (vmm.Result, error) { return v.res, v.runErr }

// Ended says, once Done is closed, how the VM ended, in words.
func (v *VM) Ended() string { return v.describeEnd() }

// Stop ends the VM. Once the main program (ShutdownOnExit) has exited
// and no host connection is left (capsule exec ones included), the agent
// syncs and powers the guest off; Stop closes this connection and gives
// that grace, then stops the VM. It returns when every vCPU has stopped.
func (v *VM) Stop(grace time.Duration) {
	v.once.Do(func() {
		if v.cancel == nil { // never started
			return
		}
		if c := v.Agent(); c != nil {
			c.Close()
			t := time.NewTimer(grace)
			select {
			case <-v.done:
			case <-t.C:
			}
			t.Stop()
		}
		v.cancel()
		<-v.done
	})
}

// Close stops the VM if it runs, releases it and removes its directory.
func (v *VM) Close() error {
	v.Stop(0)
	err := v.vm.Close()
	if rerr := os.RemoveAll(v.dir); err == nil {
		err = rerr
	}
	if v.lock != nil {
		v.lock.Close() // last: the name is free once the directory is gone
	}
	return err
}
