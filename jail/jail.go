package jail

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/capsule-vm/capsule/internal/patherr"
)

// Spec is a jail: where its root is, what the VMM finds in it, who it
// runs as and what it may use.
//
// The parent (Start) creates Dir/ID/root, owned by root, with
// an empty file or directory standing for each of Binds, and a cgroup
// when limits are set; it starts the jailed process in new mount, PID,
// IPC and UTS namespaces (and a new network namespace unless HostNetwork)
// inside that cgroup. The child (Enter) bind-mounts each of Binds over
// its stand-in, mounts /proc, and makes the root its root (pivot_root, or
// a move and chroot where the root file system cannot be pivoted, as in
// an initramfs). Once the VM is set up the child calls Drop, which leaves
// it the jail's user with no capabilities and no_new_privs.
type Spec struct {
	Dir string // an existing directory, owned by root, that holds jails
	ID  string // the jail's name: its root is Dir/ID/root
	UID int    // the user and group the VMM runs as after set-up
	GID int
	// Binds are host files and devices the VMM needs, made visible in
	// the jail at the given paths (absolute, inside the jail).
	Binds []Bind
	// HostNetwork keeps the host's network namespace (TAP devices and the
	// user-mode network need it).
	HostNetwork bool
	// CPUs limits CPU time (cgroup cpu.max) to this many CPUs; 0: none.
	CPUs float64
	// MemoryMiB limits memory (cgroup memory.max), guest RAM included;
	// 0: none.
	MemoryMiB int
}

// Bind makes a host path visible in the jail.
type Bind struct {
	Host, Jail string
	Write      bool // read-write; otherwise read-only
}

// Root is the jail's root directory on the host.
func (s Spec) Root() string { return filepath.Join(s.Dir, s.ID, "root") }

// Check validates a spec before anything is created.
func (s Spec) Check() error {
	if s.ID == "" || strings.ContainsAny(s.ID, "/\x00") || s.ID == "." || s.ID == ".." {
		return fmt.Errorf("jail id %q: want a plain name", s.ID)
	}
	st, err := os.Lstat(s.Dir)
	if err != nil {
		return fmt.Errorf("jail directory %s: %w", s.Dir, patherr.Unwrap(err))
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	switch {
	case !st.IsDir():
		return fmt.Errorf("jail directory %s: not a directory", s.Dir)
	case !ok || sys.Uid != 0:
		return fmt.Errorf("jail directory %s: must be owned by root", s.Dir)
	case st.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("jail directory %s: must not be writable by group or others (mode %04o)", s.Dir, st.Mode().Perm())
	}
	if s.UID <= 0 || s.GID <= 0 {
		return fmt.Errorf("jail user %d:%d: the VMM must run as a user and group other than root", s.UID, s.GID)
	}
	if !(s.CPUs >= 0 && s.CPUs <= 4096) {
		return fmt.Errorf("jail CPU limit %g: want 0 (none) to 4096 CPUs", s.CPUs)
	}
	if s.MemoryMiB < 0 || s.MemoryMiB > 1<<30 {
		return fmt.Errorf("jail memory limit %d MiB: want 0 (none) to %d MiB", s.MemoryMiB, 1<<30)
	}
	for _, b := range s.Binds {
		if !filepath.IsAbs(b.Jail) || filepath.Clean(b.Jail) != b.Jail || b.Jail == "/" {
			return fmt.Errorf("jail path %q: want a clean absolute path", b.Jail)
		}
		if _, err := os.Stat(b.Host); err != nil {
			return fmt.Errorf("%s: %w", b.Host, patherr.Unwrap(err))
		}
	}
	if os.Geteuid() != 0 {
		return errors.New("a jail needs root (to create namespaces and drop to the jail's user)")
	}
	return nil
}

// Jailed is a started jail: the process and what Cleanup removes.
type Jailed struct {
	Cmd     *exec.Cmd
	spec    Spec
	created bool   // Dir/ID is this jail's: Cleanup removes it
	cgroup  string // the cgroup directory, or ""
}

// Start prepares the jail and starts cmd (an *exec.Cmd not yet started:
// usually this program again, told to Enter) in it. Whatever happens,
// call Cleanup on the result once the process has ended; on error Start
// has cleaned up already.
func Start(s Spec, cmd *exec.Cmd) (*Jailed, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	j := &Jailed{Cmd: cmd, spec: s}
	if err := j.prepare(); err != nil {
		j.Cleanup()
		return nil, err
	}
	flags := uintptr(unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS)
	if !s.HostNetwork {
		flags |= unix.CLONE_NEWNET
	}
	attr := &syscall.SysProcAttr{Cloneflags: flags, Pdeathsig: syscall.SIGKILL}
	if j.cgroup != "" {
		fd, err := unix.Open(j.cgroup, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			j.Cleanup()
			return nil, fmt.Errorf("cgroup %s: %w", j.cgroup, err)
		}
		defer unix.Close(fd)
		attr.UseCgroupFD, attr.CgroupFD = true, fd
	}
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		j.Cleanup()
		return nil, fmt.Errorf("start the jailed VMM: %w", err)
	}
	return j, nil
}

// prepare creates the root, its stand-ins and the cgroup.
func (j *Jailed) prepare() error {
	s := j.spec
	top := filepath.Join(s.Dir, s.ID)
	if err := os.Mkdir(top, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("jail %s exists already (another VM, or one that was not cleaned up)", top)
		}
		return fmt.Errorf("jail %s: %w", top, patherr.Unwrap(err))
	}
	j.created = true
	// The root stays root's: the VMM creates its sockets there while it is
	// still root, and the jail's user may write nothing in it.
	root := s.Root()
	if err := os.Mkdir(root, 0o755); err != nil {
		return fmt.Errorf("jail %s: %w", root, patherr.Unwrap(err))
	}
	for _, b := range s.Binds {
		if err := standIn(root, b); err != nil {
			return err
		}
	}
	for _, d := range []string{"proc", ".old-root"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o555); err != nil {
			return fmt.Errorf("jail %s: %w", root, patherr.Unwrap(err))
		}
	}
	if s.CPUs > 0 || s.MemoryMiB > 0 {
		cg, err := makeCgroup(s)
		j.cgroup = cg
		if err != nil {
			return err
		}
	}
	return nil
}

// standIn creates the empty file or directory a bind mount goes over,
// with the directories above it.
func standIn(root string, b Bind) error {
	st, err := os.Stat(b.Host)
	if err != nil {
		return fmt.Errorf("%s: %w", b.Host, patherr.Unwrap(err))
	}
	p := filepath.Join(root, b.Jail)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("jail %s: %w", p, patherr.Unwrap(err))
	}
	if st.IsDir() {
		err = os.Mkdir(p, 0o755)
	} else {
		var f *os.File
		if f, err = os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
			f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("jail %s: %w (two files with one name in the jail?)", p, patherr.Unwrap(err))
	}
	return nil
}

// Cleanup removes the jail's root and cgroup. The bind mounts lived in the
// jailed process's mount namespace and ended with it.
func (j *Jailed) Cleanup() error {
	var errs []error
	if j.cgroup != "" {
		if err := os.Remove(j.cgroup); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cgroup %s: %w", j.cgroup, patherr.Unwrap(err)))
		}
	}
	if j.created {
		top := filepath.Join(j.spec.Dir, j.spec.ID)
		if err := os.RemoveAll(top); err != nil {
			errs = append(errs, fmt.Errorf("jail %s: %w", top, patherr.Unwrap(err)))
		}
	}
	return errors.Join(errs...)
}

// Enter is the jailed process's first step, in its new namespaces as
// root: bind the files in, mount /proc, and make the jail's root its
// root.
func Enter(s Spec) error {
	root := s.Root()
	// Nothing mounted here propagates back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("jail: make mounts private: %w", err)
	}
	if err := unix.Mount(root, root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("jail: bind %s: %w", root, err)
	}
	for _, b := range s.Binds {
		p := filepath.Join(root, b.Jail)
		if err := unix.Mount(b.Host, p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("jail: bind %s: %w", b.Host, err)
		}
		flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_NOSUID)
		if !b.Write {
			flags |= unix.MS_RDONLY
		}
		if err := unix.Mount("", p, "", flags, ""); err != nil {
			return fmt.Errorf("jail: remount %s: %w", b.Host, err)
		}
	}
	if err := unix.Mount("proc", filepath.Join(root, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("jail: mount /proc: %w", err)
	}
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	switch err := unix.PivotRoot(".", ".old-root"); {
	case err == nil:
		if err := unix.Unmount("/.old-root", unix.MNT_DETACH); err != nil {
			return fmt.Errorf("jail: detach the old root: %w", err)
		}
	case errors.Is(err, unix.EINVAL):
		// The root is an initramfs, which cannot be pivoted: move the
		// jail over it and chroot, as container runtimes do there. Once
		// Drop has taken every capability, chroot cannot be escaped.
		if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("jail: move the root: %w", err)
		}
		if err := unix.Chroot("."); err != nil {
			return fmt.Errorf("jail: chroot: %w", err)
		}
	default:
		return fmt.Errorf("jail: pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	if err := unix.Sethostname([]byte(s.ID)); err != nil {
		return fmt.Errorf("jail: hostname: %w", err)
	}
	return nil
}

// Sealed ends what only set-up needed: the jail's /proc is unmounted
// (descriptors already open in it stay valid). Call it once the VM is set
// up, before Drop.
func Sealed() error {
	if err := unix.Unmount("/proc", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("jail: unmount /proc: %w", err)
	}
	return nil
}

// Drop makes the process the jail's user and group, with no supplementary
// groups, no capabilities (a change of every user id away from 0 clears
// them) and no_new_privs. Go applies each credential change to every
// thread.
func Drop(uid, gid int) error {
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("jail: drop groups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("jail: set group %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("jail: set user %d: %w", uid, err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("jail: no_new_privs: %w", err)
	}
	var hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("jail: capget: %w", err)
	}
	if data[0].Effective|data[0].Permitted|data[1].Effective|data[1].Permitted != 0 {
		return errors.New("jail: capabilities remain after dropping to the jail's user")
	}
	return nil
}

// DropCapabilities empties the process's capability sets (effective,
// permitted, inheritable; the ambient set empties with them) on every
// thread, but for the capabilities keep (such as unix.CAP_CHOWN), which
// stay effective and permitted. A VMM run as root without a jail keeps
// its user but loses the powers of root: what its open descriptors allow
// is all it can do, and what keep allows (a shared directory keeps the
// file ones).
func DropCapabilities(keep ...int) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	for _, c := range keep {
		if c < 0 || c >= 64 {
			return fmt.Errorf("drop capabilities: no capability %d", c)
		}
		data[c/32].Effective |= 1 << (c % 32)
		data[c/32].Permitted |= 1 << (c % 32)
	}
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafePointer(&hdr)), uintptr(unsafePointer(&data[0])), 0)
	if errno != 0 {
		return fmt.Errorf("drop capabilities: %w", errno)
	}
	return nil
}

// ParseUser parses UID[:GID] (numbers; GID defaults to UID).
func ParseUser(s string) (uid, gid int, err error) {
	u, g, ok := strings.Cut(s, ":")
	if !ok {
		g = u
	}
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if err1 != nil || err2 != nil || uid <= 0 || gid <= 0 {
		return 0, 0, fmt.Errorf("%q: want UID[:GID], numbers other than 0", s)
	}
	return uid, gid, nil
}
