package rig

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestHostRootBinds(t *testing.T) {
	root := t.TempDir()
	makeTree(t, root, map[string]string{"go.mod": "module m\n", "testdata/x": "x", "bin/tool": "t", "pkg/testdata/y": "y"})
	// The module is under /tmp (or on the root filesystem, with another
	// TMPDIR): only the binary, which the host's root lacks, is bound.
	cfg := Config{Binary: "/nonexistent/out/pkg.test", Dir: filepath.Join(root, "pkg")}
	if got := hostRootBinds(cfg); !slices.Equal(got, []string{cfg.Binary}) && onRootFS(root) {
		t.Errorf("binds %q, want the binary only", got)
	}
	// Paths that the host's root lacks are bound, once.
	cfg = Config{Binary: "/nonexistent/m/pkg/x.test", Dir: "/nonexistent/m/pkg"}
	if got := hostRootBinds(cfg); !slices.Equal(got, []string{"/nonexistent/m/pkg"}) {
		t.Errorf("binds %q, want the directory only (the binary is in it)", got)
	}
	// The host's own directories are never hidden.
	for _, dir := range []string{"/", "/etc"} {
		if got := hostRootBinds(Config{Binary: "/bin/sh", Dir: dir}); len(got) > 0 {
			t.Errorf("binds %q for a test in %s", got, dir)
		}
	}
}

func TestHostRootRunScript(t *testing.T) {
	cfg := Config{Binary: "/tmp/go-build1/b001/x.test", Dir: "/nonexistent/m/pkg", Args: []string{"-test.v"}, HostRoot: true,
		Env: []string{"CAPSULE_X=it's"}}
	script := runScript("capsule-rig-tag", cfg, "/cache/kernel/k/lib/modules/6.1.0-1-cloud-amd64")
	if out, err := exec.Command("/bin/sh", "-n", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("sh -n: %v\n%s\nscript:\n%s", err, out, script)
	}
	for _, want := range []string{
		"rig_bind /nonexistent/m/pkg\n",
		"RIG_MODULES=/cache/kernel/k/lib/modules/6.1.0-1-cloud-amd64\n",
		"PATH=" + hostRootPath,
		"/bin/chroot " + hostRootMerged + " /bin/sh -c",
		"insmod " + hostRootModuleDir + "/$m.ko",
		"mount -t virtiofs -o ro " + hostRootTag,
	} {
		if !strings.Contains(script, want) {
			t.Errorf("script lacks %q:\n%s", want, script)
		}
	}
	if strings.Contains(script, "rig_bind /tmp/") {
		t.Errorf("script binds a path under /tmp:\n%s", script)
	}
	// The default mode's rig_setup does nothing.
	cfg.HostRoot = false
	if script := runScript("capsule-rig-tag", cfg, "/cache/kernel/k/lib/modules/6.1.0-1-cloud-amd64"); !strings.Contains(script, "rig_setup() { :; }") || strings.Contains(script, "chroot") {
		t.Errorf("default run script:\n%s", script)
	}
}

func TestHostRootQEMUArgs(t *testing.T) {
	s := &hostRootServer{sock: "/tmp/a,b/virtiofsd-1.sock"}
	args := strings.Join(s.qemuArgs("2048"), " ")
	for _, want := range []string{"size=2048M", "path=/tmp/a,,b/virtiofsd-1.sock", "memory-backend=rigmem", "tag=" + hostRootTag} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	if got := qemuSize("2G"); got != "2G" {
		t.Errorf("qemuSize(2G) = %q", got)
	}
}

const (
	hostRootHelperEnv = "CAPSULE_RIG_TEST_HOSTROOT_HELPER"
	hostRootProbeEnv  = "CAPSULE_RIG_TEST_PROBE"
	hostRootToolsEnv  = "CAPSULE_RIG_TEST_TOOLS"
	hostRootDirEnv    = "CAPSULE_RIG_TEST_DIR"
)

// hostRootTools are host programs that the host-root guest must run when
// the host has them (none is in the rig's initramfs), with arguments and
// a piece of their expected output.
var hostRootTools = []struct{ name, want string }{
	{"perl", "1"},
	{"podman", "podman version"},
	{"crun", "crun version"},
	{"conmon", "conmon version"},
	{"containerd", "containerd"},
	{"runsc", "runsc version"},
}

func hostRootToolArgs(name string) []string {
	if name == "perl" {
		return []string{"-e", "print 1"}
	}
	return []string{"--version"}
}

// TestRigHostRoot boots the rig in the host-root mode, running
// TestHostRootHelper there, and checks that nothing it wrote reached the
// host.
func TestRigHostRoot(t *testing.T) {
	skipUnlessRigCanBoot(t)
	if os.Geteuid() != 0 {
		t.Skip("the host-root mode needs root")
	}
	if !exists(virtiofsd) {
		t.Skipf("no %s", virtiofsd)
	}
	b := make([]byte, 6)
	rand.Read(b)
	probe := "capsule-rig-probe-" + hex.EncodeToString(b)
	var tools []string
	for _, tool := range hostRootTools {
		if _, err := exec.LookPath(tool.name); err == nil {
			tools = append(tools, tool.name)
		}
	}
	if _, err := exec.LookPath("ip"); err == nil {
		tools = append(tools, "ip")
	}
	t.Logf("host tools to run in the guest: %v", tools)
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	before := fingerprint(t, "/etc")
	var stdout, stderr strings.Builder
	cfg := Config{
		Binary:   os.Args[0],
		Args:     []string{"-test.run=^TestHostRootHelper$", "-test.v"},
		Env:      []string{hostRootHelperEnv + "=1", hostRootProbeEnv + "=" + probe, hostRootToolsEnv + "=" + strings.Join(tools, " "), hostRootDirEnv + "=" + dir},
		HostRoot: true,
		Stdout:   &stdout,
		Stderr:   &stderr,
	}
	code, err := Run(t.Context(), cfg)
	t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	for _, p := range []string{"/etc/" + probe, "/usr/local/" + probe, "/" + probe} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s reached the host (%v)", p, err)
			os.RemoveAll(p)
		}
	}
	if after := fingerprint(t, "/etc"); after != before {
		t.Errorf("the host's /etc changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if !strings.Contains(stdout.String(), "hostroot helper: ok") {
		t.Error("helper output missing")
	}
}

// fingerprint lists the entries of dir with their modes, sizes and
// modification times, and dir's own.
func fingerprint(t *testing.T, dir string) string {
	var b strings.Builder
	fi, err := os.Lstat(dir)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, ". %v %d %d\n", fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %v %d %d\n", e.Name(), fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
	}
	return b.String()
}

// TestHostRootHelper runs in the host-root guest for TestRigHostRoot: it
// runs host programs, sees /dev/kvm, writes under /etc and /usr/local, and
// tries to write to the host's root through the virtio-fs share itself.
func TestHostRootHelper(t *testing.T) {
	if os.Getenv(hostRootHelperEnv) != "1" {
		t.Skip("helper for TestRigHostRoot")
	}
	probe := os.Getenv(hostRootProbeEnv)
	if wd, err := os.Getwd(); err != nil || wd != os.Getenv(hostRootDirEnv) {
		t.Errorf("working directory %q, %v; want %q", wd, err, os.Getenv(hostRootDirEnv))
	}
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil || !strings.Contains(string(mounts), "overlay / overlay ") {
		t.Errorf("/ is not the overlay: %v\n%s", err, mounts)
	}
	for _, want := range []string{"tmpfs /var/lib/containers tmpfs ", "cgroup2 /sys/fs/cgroup cgroup2 ", "devpts /dev/pts devpts "} {
		if !strings.Contains(string(mounts), want) {
			t.Errorf("no %q in /proc/self/mounts:\n%s", want, mounts)
		}
	}
	// /usr/bin/env is not in the rig's initramfs (busybox's is /bin/env).
	out, err := exec.Command("/usr/bin/env", "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "GNU coreutils") {
		t.Errorf("/usr/bin/env --version: %v\n%s", err, out)
	}
	for _, tool := range hostRootTools {
		if !slices.Contains(strings.Fields(os.Getenv(hostRootToolsEnv)), tool.name) {
			continue
		}
		out, err := exec.Command(tool.name, hostRootToolArgs(tool.name)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), tool.want) {
			t.Errorf("%s %s: %v\n%s", tool.name, strings.Join(hostRootToolArgs(tool.name), " "), err, out)
		} else {
			fmt.Printf("hostroot helper: %s runs\n", tool.name)
		}
	}
	if err := checkKVM(); err != nil {
		t.Error(err)
	}
	// The kernel loads veth and bridge (with stp and llc) on demand.
	if slices.Contains(strings.Fields(os.Getenv(hostRootToolsEnv)), "ip") {
		for _, link := range [][]string{
			{"link", "add", "capsule-v0", "type", "veth", "peer", "name", "capsule-v1"},
			{"link", "add", "capsule-br0", "type", "bridge"},
		} {
			if out, err := exec.Command("ip", link...).CombinedOutput(); err != nil {
				t.Errorf("ip %s: %v\n%s", strings.Join(link, " "), err, out)
			}
		}
		for _, m := range []string{"veth", "bridge"} {
			if _, err := os.Stat("/sys/module/" + m); err != nil {
				t.Errorf("module %s: %v", m, err)
			}
		}
		fmt.Println("hostroot helper: veth and bridge loaded on demand")
	}
	// Writes land in the overlay's tmpfs.
	etcProbe := "/etc/" + probe
	if err := os.WriteFile(etcProbe, []byte("guest\n"), 0o644); err != nil {
		t.Errorf("write under /etc: %v", err)
	} else if b, err := os.ReadFile(etcProbe); err != nil || string(b) != "guest\n" {
		t.Errorf("read back %s: %q, %v", etcProbe, b, err)
	}
	if f, err := os.OpenFile("/etc/motd", os.O_WRONLY|os.O_APPEND, 0); err == nil {
		fmt.Fprintln(f, "written by the rig guest")
		if err := f.Close(); err != nil {
			t.Errorf("append to /etc/motd: %v", err)
		}
	}
	if err := os.Mkdir("/usr/local/"+probe, 0o755); err != nil {
		t.Errorf("mkdir under /usr/local: %v", err)
	}
	// Even with the guest's mount of the share made writable, the host's
	// virtiofsd serves it from a read-only mount.
	share := "/proc/1/root" + hostRootLower
	if err := syscall.Mount("", share, "", syscall.MS_REMOUNT, ""); err != nil {
		t.Logf("remount of the share read-write: %v", err)
	}
	err = os.WriteFile(share+"/"+probe, []byte("guest\n"), 0o644)
	if !errors.Is(err, syscall.EROFS) {
		t.Errorf("write through the share: %v, want EROFS", err)
	}
	if t.Failed() {
		return
	}
	fmt.Println("hostroot helper: ok")
}
