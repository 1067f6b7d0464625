// Command images builds the Linux guest images of capsule's tests (see
// package internal/images):
//
//	go run ./internal/cmd/images all
//	go run ./internal/cmd/images initramfs -o testdata/images/initramfs.cpio.gz
//	go run ./internal/cmd/images agent-initramfs --agent /path/to/capsule-agent
//
// Run it from within the module; see images -h.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/capsule-vm/capsule/internal/guestimage"
	"github.com/capsule-vm/capsule/internal/images"
	"github.com/spf13/pflag"
)

const usage = `Usage: go run ./internal/cmd/images TARGET [-o PATH] [-j N] [--agent FILE]

Builds a Linux guest image for capsule, or takes it from the cache, and
copies it to PATH. Targets and what they write (default PATH in brackets,
relative to the module root):

  initramfs        a file [testdata/images/initramfs.cpio.gz]: the test
                   guests' gzip newc archive with busybox, /bin/capsule-io
                   and /init from testdata/initramfs
  agent-initramfs  a file [testdata/images/agent.cpio.gz]: gzip newc archive
                   with the guest agent as /init (cmd/capsule-agent built
                   static, or --agent FILE)
  stock-kernel     a directory [testdata/images]: stock.bzImage, Debian's
                   linux-image-cloud-amd64 kernel, the one the rig boots, and
                   stock-modules.cpio, its pvpanic modules
  minimal-kernel   a directory [testdata/images]: minimal.bzImage and
                   minimal.vmlinux (stripped, PVH note), built from
                   linux-source-6.1 and testdata/kernel/minimal.config
                   (a few minutes on a cache miss)
  default-kernel   a directory [testdata/images]: default.bzImage and
                   default.vmlinux, capsule's default guest kernel: the
                   minimal kernel plus testdata/kernel/default.config
                   (a few minutes on a cache miss)
  all              a directory [testdata/images]: all of the above; it
                   leaves agent-initramfs out while there is no
                   cmd/capsule-agent and no --agent

An explicit -o is relative to the current directory.

Environment:
  CAPSULE_IMAGES_CACHE  cache directory (default $XDG_CACHE_HOME/capsule/images
                        or ~/.cache/capsule/images)
  CAPSULE_RIG_CACHE     the rig's cache, which holds the stock kernel
  CAPSULE_RIG_KERNEL    pin the stock kernel's package

Missing Debian packages are installed with apt-get when run as root.

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := pflag.NewFlagSet("images", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	out := fs.StringP("output", "o", "", "output file, or directory for the targets with several files")
	jobs := fs.IntP("jobs", "j", 0, "make -j for the kernel build (default: the number of CPUs)")
	agent := fs.String("agent", "", "static guest agent binary for agent-initramfs to pack instead of building cmd/capsule-agent")
	fs.Usage = func() { fmt.Fprint(stderr, usage+fs.FlagUsages()) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "images: %v (see -h)\n", err)
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	target := fs.Arg(0)
	if images.Outputs(target) == nil {
		fmt.Fprintf(stderr, "images: unknown target %q\n\n", target)
		fs.Usage()
		return 2
	}
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintf(stderr, "images: %v\n", err)
		return 1
	}
	root, ok := guestimage.ModuleRoot(wd)
	if !ok {
		fmt.Fprintf(stderr, "images: run this inside the %s module (no go.mod declaring it above %s)\n", guestimage.Module, wd)
		return 2
	}
	dst := *out
	if dst == "" {
		dst = filepath.Join(root, "testdata", "images")
		if outs := images.Outputs(target); len(outs) == 1 {
			dst = filepath.Join(dst, outs[0])
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	opts := images.Options{Root: root, Jobs: *jobs, Stderr: stderr, Agent: *agent}
	if _, err := images.Build(ctx, opts, target, dst); err != nil {
		fmt.Fprintf(stderr, "images: %v\n", err)
		return 1
	}
	return 0
}
