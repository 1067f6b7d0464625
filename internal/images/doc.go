// Package images builds the Linux guest images that capsule's tests boot:
//
//	stock-kernel    stock.bzImage: Debian's linux-image-cloud-amd64 kernel,
//	                the same package the nested rig (internal/rig) boots,
//	                fetched with apt-get download and dpkg-deb -x, never
//	                installed
//	minimal-kernel  minimal.bzImage and minimal.vmlinux (stripped ELF with
//	                the PVH entry note), built from Debian's linux-source-6.1
//	                with make tinyconfig and the fragment
//	                testdata/kernel/minimal.config
//	initramfs       initramfs.cpio.gz: a deterministic gzip newc archive,
//	                written in Go, holding a static busybox, the static helper
//	                /bin/capsule-io (testdata/initramfs/capsule-io.c) and
//	                /init (testdata/initramfs/init)
//
// It is driven by internal/cmd/images (go run ./internal/cmd/images all).
//
// # Cache
//
// Each result is kept in a cache directory, $CAPSULE_IMAGES_CACHE or
// $XDG_CACHE_HOME/capsule/images (~/.cache/capsule/images), as
// <cache>/<target>-<key>/, where key is a hash of the target's inputs:
//
//	minimal-kernel  the fragment, the linux-source-6.1 package version, and
//	                the first lines of gcc --version and ld --version
//	initramfs       /init, capsule-io.c, the busybox binary, the first line
//	                of gcc --version and the static C library (libc.a)
//
// plus a recipe version that changes with the build steps. A result is
// built in a private temporary directory under <cache>, while holding an
// flock on <cache>/<target>.lock, and published by renaming that directory,
// so concurrent builds neither clash nor see half a result. The kernel's
// make log is <cache>/minimal-kernel-<key>/build.log, or
// <cache>/minimal-kernel-<key>.log after a failed build.
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
// xz-utils for the minimal kernel, gcc libc6-dev busybox-static for the
// initramfs, apt-get and dpkg-deb for the stock kernel.
package images
