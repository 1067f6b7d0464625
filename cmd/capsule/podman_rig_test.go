package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capsule-vm/capsule/internal/kvmtest"
)

// envHostRoot is the rig's host-root mode (internal/rig): the test runs in
// the host's root file system, so the host's podman, conmon and crun are
// there. make test-rig-podman sets it.
const envHostRoot = "CAPSULE_RIG_HOSTROOT"

// podman runs the host's podman with capsule-oci as its runtime and no
// systemd (cgroupfs, file events), as a user's podman --runtime would.
type podman struct {
	t       *testing.T
	runtime string
}

func newPodman(t *testing.T) *podman {
	kvmtest.OpenHardware(t)
	if os.Getenv(envHostRoot) != "1" {
		t.Skipf("podman runs in the rig's host-root mode (make test-rig-podman, %s=1)", envHostRoot)
	}
	if _, err := exec.LookPath("podman"); err != nil {
		t.Fatalf("%v: the host-root mode has the host's tools, and make deps installs podman", err)
	}
	// podman passes the runtime no environment of its own choosing: the
	// runtime finds its kernel and initramfs as an installed capsule does,
	// in PREFIX/share/capsule next to PREFIX/bin (make install's layout).
	prefix := t.TempDir()
	bin, share := filepath.Join(prefix, "bin"), filepath.Join(prefix, "share", "capsule")
	exe, err := os.ReadFile(binary(t))
	for _, err := range []error{err, os.MkdirAll(bin, 0o755), os.MkdirAll(share, 0o755),
		os.WriteFile(filepath.Join(bin, "capsule"), exe, 0o755),
		os.Symlink("capsule", filepath.Join(bin, ociName)),
		os.Symlink(image(t, "default.vmlinux"), filepath.Join(share, "vmlinux")),
		os.Symlink(image(t, "agent.cpio.gz"), filepath.Join(share, "agent.cpio.gz"))} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return &podman{t: t, runtime: filepath.Join(bin, ociName)}
}

// cmd is podman ARGS with capsule-oci as the runtime.
func (p *podman) cmd(args ...string) *exec.Cmd {
	base := []string{"--cgroup-manager=cgroupfs", "--events-backend=file", "--runtime", p.runtime}
	cmd := capsuleCmd(p.t, "podman", append(base, args...)...)
	return cmd
}

// run runs podman ARGS with stdin and returns its status, stdout and
// stderr.
func (p *podman) run(stdin string, args ...string) (int, string, string) {
	p.t.Helper()
	cmd := p.cmd(args...)
	var o, e strings.Builder
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &o, &e
	return exitStatus(p.t, cmd.Run()), o.String(), e.String()
}

// TestPodmanRunsContainersInCapsule: podman, with capsule-oci as its
// runtime, runs containers of an image imported from a busybox root built
// here, each in a micro-VM: output, exit statuses, piped stdin,
// environment, directory, user and a bind-mounted host directory.
func TestPodmanRunsContainersInCapsule(t *testing.T) {
	p := newPodman(t)
	root := busyboxRoot(t)
	archive := filepath.Join(t.TempDir(), "bb.tar")
	if out, err := exec.Command("tar", "-C", root, "-cf", archive, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v: %s", err, out)
	}
	const img = "localhost/capsule-bb"
	if status, _, stderr := p.run("", "import", archive, img); status != 0 {
		t.Fatalf("podman import: status %d: %s", status, stderr)
	}
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "in.txt"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		stdin  string
		args   []string
		status int
		stdout string
	}{
		{"output", "", []string{"echo", "hi"}, 0, "hi\n"},
		{"exit status", "", []string{"sh", "-c", "exit 7"}, 7, ""},
		{"killed by a signal", "", []string{"sh", "-c", "kill -KILL $$"}, 137, ""},
		{"stdin piped", "abc\n", []string{"-i", img, "cat"}, 0, "abc\n"},
		{"env, cwd and user", "", []string{"-e", "FOO=bar", "-w", "/tmp", "--user", "1000:1000", img,
			"sh", "-c", "echo $FOO; pwd; id -u; id -g"}, 0, "bar\n/tmp\n1000\n1000\n"},
		{"a host directory", "", []string{"-v", data + ":/data", img,
			"sh", "-c", "cat /data/in.txt; echo from the guest > /data/out.txt"}, 0, "from the host\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"run", "--rm", "--network=none"}
			if len(tc.args) > 0 && (tc.args[0] == "-i" || tc.args[0] == "-e" || tc.args[0] == "-v") {
				args = append(args, tc.args...)
			} else {
				args = append(append(args, img), tc.args...)
			}
			status, stdout, stderr := (&podman{t: t, runtime: p.runtime}).run(tc.stdin, args...)
			if status != tc.status || stdout != tc.stdout {
				t.Fatalf("podman %s: status %d, stdout %q; want %d, %q; stderr:\n%s", strings.Join(args, " "), status, stdout, tc.status, tc.stdout, stderr)
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(data, "out.txt")); err != nil || string(b) != "from the guest\n" {
		t.Errorf("the container's write to /data/out.txt: %q, %v", b, err)
	}
}
