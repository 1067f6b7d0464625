package ocirt

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/capsule-vm/capsule/internal/ofdlock"
)

// Errors as runc words them (conmon and the shim match some of them).
var (
	ErrExist      = errors.New("container with given ID already exists")
	ErrNotExist   = errors.New("container does not exist")
	ErrNotRunning = errors.New("container not running")
)

// Files of a container's state directory (see the package doc).
const (
	stateFile   = "state.json"
	lockFile    = "monitor.lock"
	socketFile  = "monitor.sock"
	vmDir       = "vm"
	tmpSuffix   = ".tmp"
	dirMode     = 0o700
	privateMode = 0o600
)

// DefaultRoot is the state root: /run/capsule-oci for root, else
// $XDG_RUNTIME_DIR/capsule-oci (or capsule-oci-UID in the temporary
// directory when that is not set).
func DefaultRoot() string {
	if os.Geteuid() == 0 {
		return "/run/capsule-oci"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "capsule-oci")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("capsule-oci-%d", os.Geteuid()))
}

// CheckID says what is wrong with a container ID (as runc allows: letters,
// digits, '_', '+', '-' and '.', not "." or ".."), or nil.
func CheckID(id string) error {
	if id == "" {
		return errors.New("container id cannot be empty")
	}
	if len(id) > 1024 || id == "." || id == ".." ||
		strings.Trim(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.") != "" {
		return fmt.Errorf("invalid container id %q", id)
	}
	return nil
}

// Status is a container's status, as runtime-spec names them.
type Status = specs.ContainerState

// State is what state.json holds. Its JSON, less the fields marked
// internal, is what runc's state prints.
type State struct {
	OCIVersion  string            `json:"ociVersion"`
	ID          string            `json:"id"`
	Pid         int               `json:"pid"` // the monitor's
	Status      Status            `json:"status"`
	Bundle      string            `json:"bundle"`
	Rootfs      string            `json:"rootfs"`
	Created     time.Time         `json:"created"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Owner       string            `json:"owner"`

	// Internal: the monitor's pid while it lives (Pid is 0 once the
	// container has stopped, as with runc), and the container's exit
	// status (128+N for signal N) once it has stopped, -1 before.
	MonitorPid int `json:"capsuleMonitorPid,omitempty"`
	ExitStatus int `json:"capsuleExitStatus"`
}

// Public is the state as runc's state command prints it.
func (s State) Public() any {
	return struct {
		OCIVersion  string            `json:"ociVersion"`
		ID          string            `json:"id"`
		Pid         int               `json:"pid"`
		Status      Status            `json:"status"`
		Bundle      string            `json:"bundle"`
		Rootfs      string            `json:"rootfs"`
		Created     time.Time         `json:"created"`
		Annotations map[string]string `json:"annotations,omitempty"`
		Owner       string            `json:"owner"`
	}{s.OCIVersion, s.ID, s.Pid, s.Status, s.Bundle, s.Rootfs, s.Created, s.Annotations, s.Owner}
}

// Container is a container's state directory under a root.
type Container struct {
	ID  string
	Dir string // ROOT/ID
}

// Open names the container id of root; it need not exist.
func Open(root, id string) (*Container, error) {
	if err := CheckID(id); err != nil {
		return nil, err
	}
	return &Container{ID: id, Dir: filepath.Join(root, id)}, nil
}

// Path is a file of the state directory.
func (c *Container) Path(name string) string { return filepath.Join(c.Dir, name) }

// Socket is the monitor's socket.
func (c *Container) Socket() string { return c.Path(socketFile) }

// VMDir is the VM's private directory (sandbox.Config.Dir).
func (c *Container) VMDir() string { return c.Path(vmDir) }

// Make makes the state directory (and root, mode 0700, when missing):
// ErrExist when it exists. Only one of two creates of an id gets it.
func (c *Container) Make() error {
	if err := os.MkdirAll(filepath.Dir(c.Dir), dirMode); err != nil {
		return err
	}
	if err := os.Mkdir(c.Dir, dirMode); errors.Is(err, fs.ErrExist) {
		return ErrExist
	} else if err != nil {
		return err
	}
	return nil
}

// Exists says whether the state directory exists.
func (c *Container) Exists() bool {
	_, err := os.Lstat(c.Dir)
	return err == nil
}

// Remove removes the state directory and everything in it.
func (c *Container) Remove() error { return os.RemoveAll(c.Dir) }

// Write replaces state.json (atomically: a reader sees the old or the new).
func (c *Container) Write(s State) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp := c.Path(stateFile + tmpSuffix)
	if err := os.WriteFile(tmp, b, privateMode); err != nil {
		return err
	}
	return os.Rename(tmp, c.Path(stateFile))
}

// Read reads state.json as it was written: ErrNotExist when there is no
// such container.
func (c *Container) Read() (State, error) {
	var s State
	b, err := os.ReadFile(c.Path(stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return s, ErrNotExist
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s: %v", c.Path(stateFile), err)
	}
	return s, nil
}

// State is the container's state now: state.json, with the status
// stopped and the pid 0 when the monitor is not alive (whatever ended
// it).
func (c *Container) State() (State, error) {
	s, err := c.Read()
	if err != nil {
		return s, err
	}
	if s.Status != specs.StateStopped && !c.monitorAlive() {
		s.Status = specs.StateStopped
	}
	if s.Status == specs.StateStopped {
		s.Pid = 0
	}
	return s, nil
}

// Lock takes the monitor's lock: held until the returned file is closed
// (or the process ends, however it ends), by every process that has a
// copy of it. create takes it and hands it to the monitor, so that the
// container is alive (creating) from the start.
func (c *Container) Lock() (*os.File, error) {
	f, err := os.OpenFile(c.Path(lockFile), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, privateMode)
	if err != nil {
		return nil, err
	}
	if err := ofdlock.Lock(f, true); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// monitorAlive says whether a monitor holds the lock.
func (c *Container) monitorAlive() bool {
	f, err := os.Open(c.Path(lockFile))
	if err != nil {
		return false
	}
	defer f.Close()
	return errors.Is(ofdlock.Lock(f, false), ofdlock.ErrBusy)
}

// WaitMonitor waits until no monitor holds the lock (it has ended).
func (c *Container) WaitMonitor() error {
	f, err := os.Open(c.Path(lockFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fl := unix.Flock_t{Type: unix.F_RDLCK}
	for {
		err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLKW, &fl)
		if err != unix.EINTR {
			return err
		}
	}
}
