package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capsule-vm/capsule/internal/kvmtest"
)

// copyImage copies the test disk to a temporary file the test may change.
func copyImage(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(image(t, "disk.ext4"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "disk.ext4")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// runLinux boots the minimal kernel with the test initramfs, the given
// init action and extra flags, and returns capsule's exit status, stdout
// and stderr.
func runLinux(t *testing.T, action string, extra ...string) (int, string, string) {
	t.Helper()
	args := append([]string{"run", "--kernel", image(t, "minimal.bzImage"), "--initrd", image(t, "initramfs.cpio.gz"),
		"--cmdline", "console=ttyS0 quiet reboot=k panic=-1 capsule.action=" + action}, extra...)
	cmd := capsuleCmd(t, binary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	return exitStatus(t, cmd.Run()), stdout.String(), stderr.String()
}

// fsck runs e2fsck -fn on img and fails the test unless it is clean.
func fsck(t *testing.T, img string) {
	t.Helper()
	out, err := exec.Command(image(t, "e2fsck"), "-fn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
}

// liveGuest is a capsule run of the minimal kernel that a test talks to
// while it runs.
type liveGuest struct {
	t       *testing.T
	cmd     *exec.Cmd
	sc      *bufio.Scanner
	console strings.Builder
	stderr  bytes.Buffer
}

// startLinux boots the minimal kernel with the test initramfs, the kernel
// command line's capsule.* words in args and the extra flags, and reads its
// console until a line contains ready; the test fails if none does.
func startLinux(t *testing.T, args, ready string, extra ...string) *liveGuest {
	t.Helper()
	g := &liveGuest{t: t}
	g.cmd = capsuleCmd(t, binary(t), append([]string{"run", "--kernel", image(t, "minimal.bzImage"),
		"--initrd", image(t, "initramfs.cpio.gz"), "--cmdline", "console=ttyS0 quiet reboot=k panic=-1 " + args}, extra...)...)
	out, err := g.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	g.cmd.Stderr = &g.stderr
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g.sc = bufio.NewScanner(out)
	for g.sc.Scan() {
		g.console.WriteString(g.sc.Text() + "\n")
		if strings.Contains(g.sc.Text(), ready) {
			return g
		}
	}
	g.cmd.Wait()
	t.Fatalf("no %q on the console; stderr %q\nconsole:\n%s", ready, g.stderr.String(), g.console.String())
	return nil
}

// finish reads the rest of the console and returns capsule's exit status.
func (g *liveGuest) finish() int {
	g.t.Helper()
	for g.sc.Scan() {
		g.console.WriteString(g.sc.Text() + "\n")
	}
	return exitStatus(g.t, g.cmd.Wait())
}

// stop sends SIGTERM and returns capsule's exit status.
func (g *liveGuest) stop() int {
	g.t.Helper()
	g.cmd.Process.Signal(syscall.SIGTERM)
	return g.finish()
}

// failf fails the test with the guest's console and stderr.
func (g *liveGuest) failf(format string, args ...any) {
	g.t.Helper()
	g.t.Fatalf(format+"\nstderr %q\nconsole:\n%s", append(args, g.stderr.String(), g.console.String())...)
}

func TestVirtioBlkGuestWritesSurviveReboot(t *testing.T) {
	kvmtest.OpenHardware(t)
	img := copyImage(t)
	status, stdout, stderr := runLinux(t, "disk", "--disk", img)
	if status != 0 || !strings.Contains(stderr, "(reset)") {
		t.Fatalf("status %d, stderr %q; want a clean reboot\nconsole:\n%s", status, stderr, stdout)
	}
	for _, want := range []string{"disk: hello.txt: hello from the host", "disk: guest.txt written"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("console lacks %q:\n%s", want, stdout)
		}
	}
	fsck(t, img)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("written by the guest\n")) {
		t.Error("the guest's file is not in the image")
	}
}

func TestVirtioBlkReadOnlyRefusesWrites(t *testing.T) {
	kvmtest.OpenHardware(t)
	img := copyImage(t)
	before := fileSum(t, img)
	status, stdout, stderr := runLinux(t, "rodisk", "--disk", img+",ro")
	if status != 0 || !strings.Contains(stdout, "rodisk: write refused") {
		t.Fatalf("status %d, stderr %q\nconsole:\n%s", status, stderr, stdout)
	}
	if fileSum(t, img) != before {
		t.Error("the read-only image changed")
	}
}

func TestVirtioBlkSecondVMRefused(t *testing.T) {
	kvmtest.OpenHardware(t)
	img := copyImage(t)
	g := startLinux(t, "capsule.action=spin", "capsule-init: spinning", "--disk", img)
	for _, d := range []string{img, img + ",ro"} {
		status, _, stderr := runLinux(t, "poweroff", "--disk", d)
		if status != 1 || !strings.Contains(stderr, "is in use") {
			t.Errorf("second VM with --disk %s: status %d, stderr %q; want 1 and 'is in use'", d, status, stderr)
		}
	}
	if s := g.stop(); s != 128+int(syscall.SIGTERM) {
		g.failf("first VM: status %d after SIGTERM", s)
	}
	fsck(t, img)
}

func TestVirtioRNG(t *testing.T) {
	kvmtest.OpenHardware(t)
	status, stdout, stderr := runLinux(t, "hwrng", "--rng")
	if status != 0 || !strings.Contains(stdout, "hwrng: virtio_rng") {
		t.Fatalf("status %d, stderr %q\nconsole:\n%s", status, stderr, stdout)
	}
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func TestVirtioVsockEchoBothWays(t *testing.T) {
	kvmtest.OpenHardware(t)
	dir, err := os.MkdirTemp("", "vsock") // short: Unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "v.sock")
	// Guest to host: an echo server on port 5000.
	ln, err := net.Listen("unix", sock+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Write([]byte(line))
	}()
	cid := strconv.Itoa(1000 + os.Getpid()) // CIDs are locked host-wide
	g := startLinux(t, "capsule.action=vsock", "vsock-serve: listening on 6000", "--vsock", cid+","+sock)
	// Host to guest: through the device's socket.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("CONNECT 6000\n"))
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "OK ") {
		t.Fatalf("CONNECT answered %q, %v", line, err)
	}
	c.Write([]byte("ping from the host\n"))
	if line, err := r.ReadString('\n'); err != nil || line != "ping from the host\n" {
		t.Errorf("echo %q, %v", line, err)
	}
	c.Close()
	if s := g.finish(); s != 0 {
		g.failf("status %d", s)
	}
	if !strings.Contains(g.console.String(), "vsock-echo: got: hello from the guest") {
		g.failf("guest-to-host echo missing")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket %s left behind: %v", sock, err)
	}
}

// needNetAdmin skips (or, in the rig, fails) a test that creates TAP
// devices without the rights to.
func needNetAdmin(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		if _, err := os.Stat("/dev/net/tun"); err == nil {
			return
		}
	}
	msg := "creating a TAP device needs root (CAP_NET_ADMIN) and /dev/net/tun"
	if os.Getenv("CAPSULE_RIG") == "1" {
		t.Fatal(msg + ", which the rig provides")
	}
	t.Skip(msg)
}

func TestVirtioNetTAPPingBothWays(t *testing.T) {
	kvmtest.OpenHardware(t)
	needNetAdmin(t)
	g := startLinux(t, "capsule.action=net capsule.ip=10.77.0.2/24 capsule.peer=10.77.0.1", "net: ready",
		"--net", "tap:captest0,ip=10.77.0.1/24,mac=02:00:00:00:77:02")
	if out, err := exec.Command("ping", "-c", "2", "-W", "5", "10.77.0.2").CombinedOutput(); err != nil {
		t.Errorf("host ping of the guest: %v\n%s", err, out)
	}
	c, err := net.DialTimeout("tcp", "10.77.0.2:7000", 10*time.Second)
	if err != nil {
		g.stop()
		g.failf("TCP to the guest: %v", err)
	}
	c.Write([]byte("hello over tap\n"))
	c.Close()
	if s := g.finish(); s != 0 || !strings.Contains(g.console.String(), "net: got: hello over tap") {
		g.failf("status %d", s)
	}
	if _, err := net.InterfaceByName("captest0"); err == nil {
		t.Error("the TAP capsule created is still there after it exited")
	}
}

func TestVirtioNetUserHTTPBothWays(t *testing.T) {
	kvmtest.OpenHardware(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from the host")
	}))
	defer srv.Close()
	srvPort := srv.Listener.Addr().(*net.TCPAddr).Port
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fwdPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	g := startLinux(t, fmt.Sprintf("capsule.action=usernet capsule.peer=10.0.2.2:%d", srvPort), "usernet: ready",
		"--net", fmt.Sprintf("user,hostloopback=on,hostfwd=tcp:127.0.0.1:%d-:8080", fwdPort))
	// A raw exchange, not net/http: the guest's nc answers as soon as
	// the connection is accepted, maybe before the request is written,
	// which Go's HTTP client rejects as an unsolicited response.
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", fwdPort), 20*time.Second)
	if err != nil {
		g.stop()
		g.failf("connecting through hostfwd: %v", err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
	c.(*net.TCPConn).CloseWrite() // nc ends at the end of both directions
	answer, err := io.ReadAll(c)
	c.Close()
	if err != nil || !strings.HasSuffix(string(answer), "\r\n\r\nhello from the guest\n") {
		t.Errorf("hostfwd answer %q, %v", answer, err)
	}
	if s := g.finish(); s != 0 {
		g.failf("status %d", s)
	}
	for _, want := range []string{"usernet: address inet 10.0.2.15/24", "usernet: host page: hello from the host"} {
		if !strings.Contains(g.console.String(), want) {
			g.failf("console lacks %q", want)
		}
	}
}

// shareDir makes the host side of the share tests: ROOT/share (hello.txt,
// 64 MiB of random bytes in big.bin, links hostlink and hostrel to
// ROOT/outside), ROOT/outside/secret.txt and ROOT/outside-marker.
func shareDir(t *testing.T) (root, share string, big []byte) {
	t.Helper()
	root = t.TempDir()
	share = filepath.Join(root, "share")
	outside := filepath.Join(root, "outside")
	big = make([]byte, 64<<20)
	rand.Read(big)
	for _, err := range []error{
		os.Mkdir(share, 0o755),
		os.Mkdir(outside, 0o755),
		os.WriteFile(filepath.Join(share, "hello.txt"), []byte("hello from the host\n"), 0o644),
		os.WriteFile(filepath.Join(share, "big.bin"), big, 0o644),
		os.WriteFile(filepath.Join(outside, "secret.txt"), []byte("HOST SECRET\n"), 0o600),
		os.WriteFile(filepath.Join(root, "outside-marker"), nil, 0o644),
		os.Symlink(outside, filepath.Join(share, "hostlink")),
		os.Symlink("../outside/secret.txt", filepath.Join(share, "hostrel")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return root, share, big
}

// TestVirtioShare: the guest mounts a host directory over virtio-9p, reads
// and writes it, copies 64 MiB both ways intact, and cannot leave it or
// make a device node or a set-user-ID file in it. (The copy goes in 1 MiB
// reads and writes: with cp's 4 KiB, its 32768 9P round trips made the
// rig's nested SVM freeze on most runs.)
func TestVirtioShare(t *testing.T) {
	kvmtest.OpenHardware(t)
	root, share, big := shareDir(t)
	status, stdout, stderr := runLinux(t, "share capsule.tag=hostshare", "--memory", "256", "--share", share+":hostshare")
	if status != 0 || !strings.Contains(stdout, "share: done") {
		t.Fatalf("status %d, stderr %q\nconsole:\n%s", status, stderr, stdout)
	}
	for _, w := range []string{"share: hello.txt: hello from the host", "share: suid mode 755"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("console lacks %q:\n%s", w, stdout)
		}
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(share, name))
		if err != nil {
			t.Error(err)
		}
		return string(b)
	}
	if got := read("guest.txt"); got != "written by the guest\n" {
		t.Errorf("guest.txt = %q", got)
	}
	if got := read("dir/b"); got != "moved\n" {
		t.Errorf("dir/b = %q", got)
	}
	if _, err := os.Lstat(filepath.Join(share, "dir", "a")); !os.IsNotExist(err) {
		t.Errorf("dir/a after the rename: %v", err)
	}
	for link, target := range map[string]string{"link": "hello.txt", "esc": "/"} {
		if got, err := os.Readlink(filepath.Join(share, link)); err != nil || got != target {
			t.Errorf("%s: link to %q, %v; want %q", link, got, err, target)
		}
	}
	// The guest read big.bin and wrote it back as copy.bin: 64 MiB each
	// way.
	if copied, err := os.ReadFile(filepath.Join(share, "copy.bin")); err != nil || sha256.Sum256(copied) != sha256.Sum256(big) {
		t.Errorf("copy.bin differs from big.bin (%d bytes, %v)", len(copied), err)
	}
	if fi, err := os.Lstat(filepath.Join(share, "suid")); err != nil || fi.Mode() != 0o755 {
		t.Errorf("suid: %v, %v; want -rwxr-xr-x (chmod 4755 without the set-user-ID bit)", fi, err)
	}
	if fi, err := os.Lstat(filepath.Join(share, "fifo")); err != nil || fi.Mode().Type() != os.ModeNamedPipe {
		t.Errorf("fifo: %v, %v", fi, err)
	}
	if _, err := os.Lstat(filepath.Join(share, "null")); !os.IsNotExist(err) {
		t.Errorf("the guest made a device node: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "outside", "secret.txt")); string(b) != "HOST SECRET\n" {
		t.Error("the file outside the share changed")
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "outside")); len(ents) != 1 {
		t.Errorf("the directory outside the share holds %d entries", len(ents))
	}
}

// TestVirtioShareReadOnly: a ro share reads, and refuses every change.
func TestVirtioShareReadOnly(t *testing.T) {
	kvmtest.OpenHardware(t)
	_, share, _ := shareDir(t)
	before := dirState(t, share)
	status, stdout, stderr := runLinux(t, "roshare capsule.tag=ro", "--share", share+":ro,ro")
	if status != 0 || !strings.Contains(stdout, "share: write refused") {
		t.Fatalf("status %d, stderr %q\nconsole:\n%s", status, stderr, stdout)
	}
	if after := dirState(t, share); after != before {
		t.Errorf("the read-only share changed:\nbefore %s\nafter  %s", before, after)
	}
}

// dirState describes the entries of dir: names, modes, sizes and the
// contents of small files.
func dirState(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range ents {
		fi, err := os.Lstat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %v %d", e.Name(), fi.Mode(), fi.Size())
		if fi.Mode().IsRegular() && fi.Size() < 1024 {
			c, _ := os.ReadFile(filepath.Join(dir, e.Name()))
			fmt.Fprintf(&b, " %q", c)
		}
		b.WriteString("; ")
	}
	return b.String()
}
