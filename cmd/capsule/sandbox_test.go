package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/capsule-vm/capsule/internal/kvmtest"
)

// The programs of busyboxRoot's /bin.
var busyboxApplets = []string{"sh", "echo", "cat", "ls", "id", "tty", "stty", "sleep", "true", "false", "env",
	"pwd", "hostname", "mkfifo", "touch", "rm", "mkdir", "test", "kill", "md5sum", "dd"}

// busyboxRoot makes a root file system of Debian's static busybox with a
// passwd naming root and app (1000:1000, in group staff 50 too).
func busyboxRoot(t *testing.T) string {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("no static busybox to build a root from: %v", err)
	}
	root := filepath.Join(t.TempDir(), "root")
	for _, d := range []string{"bin", "etc", "tmp", "home/app", "data"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(root, "tmp"), 0o1777)
	os.Chown(filepath.Join(root, "home/app"), 1000, 1000)
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
		"etc/group":  "root:x:0:\nstaff:x:50:app\napp:x:1000:\n",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range busyboxApplets {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// sandboxArgs are capsule run's arguments for running args with the
// default kernel and the agent initramfs.
func sandboxArgs(t *testing.T, args ...string) []string {
	return append([]string{"run", "--kernel", image(t, "default.vmlinux"), "--initrd", image(t, "agent.cpio.gz")}, args...)
}

// runSandboxCmd runs capsule run with sandboxArgs and stdin, and returns
// its exit status, stdout and stderr.
func runSandboxCmd(t *testing.T, stdin io.Reader, args ...string) (int, string, string) {
	t.Helper()
	cmd := capsuleCmd(t, binary(t), sandboxArgs(t, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	return exitStatus(t, cmd.Run()), stdout.String(), stderr.String()
}

func TestSandboxRunsAProgramFromADirectory(t *testing.T) {
	kvmtest.OpenHardware(t)
	root := busyboxRoot(t)
	for _, tc := range []struct {
		name           string
		stdin          string
		args           []string
		status         int
		stdout, stderr string
	}{
		{"output apart and exit status", "", []string{"--", "sh", "-c", "echo hello; echo oops >&2; exit 7"}, 7, "hello\n", "oops\n"},
		{"killed by a signal", "", []string{"sh", "-c", "echo before; kill -KILL $$"}, 128 + 9, "before\n", ""},
		{"not found", "", []string{"no-such-program"}, 127, "", "not found"},
		{"stdin piped to the end", "abc\ndef\n", []string{"-i", "--", "cat"}, 0, "abc\ndef\n", ""},
		{"env, cwd and user", "", []string{"-e", "FOO=bar", "-w", "/tmp", "-u", "app", "--",
			"sh", "-c", "echo $FOO $HOME; pwd; id -u; id -g; id -G; hostname"}, 0, "bar /home/app\n/tmp\n1000\n1000\n1000 50\ncapsule\n", ""},
		{"a terminal", "", []string{"-t", "--", "tty"}, 0, "/dev/pts/", ""},
		{"writes land in the directory", "", []string{"--", "sh", "-c", "echo from-guest > /data/out.txt"}, 0, "", ""},
		{"a guest crash is the guest's panic status", "", []string{"--", "sh", "-c", "echo c > /proc/sysrq-trigger"}, 122, "",
			"the guest stopped before the program's end was reported: guest panic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--rootfs", root}, tc.args...)
			status, stdout, stderr := runSandboxCmd(t, strings.NewReader(tc.stdin), args...)
			if status != tc.status || !strings.HasPrefix(stdout, tc.stdout) || (tc.stdout == "" && stdout != "") ||
				!strings.Contains(stderr, tc.stderr) || (tc.stderr == "" && stderr != "" && status < 122) {
				t.Fatalf("status %d, stdout %q, stderr %q; want %d, %q, %q", status, stdout, stderr, tc.status, tc.stdout, tc.stderr)
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(root, "data/out.txt")); err != nil || string(b) != "from-guest\n" {
		t.Fatalf("data/out.txt on the host: %q, %v", b, err)
	}
	// -v ends with the run's breakdown, every phase reached: the agent
	// wrote the boot-time marker.
	status, _, stderr := runSandboxCmd(t, nil, "-v", "--rootfs", root, "--", "true")
	if phases, ok := parseBreakdown([]byte(stderr)); status != 0 || !ok {
		t.Fatalf("-v: status %d, phases %v; stderr:\n%s", status, phases, stderr)
	} else {
		t.Logf("capsule run -v --rootfs ROOT -- true: %s", breakdownLine.FindString(stderr))
	}
}

func TestSandboxReadOnlyRootAndVolumes(t *testing.T) {
	kvmtest.OpenHardware(t)
	root := busyboxRoot(t)
	rw, ro := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(rw, "in.txt"), []byte("from-host\n"), 0o644)
	os.WriteFile(filepath.Join(ro, "keep.txt"), []byte("keep\n"), 0o644)
	script := `cat /rw/in.txt; echo from-guest > /rw/out.txt
echo scratch > /scratch.txt && cat /scratch.txt
if echo x > /ro/keep.txt; then echo ro-written; else echo ro-refused; fi
cat /ro/keep.txt`
	status, stdout, stderr := runSandboxCmd(t, nil, "--rootfs", root, "--read-only", "--volume", rw+":/rw",
		"--volume", ro+":/ro:ro", "--", "sh", "-c", script)
	want := "from-host\nscratch\nro-refused\nkeep\n"
	if status != 0 || stdout != want {
		t.Fatalf("status %d, stdout %q, stderr %q; want 0 and %q", status, stdout, stderr, want)
	}
	if b, err := os.ReadFile(filepath.Join(rw, "out.txt")); err != nil || string(b) != "from-guest\n" {
		t.Fatalf("out.txt on the host: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(root, "scratch.txt")); err == nil {
		t.Fatal("a write to the read-only root reached the host")
	}
}

func TestSandboxSignalReachesTheProgram(t *testing.T) {
	kvmtest.OpenHardware(t)
	root := busyboxRoot(t)
	cmd := capsuleCmd(t, binary(t), sandboxArgs(t, "--rootfs", root, "--", "sh", "-c",
		`trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 1; done`)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "ready" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("no ready line (stderr %q)", stderr.String())
	}
	cmd.Process.Signal(syscall.SIGTERM)
	rest, _ := io.ReadAll(out)
	if s := exitStatus(t, cmd.Wait()); s != 3 || string(rest) != "got TERM\n" {
		t.Fatalf("status %d, then stdout %q; want 3 and the handler's line (stderr %q)", s, rest, stderr.String())
	}
}

func TestSandboxExecRunsInTheRunningVM(t *testing.T) {
	kvmtest.OpenHardware(t)
	root := busyboxRoot(t)
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	main := capsuleCmd(t, binary(t), sandboxArgs(t, "--rootfs", root, "--name", "exectest", "--", "sh", "-c",
		`mkfifo /tmp/f; echo ready; cat /tmp/f`)...)
	out, err := main.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	main.Stderr = &stderr
	if err := main.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "ready" {
		main.Process.Kill()
		main.Wait()
		t.Fatalf("no ready line (stderr %q)", stderr.String())
	}
	ex := capsuleCmd(t, binary(t), "exec", "exectest", "sh", "-c", "echo from-exec > /tmp/f; echo exec-done; exit 4")
	exOut, err := ex.Output()
	if s := exitStatus(t, err); s != 4 || string(exOut) != "exec-done\n" {
		t.Fatalf("exec: status %d, stdout %q; want 4 and exec-done", s, exOut)
	}
	rest, _ := io.ReadAll(out)
	if s := exitStatus(t, main.Wait()); s != 0 || string(rest) != "from-exec\n" {
		t.Fatalf("main: status %d, then stdout %q (stderr %q)", s, rest, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "capsule", "exectest")); err == nil {
		t.Fatal("the VM's directory is left behind")
	}
}

func TestSandboxRunsAnImageArchive(t *testing.T) {
	kvmtest.OpenHardware(t)
	root := busyboxRoot(t)
	archive := filepath.Join(t.TempDir(), "app.tar")
	writeDockerArchive(t, root, archive, v1.Config{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{`echo "$GREETING from $(pwd) as $(id -u)"`},
		Env:        []string{"PATH=/bin", "GREETING=hello"},
		WorkingDir: "/home/app",
		User:       "app",
	})
	t.Setenv("CAPSULE_ROOTFS_CACHE", t.TempDir())
	status, stdout, stderr := runSandboxCmd(t, nil, "--image", archive)
	if want := "hello from /home/app as 1000\n"; status != 0 || stdout != want {
		t.Fatalf("status %d, stdout %q, stderr %q; want 0 and %q", status, stdout, stderr, want)
	}
	// Arguments replace Cmd; the Entrypoint stays.
	status, stdout, stderr = runSandboxCmd(t, nil, "--image", archive, "--", "echo args; touch /home/app/x; echo $?")
	if status != 0 || stdout != "args\n0\n" {
		t.Fatalf("status %d, stdout %q, stderr %q", status, stdout, stderr)
	}
}

// writeDockerArchive writes root as a one-layer image with cfg, in a
// docker save archive.
func writeDockerArchive(t *testing.T, root, archive string, cfg v1.Config) {
	t.Helper()
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == root {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if d.Type()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name, _ = filepath.Rel(root, path)
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			_, err = tw.Write(b)
			return err
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layer.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err == nil {
		img, err = mutate.Config(img, cfg)
	}
	tag, err2 := name.NewTag("capsule.test/app:latest")
	if err == nil {
		err = err2
	}
	if err == nil {
		err = tarball.WriteToFile(archive, tag, img)
	}
	if err != nil {
		t.Fatal(err)
	}
}
