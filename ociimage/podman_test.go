package ociimage

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// podmanFile builds the real image: a whiteout, an opaque directory
// (podman writes one for a directory removed and made again), a setuid
// bit on a file with a hard link in the layer below.
const podmanFile = `FROM localhost/capsule-base:1
RUN rm /etc/motd && mkdir -p /opt/app/sub && echo data > /opt/app/sub/f && chmod 4755 /bin/busybox && echo 'bob:x:2000:2000::/home/bob:/bin/sh' >> /etc/passwd
RUN rm -rf /opt/app && mkdir -p /opt/app && echo new > /opt/app/g
ENV FOO=bar
WORKDIR /opt/app
USER bob
`

// TestPodmanArchives unpacks archives podman wrote (docker-archive,
// oci-archive, oci-dir, a multi-image docker-archive), of an image
// podman built from a busybox root, in a private podman store. It needs
// podman, a static busybox and root.
func TestPodmanArchives(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an image with podman")
	}
	podman, err := exec.LookPath("podman")
	if err != nil {
		t.Skip("podman is not installed")
	}
	if os.Geteuid() != 0 {
		t.Skip("podman build with a private store needs root here")
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox is not installed")
	}
	if out, err := exec.Command("file", "-L", busybox).Output(); err == nil && !strings.Contains(string(out), "statically linked") {
		t.Skipf("%s is not statically linked", busybox)
	}
	work := testCache(t)
	if d := os.Getenv("CAPSULE_KEEP_PODMAN"); d != "" {
		work = d
	}
	store := filepath.Join(work, "store")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	run := func(args ...string) {
		t.Helper()
		args = append([]string{"--root", filepath.Join(store, "root"), "--runroot", filepath.Join(store, "run"), "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"}, args...)
		cmd := exec.CommandContext(ctx, podman, args...)
		cmd.Dir = work
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Skipf("podman %s: %v: %s", strings.Join(args[10:], " "), err, lastLine(out))
		}
	}

	root := filepath.Join(work, "base")
	for _, d := range []string{"bin", "etc", "tmp", "usr/bin"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.Chmod(filepath.Join(root, "tmp"), 0o777|os.ModeSticky)
	b, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "bin", "busybox"), b, 0o755)
	os.Symlink("busybox", filepath.Join(root, "bin", "sh"))
	os.Link(filepath.Join(root, "bin", "busybox"), filepath.Join(root, "bin", "ls"))
	os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc", "group"), []byte("root:x:0:\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc", "motd"), []byte("motd\n"), 0o644)
	if out, err := exec.Command("tar", "-C", root, "-cf", filepath.Join(work, "base.tar"), ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v: %s", err, out)
	}
	os.WriteFile(filepath.Join(work, "Containerfile"), []byte(podmanFile), 0o644)
	run("import", "--change", `ENTRYPOINT ["/bin/sh","-c"]`, "--change", `CMD ["echo hello"]`, "base.tar", "localhost/capsule-base:1")
	run("build", "--isolation=chroot", "-t", "localhost/capsule-real:1", ".")
	run("save", "-o", "docker.tar", "localhost/capsule-real:1")
	run("save", "--format", "oci-archive", "-o", "oci.tar", "localhost/capsule-real:1")
	run("save", "--format", "oci-dir", "-o", "ocidir", "localhost/capsule-real:1")
	run("save", "-m", "-o", "multi.tar", "localhost/capsule-real:1", "localhost/capsule-base:1")

	cache := filepath.Join(work, "cache")
	var digest string
	for _, archive := range []string{"docker.tar", "oci.tar", "ocidir"} {
		t.Run(archive, func(t *testing.T) {
			img, err := Unpack(context.Background(), filepath.Join(work, archive), Options{CacheDir: cache})
			if err != nil {
				t.Fatal(err)
			}
			// All three are the one image: the first unpacks it.
			if digest == "" {
				digest = img.Digest
				if img.Cached {
					t.Error("the first unpack was a cache hit")
				}
			} else if img.Digest != digest || !img.Cached {
				t.Errorf("%s: digest %s cached %v, want a hit of %s", archive, img.Digest, img.Cached, digest)
			}
			checkPodmanImage(t, img)
		})
	}
	_, err = Unpack(context.Background(), filepath.Join(work, "multi.tar"), Options{CacheDir: cache})
	if !errors.Is(err, ErrPlatform) {
		t.Fatalf("multi-image archive: %v, want ErrPlatform", err)
	}
	checkLine(t, err, "localhost/capsule-real:1 (linux/amd64)", "localhost/capsule-base:1 (linux/amd64)")
}

func checkPodmanImage(t *testing.T, img *Image) {
	t.Helper()
	wantCfg := Config{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"echo hello"},
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "FOO=bar"},
		WorkingDir: "/opt/app",
		User:       "bob",
	}
	if !reflect.DeepEqual(img.Config, wantCfg) {
		t.Errorf("Config = %+v, want %+v", img.Config, wantCfg)
	}
	tree := describe(t, img.RootFS)
	for n, want := range map[string]string{
		"bin/busybox": "", // checked below
		"bin/sh":      "symlink busybox",
		"tmp":         "dir 1777",
		"opt/app":     "dir 0755",
		"opt/app/g":   `file 0644 "new\n"`,
	} {
		if want != "" && tree[n] != want {
			t.Errorf("%s: %q, want %q", n, tree[n], want)
		}
	}
	// The vfs driver's second layer has the chmodded busybox and bin/ls
	// as a hard link to it again.
	bb, err1 := os.Lstat(filepath.Join(img.RootFS, "bin/busybox"))
	ls, err2 := os.Lstat(filepath.Join(img.RootFS, "bin/ls"))
	if err1 != nil || err2 != nil || !os.SameFile(bb, ls) || !strings.HasPrefix(tree["bin/busybox"], "file 4755 ") {
		t.Errorf("bin/busybox %.12s, bin/ls %.12s: want one setuid file", tree["bin/busybox"], tree["bin/ls"])
	}
	for _, gone := range []string{"etc/motd", "opt/app/sub", "opt/app/sub/f"} {
		if _, ok := tree[gone]; ok {
			t.Errorf("%s survived its whiteout", gone)
		}
	}
	u, err := LookupUser(img.RootFS, img.Config.User)
	if err != nil || u.UID != 2000 || u.GID != 2000 || u.Home != "/home/bob" {
		t.Errorf("LookupUser(bob) = %+v, %v", u, err)
	}
	// The unpacked busybox runs.
	out, err := exec.Command("chroot", img.RootFS, "/bin/sh", "-c", "echo hello from $(pwd)").CombinedOutput()
	if err != nil || string(out) != "hello from /\n" {
		t.Errorf("chroot %s /bin/sh: %q, %v", img.RootFS, out, err)
	}
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
