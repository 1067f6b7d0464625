package guest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/capsule-vm/capsule/agent/agentpb"
)

// What only the guest's init does: the kernel file systems, the sandbox's
// mounts and root, killing everything, powering off. None of it runs
// outside a guest (Run picks pid1 only as PID 1).

// Paths in the initramfs while the sandbox is set up.
const (
	sandboxRoot  = "/sandbox"         // the new root, before it becomes /
	sandboxLower = "/capsule/lower"   // a read-only root's 9p mount
	sandboxRW    = "/capsule/overlay" // the tmpfs of its overlay
)

// pid1 is the System of the agent as the guest's init.
type pid1 struct{}

// kernelMounts are the file systems mounted in the initramfs and again in
// the sandbox's root.
var kernelMounts = []struct {
	fstype, target string
	flags          uintptr
	data           string
}{
	{"proc", "/proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
	{"tmpfs", "/dev/shm", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
}

// mountKernel mounts the kernel's file systems under root, and a tmpfs
// on /tmp when tmp is set.
func mountKernel(root string, tmp bool) error {
	ms := kernelMounts
	if tmp {
		ms = append(ms[:len(ms):len(ms)], struct {
			fstype, target string
			flags          uintptr
			data           string
		}{"tmpfs", "/tmp", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"})
	}
	for _, m := range ms {
		target := filepath.Join(root, m.target)
		if err := os.MkdirAll(target, 0o755); err != nil {
			return err
		}
		err := unix.Mount(m.fstype, target, m.fstype, m.flags, m.data)
		if err != nil && !(errors.Is(err, unix.EBUSY) && m.fstype == "devtmpfs") { // the kernel may automount it
			return fmt.Errorf("mount %s on %s: %w", m.fstype, target, err)
		}
	}
	return nil
}

// earlyInit prepares the initramfs for the agent: the kernel's file
// systems, and the console as stdio when the kernel could not open it
// (no /dev/console in the initramfs).
func earlyInit() error {
	err := mountKernel("/", false)
	if _, serr := unix.FcntlInt(1, unix.F_GETFD, 0); serr != nil {
		if fd, err := unix.Open("/dev/console", unix.O_RDWR, 0); err == nil {
			for i := range 3 {
				unix.Dup3(fd, i, 0)
			}
			if fd > 2 {
				unix.Close(fd)
			}
		}
	}
	return err
}

// nineP mounts the virtio-9p share tag on target.
func nineP(tag, target string, ro bool, req *agentpb.SetupSandboxRequest) error {
	opts := "trans=virtio,version=9p2000.L"
	if req.Cache != "" {
		opts += ",cache=" + req.Cache
	}
	if req.Msize != 0 {
		opts += ",msize=" + strconv.FormatUint(uint64(req.Msize), 10)
	}
	var flags uintptr
	if ro {
		flags |= unix.MS_RDONLY
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(tag, target, "9p", flags, opts); err != nil {
		return fmt.Errorf("mount 9p %q on %s: %w", tag, target, err)
	}
	return nil
}

// checkSetup refuses what could not be mounted as asked: empty tags,
// mount options smuggled in a cache mode, relative paths.
func checkSetup(req *agentpb.SetupSandboxRequest) error {
	switch req.Cache {
	case "", "none", "loose", "fscache", "mmap", "readahead":
	default:
		return fmt.Errorf("unknown 9p cache mode %q", req.Cache)
	}
	if req.RootTag == "" {
		return errors.New("no root tag")
	}
	for _, m := range req.Mounts {
		if m.Tag == "" {
			return fmt.Errorf("mount on %q: no tag", m.Path)
		}
		if !filepath.IsAbs(m.Path) || filepath.Clean(m.Path) == "/" {
			return fmt.Errorf("mount of %q: want an absolute path other than /, got %q", m.Tag, m.Path)
		}
	}
	if len(req.Hostname) > 64 || strings.ContainsRune(req.Hostname, 0) {
		return fmt.Errorf("bad hostname %q", req.Hostname)
	}
	return nil
}

// Setup mounts the root (a read-only one under a tmpfs overlay), moves
// it onto / and enters it (switch_root: the initramfs cannot be
// pivot_root'ed away), then mounts the kernel's file systems, /tmp and
// the extra shares inside, so that links in the root resolve within it.
func (pid1) Setup(req *agentpb.SetupSandboxRequest) error {
	if err := checkSetup(req); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if err := setup(req); err != nil {
		return status.Errorf(codes.Internal, "sandbox: %v", err)
	}
	return nil
}

func setup(req *agentpb.SetupSandboxRequest) error {
	if req.RootReadOnly {
		if err := nineP(req.RootTag, sandboxLower, true, req); err != nil {
			return err
		}
		if err := os.MkdirAll(sandboxRW, 0o755); err != nil {
			return err
		}
		if err := unix.Mount("tmpfs", sandboxRW, "tmpfs", 0, "mode=0755"); err != nil {
			return fmt.Errorf("mount tmpfs on %s: %w", sandboxRW, err)
		}
		upper, work := sandboxRW+"/upper", sandboxRW+"/work"
		for _, d := range []string{upper, work, sandboxRoot} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		opts := "lowerdir=" + sandboxLower + ",upperdir=" + upper + ",workdir=" + work
		if err := unix.Mount("overlay", sandboxRoot, "overlay", 0, opts); err != nil {
			return fmt.Errorf("mount overlay on %s: %w", sandboxRoot, err)
		}
	} else if err := nineP(req.RootTag, sandboxRoot, false, req); err != nil {
		return err
	}
	if err := os.Chdir(sandboxRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", sandboxRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	if err := mountKernel("/", true); err != nil {
		return err
	}
	for _, m := range req.Mounts {
		if err := nineP(m.Tag, filepath.Clean(m.Path), m.ReadOnly, req); err != nil {
			return err
		}
	}
	if req.Hostname != "" {
		if err := unix.Sethostname([]byte(req.Hostname)); err != nil {
			return fmt.Errorf("sethostname: %w", err)
		}
	}
	return nil
}

// KillAll kills every process but init (kill(-1) from PID 1) and reaps
// them, so that nothing writes to the shares after the sync.
func (pid1) KillAll() {
	unix.Kill(-1, unix.SIGKILL)
}

// PowerOff syncs the file systems and powers the machine off through
// ACPI, which capsule turns into the VM's exit. A kernel without ACPI
// cannot power off (reboot(2) would halt the machine forever): it
// restarts instead, which capsule also ends the VM on (reboot=k).
func (pid1) PowerOff() {
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if _, err := os.Stat("/sys/firmware/acpi"); err != nil {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	err := unix.Reboot(cmd)
	fmt.Fprintf(os.Stderr, "capsule-agent: power off: %v\n", err)
	os.Exit(1) // init's exit panics the kernel, which then reboots (panic=-1)
}
