package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capsule-vm/capsule/internal/cpio"
	"github.com/capsule-vm/capsule/internal/kvmtest"
)

// featuresInit replaces the test initramfs's /init to check that the
// default kernel has what testdata/kernel/default.config promises the
// guest agent and container programs: it prints "ok: CHECK" or
// "FAIL: CHECK" for each and exits through the exit port with 1 if any
// failed.
const featuresInit = `#!/bin/sh
export PATH=/bin
busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
busybox mount -t devtmpfs devtmpfs /dev
fail=0
check() {
	if "$@" >/dev/null 2>&1; then echo "ok: $*"; else echo "FAIL: $*"; fail=1; fi
}
for fs in tmpfs overlay 9p cgroup2 devpts; do
	check grep -qw $fs /proc/filesystems
done
# overlayfs over tmpfs: a lower directory removed and made again must come
# back empty (overlayfs marks it opaque with a trusted.* xattr on tmpfs)
busybox mkdir -p /t && busybox mount -t tmpfs tmpfs /t
busybox mkdir -p /t/lower/d /t/upper /t/work /t/merged && echo x >/t/lower/d/f
check busybox mount -t overlay overlay -o lowerdir=/t/lower,upperdir=/t/upper,workdir=/t/work /t/merged
check busybox rm -r /t/merged/d
check busybox mkdir /t/merged/d
check busybox test ! -e /t/merged/d/f
busybox mkdir -p /dev/pts /dev/shm
check busybox mount -t devpts -o ptmxmode=0666 devpts /dev/pts
check busybox test -c /dev/pts/ptmx
check busybox mount -t tmpfs tmpfs /dev/shm
check busybox mount -t cgroup2 cgroup2 /sys/fs/cgroup
for c in cpuset cpu memory pids; do
	check grep -qw $c /sys/fs/cgroup/cgroup.controllers
done
check busybox unshare -U -p -n -i -u -m -f true
check grep -q '^Seccomp:' /proc/self/status
check busybox test -e /proc/sys/kernel/hostname
check busybox test -e /proc/sysrq-trigger
check busybox ls /sys/bus/platform/drivers/pvpanic-mmio/QEMU0001:00
echo "features: fail=$fail"
exec </dev/null >/dev/null 2>&1
capsule-io outb 0xf4 $fail
busybox reboot -f
`

// withInit returns an initrd that is the test initramfs with /init
// replaced by script (a second archive appended, which Linux unpacks over
// the first).
func withInit(t *testing.T, script string) string {
	t.Helper()
	base, err := os.ReadFile(image(t, "initramfs.cpio.gz"))
	if err != nil {
		t.Fatal(err)
	}
	// Linux takes an uncompressed archive after a compressed one only at a
	// 4-byte-aligned offset; zeros between archives are skipped.
	for len(base)%4 != 0 {
		base = append(base, 0)
	}
	var extra bytes.Buffer
	w := cpio.NewWriter(&extra)
	w.Bytes("init", 0o755, []byte(script))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(t.TempDir(), "initrd")
	if err := os.WriteFile(initrd, append(base, extra.Bytes()...), 0o644); err != nil {
		t.Fatal(err)
	}
	return initrd
}

func TestDefaultKernelFeatures(t *testing.T) {
	kvmtest.OpenHardware(t)
	cmd := capsuleCmd(t, binary(t), "run", "--kernel", image(t, "default.vmlinux"), "--initrd", withInit(t, featuresInit),
		"--timeout", "120s", "--cmdline", "console=ttyS0 quiet reboot=k panic=-1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	s := exitStatus(t, cmd.Run())
	out := strings.ReplaceAll(stdout.String(), "\r", "")
	if s != 0 || !strings.Contains(out, "features: fail=0") {
		var failed []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "FAIL: ") {
				failed = append(failed, l)
			}
		}
		t.Fatalf("exit status %d stderr %q; failed checks:\n%s\nconsole:\n%s", s, stderr.String(), strings.Join(failed, "\n"), out)
	}
}

// TestDefaultKernelPanicAndPowerOff checks what ACPI is in the default
// kernel for: pvpanic (QEMU0001 in capsule's DSDT) reports a panic, and
// reboot(2)'s power-off (\_S5) ends the VM.
func TestDefaultKernelPanicAndPowerOff(t *testing.T) {
	kvmtest.OpenHardware(t)
	bin, kernel, initrd := binary(t), image(t, "default.vmlinux"), image(t, "initramfs.cpio.gz")
	for _, tc := range []struct {
		action, stderr string
		status         int
		console        string
	}{
		{"panic", "(guest panic)", 122, "capsule-init: panicking"},
		{"poweroff", "(power off)", 0, "capsule-init: up"},
	} {
		t.Run(tc.action, func(t *testing.T) {
			cmd := capsuleCmd(t, bin, "run", "--kernel", kernel, "--initrd", initrd, "--timeout", "120s",
				"--cmdline", "console=ttyS0 quiet reboot=k panic=-1 capsule.action="+tc.action)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			s := exitStatus(t, cmd.Run())
			if s != tc.status || !strings.Contains(stderr.String(), tc.stderr) || !strings.Contains(stdout.String(), tc.console) {
				t.Fatalf("exit status %d stderr %q; want %d and %q\nconsole:\n%s", s, stderr.String(), tc.status, tc.stderr, stdout.String())
			}
		})
	}
}
