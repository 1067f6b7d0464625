package rig

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// hostRootTag is the virtio-fs tag of the host's root filesystem.
const hostRootTag = "hostroot"

// hostRootModules are the modules that mount the host's root in the guest
// (virtio-pci, virtio-fs and overlayfs), in load order, with their paths
// below lib/modules/<version>. They go into the per-run archive only when
// Config.HostRoot is set.
var hostRootModules = []struct{ name, path string }{
	{"virtio_ring", "kernel/drivers/virtio/virtio_ring.ko"},
	{"virtio", "kernel/drivers/virtio/virtio.ko"},
	{"virtio_pci_legacy_dev", "kernel/drivers/virtio/virtio_pci_legacy_dev.ko"},
	{"virtio_pci_modern_dev", "kernel/drivers/virtio/virtio_pci_modern_dev.ko"},
	{"virtio_pci", "kernel/drivers/virtio/virtio_pci.ko"},
	{"fuse", "kernel/fs/fuse/fuse.ko"},
	{"virtiofs", "kernel/fs/fuse/virtiofs.ko"},
	{"overlay", "kernel/fs/overlayfs/overlay.ko"},
}

// hostRootModuleDir is where the per-run archive puts hostRootModules.
const hostRootModuleDir = "/lib/modules/hostroot"

// hostRootInputs returns the per-run archive's module files for k.
func hostRootInputs(k kernel) []baseInput {
	in := make([]baseInput, 0, len(hostRootModules))
	for _, m := range hostRootModules {
		in = append(in, baseInput{guest: hostRootModuleDir + "/" + m.name + ".ko", host: k.module(m.name), mode: 0o644})
	}
	return in
}

// Guest paths of the host-root mode: the virtio-fs mount of the host's
// root (read-only), the tmpfs with the overlay's upper and work
// directories, and the overlay the test runs in.
const (
	hostRootLower  = "/hostroot/host"
	hostRootRW     = "/hostroot/rw"
	hostRootMerged = "/hostroot/root"
)

// hostRootPath is the test's PATH in the host-root mode: Debian's for root.
const hostRootPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// hostRootSetup is the run script's rig_setup in the host-root mode, with
// rig_modules and rig_bind. It loads hostRootModules, mounts the host's
// root read-only with virtio-fs and a tmpfs overlay on top, and mounts
// proc, sysfs, cgroup2, devtmpfs (with /dev/pts and /dev/shm), a fresh
// /run, securityfs, a tmpfs at /var/lib/containers and the rig's own /tmp
// in the overlay; then rig_binds (see hostRootScript) lays the per-run
// archive's paths that the share lacks over it.
var hostRootSetup = `rig_setup() {
	for m in ` + moduleNames(hostRootModules) + `; do
		insmod ` + hostRootModuleDir + `/$m.ko || fail "insmod $m.ko failed"
	done
	mkdir -p ` + hostRootLower + ` ` + hostRootRW + ` ` + hostRootMerged + `
	mount -t virtiofs -o ro ` + hostRootTag + ` ` + hostRootLower + ` || fail "mount of the host's root (virtio-fs) failed"
	mount -t tmpfs -o mode=755 tmpfs ` + hostRootRW + ` || fail "mount of the overlay's tmpfs failed"
	mkdir ` + hostRootRW + `/upper ` + hostRootRW + `/work
	mount -t overlay -o lowerdir=` + hostRootLower + `,upperdir=` + hostRootRW + `/upper,workdir=` + hostRootRW + `/work overlay ` + hostRootMerged + ` ||
		fail "mount of the overlay on the host's root failed"
	r=` + hostRootMerged + `
	mount -t proc proc $r/proc || fail "mount of $r/proc failed"
	mount -t sysfs sysfs $r/sys || fail "mount of $r/sys failed"
	mount -t cgroup2 cgroup2 $r/sys/fs/cgroup || fail "mount of $r/sys/fs/cgroup failed"
	mount -t devtmpfs devtmpfs $r/dev || fail "mount of $r/dev failed"
	mkdir -p $r/dev/pts $r/dev/shm
	mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts $r/dev/pts || fail "mount of $r/dev/pts failed"
	mount -t tmpfs -o mode=1777 tmpfs $r/dev/shm || fail "mount of $r/dev/shm failed"
	mount -t tmpfs -o mode=755 tmpfs $r/run || fail "mount of $r/run failed"
	mount -t securityfs securityfs $r/sys/kernel/security || fail "mount of $r/sys/kernel/security failed"
	# Container storage cannot be in the overlay: overlayfs is no upper
	# layer for another overlay (podman's overlay driver).
	mkdir -p $r/var/lib/containers
	mount -t tmpfs -o mode=700 tmpfs $r/var/lib/containers || fail "mount of $r/var/lib/containers failed"
	mount --rbind /tmp $r/tmp || fail "bind of /tmp failed"
	rig_modules
	rig_binds
}
# rig_modules makes the kernel's whole module tree, in the rig's cache on
# the host, /lib/modules/<version> in the guest and in the overlay, and
# busybox's modprobe the kernel's: modules then load on demand (veth,
# bridge, nf_tables...). Skipped when the cache is not on the host's root
# filesystem.
rig_modules() {
	[ -n "$RIG_MODULES" ] && [ -f "` + hostRootLower + `$RIG_MODULES/modules.dep" ] || return 0
	v=${RIG_MODULES##*/}
	mkdir -p /lib/modules/$v $r/lib/modules/$v
	mount --bind "` + hostRootLower + `$RIG_MODULES" /lib/modules/$v &&
		mount --bind "` + hostRootLower + `$RIG_MODULES" $r/lib/modules/$v || fail "bind of the module tree failed"
	echo /bin/modprobe >/proc/sys/kernel/modprobe
}
# rig_bind lays a path of the per-run archive over the host's root.
rig_bind() {
	if [ -d "$1" ]; then
		mkdir -p "$r$1"
	elif [ ! -e "$r$1" ]; then
		mkdir -p "$(dirname "$r$1")" && : >"$r$1"
	fi
	mount --bind "$1" "$r$1" || fail "bind of $1 into the host's root failed"
}
`

// moduleNames returns the modules' names, separated by spaces.
func moduleNames(mods []struct{ name, path string }) string {
	names := make([]string, len(mods))
	for i, m := range mods {
		names[i] = m.name
	}
	return strings.Join(names, " ")
}

// hostRootBinds returns the paths of the per-run archive that are bound
// over the host's root, because the share lacks them: the test binary,
// the working directory and the module trees, when they are neither under
// /tmp (which the rig's /tmp covers) nor on the host's root filesystem
// (whose files the test then sees directly, those of over maxCopiedFile
// included), nor under another one.
func hostRootBinds(cfg Config) []string {
	var binds []string
	cands := append([]string{cfg.Dir}, guestTrees(cfg.Dir)...)
	cands = append(cands, cfg.Binary)
	for _, p := range cands {
		if p == "" || p == "/" || coveredBy(p, []string{"/tmp"}) || coveredBy(p, binds) || onRootFS(p) {
			continue
		}
		binds = append(binds, p)
	}
	return binds
}

// onRootFS reports whether path exists on the host's root filesystem, the
// one the share serves.
func onRootFS(path string) bool {
	var root, st syscall.Stat_t
	if syscall.Stat("/", &root) != nil || syscall.Stat(path, &st) != nil {
		return false
	}
	return st.Dev == root.Dev
}

// hostRootScript returns the host-root part of the run script:
// RIG_MODULES (moduleTree), rig_setup, rig_modules, rig_bind, rig_binds
// and rig_test, which runs the test chrooted in the overlay, in its
// directory, through the host's /bin/sh.
func hostRootScript(cfg Config, vars []string, moduleTree string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "RIG_MODULES=%s\n", shellQuote(moduleTree))
	b.WriteString(hostRootSetup)
	b.WriteString("rig_binds() {\n\t:\n")
	for _, p := range hostRootBinds(cfg) {
		fmt.Fprintf(&b, "\trig_bind %s\n", shellQuote(p))
	}
	b.WriteString("}\n")
	run := []string{"/bin/chroot", hostRootMerged, "/bin/sh", "-c",
		`cd "$1" || { echo "kvmrig: cd $1 failed in the host's root" >&2; exit 127; }; shift; exec "$@"`,
		"kvmrig", cfg.Dir, cfg.Binary}
	fmt.Fprintf(&b, "rig_test() {\n\tenv -i %s \\\n\t\t%s\n}\n", shellJoin(vars), shellJoin(append(run, cfg.Args...)))
	return b.String()
}

// hostRootServer is the virtiofsd that serves the host's root filesystem
// to one guest, read-only, from a private mount namespace.
type hostRootServer struct {
	cmd    *exec.Cmd
	sock   string
	stderr *tailBuffer
	done   chan struct{} // closed when virtiofsd has exited
	err    error         // its exit status, once done
	mu     sync.Mutex
	killed bool
}

// virtiofsdHint is the install hint for a missing virtiofsd.
const virtiofsdHint = "CAPSULE_RIG_HOSTROOT needs QEMU's virtiofsd at " + virtiofsd + " (apt-get install qemu-system-common)"

// hostRootScriptNS is run by /bin/sh in virtiofsd's private mount
// namespace: it binds the host's root filesystem, without the filesystems
// mounted on it, read-only on $1, and runs virtiofsd ($2...) on it. A
// bind mount of a read-only mount is read-only too, so virtiofsd's own
// sandbox (which binds the source again) cannot write either.
const hostRootScriptNS = `set -e
mount --bind / "$1"
mount -o remount,bind,ro "$1"
src=$1
shift
exec "$@" -o source="$src"
`

// startHostRoot starts virtiofsd for attempt n, listening on a socket in
// dir that QEMU can connect to as soon as this returns. When virtiofsd
// exits before stop is called, onExit is called.
func startHostRoot(dir string, n int, verbose bool, stderr io.Writer, onExit func()) (*hostRootServer, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%s=1 needs root (virtiofsd and a private mount namespace)", EnvHostRoot)
	}
	if !exists(virtiofsd) {
		return nil, errors.New(virtiofsdHint)
	}
	src := filepath.Join(dir, fmt.Sprintf("hostroot-%d", n))
	if err := os.Mkdir(src, 0o700); err != nil {
		return nil, fmt.Errorf("host root: %w", err)
	}
	sock := filepath.Join(dir, fmt.Sprintf("virtiofsd-%d.sock", n))
	lf, err := listenUnix(sock)
	if err != nil {
		return nil, fmt.Errorf("host root: virtiofsd socket: %w", err)
	}
	defer lf.Close()
	s := &hostRootServer{sock: sock, stderr: &tailBuffer{max: 4096}, done: make(chan struct{})}
	// cache=always: the guest may cache everything, the host's root does
	// not change under a test. The socket is fd 3.
	s.cmd = exec.Command("/bin/sh", "-c", hostRootScriptNS, "kvmrig-hostroot", src,
		virtiofsd, "--fd=3", "-o", "cache=always", "-o", "log_level=warn", "-o", "sandbox=namespace")
	s.cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	s.cmd.ExtraFiles = []*os.File{lf}
	s.cmd.Stdout = s.stderr
	s.cmd.Stderr = s.stderr
	if verbose {
		s.cmd.Stdout = io.MultiWriter(s.stderr, stderr)
		s.cmd.Stderr = s.cmd.Stdout
	}
	// Go makes the new mount namespace private before the script runs.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{
		Unshareflags: syscall.CLONE_NEWNS,
		Setpgid:      true,
		Pdeathsig:    syscall.SIGKILL,
	}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("host root: start virtiofsd: %w", err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
		s.mu.Lock()
		killed := s.killed
		s.mu.Unlock()
		if !killed {
			onExit()
		}
	}()
	return s, nil
}

// listenUnix returns a listening Unix socket bound to path, as a file to
// hand to virtiofsd (package net is left out: it would make the rig's test
// binaries dynamic when built with cgo).
func listenUnix(path string) (*os.File, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	if err := syscall.Listen(fd, 1); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

// qemuArgs returns QEMU's arguments for the share: vhost-user needs the
// guest's RAM in shared memory.
func (s *hostRootServer) qemuArgs(mem string) []string {
	return []string{
		"-object", "memory-backend-memfd,id=rigmem,share=on,size=" + qemuSize(mem),
		"-machine", "memory-backend=rigmem",
		"-chardev", "socket,id=" + hostRootTag + ",path=" + qemuEscape(s.sock),
		"-device", "vhost-user-fs-pci,chardev=" + hostRootTag + ",tag=" + hostRootTag + ",queue-size=1024",
	}
}

// stop kills virtiofsd's process group unless it has exited, and waits for
// it.
func (s *hostRootServer) stop() {
	s.mu.Lock()
	s.killed = true
	s.mu.Unlock()
	select {
	case <-s.done:
	default:
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	os.Remove(s.sock)
}

// exitError describes virtiofsd's failure, with its last output, if it
// exited with an error before stop was called; nil otherwise. It explains
// a run whose guest never reported the test's exit status.
func (s *hostRootServer) exitError() error {
	select {
	case <-s.done:
	default:
		return nil
	}
	s.mu.Lock()
	killed := s.killed
	s.mu.Unlock()
	if killed || s.err == nil {
		return nil
	}
	if msg := strings.TrimSpace(s.stderr.String()); msg != "" {
		return fmt.Errorf("virtiofsd (the host's root) failed: %v: %s", s.err, msg)
	}
	return fmt.Errorf("virtiofsd (the host's root) failed: %v", s.err)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// qemuSize turns a -m size into a memory-backend size: a bare number is
// MiB for -m but bytes for a backend.
func qemuSize(mem string) string {
	if mem != "" && mem[len(mem)-1] >= '0' && mem[len(mem)-1] <= '9' {
		return mem + "M"
	}
	return mem
}

// qemuEscape doubles the commas of a QEMU option value.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }
