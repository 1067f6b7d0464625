package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/capsule-vm/capsule/internal/kvmtest"
)

// image returns a guest image built by make images.
func image(t *testing.T, name string) string {
	return kvmtest.File(t, "../../testdata/images/"+name, "images")
}

func TestBadLinuxInputsAreClearErrors(t *testing.T) {
	kernel := image(t, "stock.bzImage")
	initrd := image(t, "initramfs.cpio.gz")
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	whole, err := os.ReadFile(kernel)
	if err != nil {
		t.Fatal(err)
	}
	truncated := write("truncated.bzImage", whole[:len(whole)/2])
	empty := write("empty.img", nil)
	corrupt := write("corrupt.img", bytes.Repeat([]byte("not an initramfs "), 1000))
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"truncated bzImage", []string{"--kernel", truncated, "--initrd", initrd}, "truncated.bzImage: truncated"},
		{"0-byte initrd", []string{"--kernel", kernel, "--initrd", empty}, "empty.img: empty file"},
		{"corrupt initrd", []string{"--kernel", kernel, "--initrd", corrupt}, "corrupt.img: not a cpio archive"},
		{"image larger than guest RAM", []string{"--kernel", kernel, "--initrd", kernel, "--memory", "8"}, "larger than the 8 MiB of guest RAM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, _, stderr := runMain(append([]string{"run"}, tc.args...)...)
			if status != 1 || !strings.Contains(stderr, tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Fatalf("status %d stderr %q; want 1 and one line with %q", status, stderr, tc.want)
			}
		})
	}
}

func TestLinuxGuestStatuses(t *testing.T) {
	kvmtest.OpenHardware(t)
	bin := binary(t)
	kernel, initrd := image(t, "minimal.bzImage"), image(t, "initramfs.cpio.gz")
	base := "console=ttyS0 quiet reboot=k panic=-1 "
	for _, tc := range []struct {
		name    string
		cmdline string
		extra   []string
		status  int
		stderr  string
	}{
		{"exit port status becomes capsule's", base + "capsule.exit=9", nil, 9, "(exit port)"},
		{"reboot exits 0", base + "capsule.action=reboot", nil, 0, "(reset)"},
		{"timeout exits 124", base + "capsule.action=spin", []string{"--timeout", "20s"}, 124, "--timeout 20s reached"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"run", "--kernel", kernel, "--initrd", initrd, "--cmdline", tc.cmdline}, tc.extra...)
			cmd := capsuleCmd(t, bin, args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			if s := exitStatus(t, err); s != tc.status || !strings.Contains(stderr.String(), tc.stderr) {
				t.Fatalf("exit status %d stderr %q; want %d and %q\nconsole:\n%s", s, stderr.String(), tc.status, tc.stderr, stdout.String())
			}
			if !strings.Contains(stdout.String(), "capsule-init: up") {
				t.Fatalf("the init never ran:\n%s", stdout.String())
			}
		})
	}
}

func TestSIGTERMStopsALinuxGuest(t *testing.T) {
	kvmtest.OpenHardware(t)
	cmd := capsuleCmd(t, binary(t), "run", "--kernel", image(t, "minimal.vmlinux"), "--initrd", image(t, "initramfs.cpio.gz"),
		"--cpus", "2", "--cmdline", "console=ttyS0 quiet panic=-1 capsule.action=spin")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	spinning := false
	for sc.Scan() {
		if strings.Contains(sc.Text(), "capsule-init: spinning") {
			spinning = true
			break
		}
	}
	if !spinning {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("guest never reached its spin loop (stderr %q)", stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	go func() { // keep draining the console so the VMM never blocks on it
		for sc.Scan() {
		}
	}()
	if s := exitStatus(t, cmd.Wait()); s != 128+int(syscall.SIGTERM) {
		t.Fatalf("exit status %d, want %d (stderr %q)", s, 128+int(syscall.SIGTERM), stderr.String())
	}
	if err := syscall.Kill(cmd.Process.Pid, 0); err == nil {
		t.Fatal("capsule still running after Wait")
	}
}
