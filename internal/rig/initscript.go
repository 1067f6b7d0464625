package rig

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
)

// runScriptPath is where the per-run archive puts the script that /init
// sources: it sets RIG_TAG and RIG_DIR and defines rig_setup and rig_test.
const runScriptPath = "/capsule-rig/run.sh"

// initScript is the guest's /init. Every line it prints for the rig starts
// with "$RIG_TAG: ": "up" once it runs, "run" just before the test starts,
// "exit=N" with the test's exit status, or "error: ..." when the setup fails.
const initScript = `#!/bin/sh
# /init of the capsule kvmrig guest, written by internal/rig.
/bin/busybox --install -s /bin
. ` + runScriptPath + `
say() { echo "$RIG_TAG: $*"; }
quit() {
	# The last close of the console waits until the UART has sent everything.
	exec </dev/null >/dev/null 2>&1
	poweroff -f
}
fail() {
	dmesg 2>/dev/null | tail -n 8
	say "error: $*"
	quit
}
say up
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The heartbeat on the second serial port tells the rig that the guest still
# runs (see freeze.go).
( while :; do echo; sleep 5; done ) >/dev/ttyS1 2>/dev/null &
# The per-run archive may have put the test binary under /tmp; the rootfs
# is a tmpfs already, so only mount one on an empty /tmp.
[ -n "$(ls -A /tmp)" ] || mount -t tmpfs -o mode=1777 tmpfs /tmp
for m in irqbypass kvm kvm-amd tun; do
	insmod /lib/modules/$m.ko || fail "insmod $m.ko failed"
done
[ -c /dev/kvm ] || fail "/dev/kvm did not appear after loading kvm-amd"
[ -d /sys/module/kvm_amd ] || fail "kvm_amd is not loaded"
chmod 666 /dev/kvm
# Tests use the loopback interface (servers on 127.0.0.1).
ip link set lo up || fail "ip link set lo up failed"
rig_setup
cd "$RIG_DIR" || fail "cd $RIG_DIR failed"
say run
rig_test </dev/null
rc=$?
say "exit=$rc"
quit
`

// guestPath is the PATH of the test in the guest.
const guestPath = "/bin:/sbin:/usr/bin:/usr/sbin"

// newTag returns a random marker for the rig's console lines, so that test
// output cannot be mistaken for them.
func newTag() (string, error) {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random tag: %w", err)
	}
	return "capsule-rig-" + hex.EncodeToString(b), nil
}

// runScript returns the per-run script sourced by /init: it sets RIG_TAG
// and RIG_DIR and defines rig_setup, which /init runs after its own setup,
// and rig_test, which runs the test. moduleTree is the host path of the
// kernel's module tree, for the host-root mode.
func runScript(tag string, cfg Config, moduleTree string) string {
	path := guestPath
	if cfg.HostRoot {
		path = hostRootPath
	}
	vars := []string{"PATH=" + path, "HOME=/root", "TMPDIR=/tmp"}
	for _, kv := range cfg.Env {
		if key, _, _ := strings.Cut(kv, "="); key != "" && key != EnvInRig {
			vars = append(vars, kv)
		}
	}
	vars = append(vars, EnvInRig+"=1")
	var b strings.Builder
	fmt.Fprintf(&b, "RIG_TAG=%s\n", shellQuote(tag))
	fmt.Fprintf(&b, "RIG_DIR=%s\n", shellQuote(cfg.Dir))
	if cfg.HostRoot {
		b.WriteString(hostRootScript(cfg, vars, moduleTree))
		return b.String()
	}
	b.WriteString("rig_setup() { :; }\n")
	fmt.Fprintf(&b, "rig_test() {\n\tenv -i %s \\\n\t\t%s\n}\n", shellJoin(vars), shellJoin(append([]string{cfg.Binary}, cfg.Args...)))
	return b.String()
}
