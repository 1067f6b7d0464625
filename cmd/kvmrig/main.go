// Command kvmrig runs a Go test binary inside a nested QEMU guest that has a
// real /dev/kvm (kvm_amd), for hosts without a usable /dev/kvm. It is meant
// for go test -exec:
//
//	go build -o bin/kvmrig ./cmd/kvmrig
//	go test -exec "$PWD/bin/kvmrig" ./kvm
//
// The first argument is the test binary; the others are passed to it
// untouched. Options come from CAPSULE_RIG_* environment variables; see
// kvmrig -h and package internal/rig.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/capsule-vm/capsule/internal/rig"
)

const usage = `usage: kvmrig [-prepare] TESTBINARY [ARG...]

kvmrig runs TESTBINARY with ARGs inside a nested QEMU (TCG) guest whose
/dev/kvm is a real kvm_amd, in the same working directory, streams its output
and exits with its exit status. Use it as go test's -exec program:

	go build -o bin/kvmrig ./cmd/kvmrig
	go test -exec "$PWD/bin/kvmrig" ./kvm

TESTBINARY must be static (go test builds without cgo give static binaries;
set CGO_ENABLED=0 for packages that import net or os/user). The test sees
CAPSULE_RIG=1 and the host's CAPSULE_* variables. Files under
<module>/testdata, <module>/bin and <package>/testdata are copied into the
guest at the same paths; nothing is copied back.

Flags:
  -prepare   fetch the kernel and build the cached image, then exit
  -h         show this help

Environment:
  CAPSULE_RIG_CACHE    cache directory (default $XDG_CACHE_HOME/capsule/rig
                       or ~/.cache/capsule/rig)
  CAPSULE_RIG_TIMEOUT  limit for one run, a Go duration (default 15m)
  CAPSULE_RIG_MEM      guest memory, as for qemu -m (default 2G)
  CAPSULE_RIG_CPUS     guest vCPUs (default 1: two can freeze TCG's nested SVM)
  CAPSULE_RIG_VERBOSE  1: show the kernel log, QEMU warnings and timings
  CAPSULE_RIG_QEMU     1: add the host's qemu-system-x86_64 to the guest at
                       /usr/bin, with its libraries and the microvm/pc
                       firmware (a cached ~19 MB archive, ~1 s more boot), so
                       the test can run its own KVM guests with QEMU, e.g.
                       CAPSULE_RIG_QEMU=1 kvmrig /bin/busybox sh -c \
                         'qemu-system-x86_64 -version'
  CAPSULE_RIG_HOSTROOT 1: run the test in the host's root filesystem, shared
                       read-only (virtio-fs) under a tmpfs overlay, so it can
                       run the host's programs (podman, crun...); writes stay
                       in the guest. Needs root and /usr/lib/qemu/virtiofsd.
  CAPSULE_RIG_KERNEL   Debian kernel package to use (default: the dependency
                       of linux-image-cloud-amd64, resolved once a day)

Host needs: qemu-system-x86_64 (apt-get install qemu-system-x86),
busybox-static, apt-get/apt-cache and dpkg-deb.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("kvmrig", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	prepare := fs.Bool("prepare", false, "fetch the kernel and build the cached image, then exit")
	// Parsing stops at the first non-flag argument, the test binary, so
	// its -test.* arguments stay untouched.
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if !*prepare && fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	cfg, err := rig.ConfigFromEnv(os.Environ())
	if err != nil {
		fmt.Fprintf(stderr, "kvmrig: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(),
		os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer stop()
	if *prepare {
		return prepareOnly(ctx, cfg, stderr)
	}
	cfg.Binary, cfg.Args = fs.Arg(0), fs.Args()[1:]
	code, err := rig.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "kvmrig: %v\n", err)
	}
	return code
}

func prepareOnly(ctx context.Context, cfg rig.Config, stderr io.Writer) int {
	img, err := rig.Prepare(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "kvmrig: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "kvmrig: ready: kernel %s (%s), base %s\n", img.KernelID, img.Kernel, img.Base)
	return 0
}
