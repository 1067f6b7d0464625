// Package images builds the Linux guest images that capsule boots: its
// default guest kernel and agent initramfs, and the test guests' images.
//
//	stock-kernel     stock.bzImage: Debian's linux-image-cloud-amd64 kernel,
//	                 the same package the nested rig (internal/rig) boots,
//	                 fetched with apt-get download and dpkg-deb -x, never
//	                 installed
//	minimal-kernel   minimal.bzImage and minimal.vmlinux (stripped ELF with
//	                 the PVH entry note), built from Debian's linux-source-6.1
//	                 with make tinyconfig and the fragment
//	                 testdata/kernel/minimal.config
//	default-kernel   default.bzImage and default.vmlinux, capsule's default
//	                 guest kernel: built as the minimal kernel with
//	                 testdata/kernel/default.config merged after
//	                 minimal.config
//	initramfs        initramfs.cpio.gz: a deterministic gzip newc archive,
//	                 written in Go, holding a static busybox, the static
//	                 helper /bin/capsule-io (testdata/initramfs/capsule-io.c)
//	                 and /init (testdata/initramfs/init)
//	agent-initramfs  agent.cpio.gz: a deterministic gzip newc archive
//	                 holding the guest agent (cmd/capsule-agent, built with
//	                 CGO_ENABLED=0 go build -trimpath -buildvcs=false
//	                 -ldflags '-s -w', or a given binary) as /init
//
// It is driven by internal/cmd/images (go run ./internal/cmd/images all).
//
// # Cache
//
// Each result is kept in a cache directory, $CAPSULE_IMAGES_CACHE or
// $XDG_CACHE_HOME/capsule/images (~/.cache/capsule/images), as
// <cache>/<target>-<key>/, where key is a hash of the target's inputs:
//
//	minimal-kernel   the fragment, the linux-source-6.1 package version, and
//	                 the first lines of gcc --version and ld --version
//	default-kernel   the same, with both fragments
//	initramfs        /init, capsule-io.c, the busybox binary, the first line
//	                 of gcc --version and the static C library (libc.a)
//	agent-initramfs  the agent binary, which go build makes afresh each
//	                 time (quick, from Go's build cache): it changes with
//	                 the agent's sources, its dependencies and the toolchain
//
// plus a recipe version that changes with the build steps. A result is
// built in a private temporary directory under <cache>, while holding an
// flock on <cache>/<target>.lock, and published by renaming that directory,
// so concurrent builds neither clash nor see half a result. A kernel's
// make log is <cache>/<target>-<key>/build.log, or <cache>/<target>-<key>.log
// after a failed build.
//
// The stock kernel is the exception: it lives in the rig's cache
// ($CAPSULE_RIG_CACHE, default ~/.cache/capsule/rig), keyed by package and
// version, so that the rig and the tests share one download
// (CAPSULE_RIG_KERNEL pins the package for both).
//
// Outputs are copies of the cached files (regular files, fresh mtimes),
// written through a temporary file and a rename.
//
// # Host requirements
//
// Debian (bookworm) with apt. Missing packages are installed with apt-get
// when running as root, otherwise the build stops and names them:
// linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev lz4
// xz-utils for the kernels, gcc libc6-dev busybox-static for the test
// initramfs, apt-get and dpkg-deb for the stock kernel; the go command for
// the agent initramfs.
package images
