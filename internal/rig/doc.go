// Package rig runs a Go test binary inside a nested guest that has a real
// /dev/kvm, for hosts whose own /dev/kvm is missing or unusable.
//
// The rig boots Debian's linux-image-cloud-amd64 kernel in
// qemu-system-x86_64 with TCG, emulating an AMD EPYC CPU (which has SVM and
// NPT), and loads the kernel's own irqbypass, kvm and kvm-amd modules from an
// initramfs. The guest's /dev/kvm is then a hardware-style kvm_amd, and the
// test binary runs there with its working directory, arguments and CAPSULE_*
// environment variables taken from the host. Its output is streamed to
// stdout as it arrives and its exit status is returned.
//
// It is meant to be used through cmd/kvmrig as a go test -exec program:
//
//	go build -o bin/kvmrig ./cmd/kvmrig
//	go test -exec "$PWD/bin/kvmrig" ./kvm
//
// # What the guest sees
//
// The initrd is concatenated cpio archives. The first, cached, gzip archive
// holds a static busybox, /dev/console, the three kernel modules and /init.
// With CAPSULE_RIG_QEMU=1, a second cached gzip archive follows (see QEMU in
// the guest). The last, built for each run, holds the test binary and some files
// of the Go module at the same absolute paths as on the host, so that
// relative paths in tests keep working: the regular files under
// <module root>/testdata, <module root>/bin and <package dir>/testdata (files
// over 64 MiB are skipped) and the package directory itself. Nothing is
// copied back: files a test writes (profiles, coverage data) stay in the
// guest.
//
// The test runs as root with stdin from /dev/null and an environment made of
// PATH, HOME=/root, TMPDIR=/tmp, the host's CAPSULE_* and Go runtime
// (GODEBUG, GOTRACEBACK, GOGC, GOMEMLIMIT, GOMAXPROCS) variables, and
// CAPSULE_RIG=1, which tests use to know that they run in the rig and must
// not skip for lack of KVM. The rig requires static test binaries (no ELF
// PT_INTERP): the guest has no C library. Go test binaries of packages that
// do not use cgo are static; build with CGO_ENABLED=0 when a package imports
// net or os/user.
//
// # QEMU in the guest
//
// CAPSULE_RIG_QEMU=1 adds the host's qemu-system-x86_64 to the guest, so
// that a test (or a static busybox sh -c '...' run as the "test binary")
// can boot its own guests on the nested kvm_amd with QEMU, for example to
// compare boot times with capsule:
//
//	CAPSULE_RIG_QEMU=1 bin/kvmrig /bin/busybox sh -c 'qemu-system-x86_64 -version'
//
// QEMU goes to /usr/bin, where it finds its firmware (../share/qemu and
// ../share/seabios), with the shared libraries ldd lists at the same paths
// as on the host, the dynamic loader /lib64/ld-linux-x86-64.so.2 included,
// and the firmware of -M microvm and -M pc:
// /usr/share/qemu/{bios-microvm.bin,qboot.rom,linuxboot_dma.bin,
// linuxboot.bin,pvh.bin,kvmvapic.bin} and /usr/share/seabios/bios-256k.bin
// (copied through symlinks), and QEMU's virtiofsd at /usr/lib/qemu/virtiofsd
// with its libraries when the host has it. QEMU's loadable modules are left out: TCG
// (accel-tcg) and the display, audio and block modules are unavailable, and
// -nodefaults avoids option ROMs (VGA, NIC) that are not there. The archive
// is cached as <cache>/qemu-<hash>.cpio.gz, keyed by the qemu-system-x86
// package version and the files' sizes and mtimes; it is about 19 MB (50 MB
// unpacked) and adds about a second to the guest's boot. Only the test
// binary must be static: QEMU brings its own C library.
//
// # The host's root
//
// CAPSULE_RIG_HOSTROOT=1 runs the test in the host's own root filesystem
// instead of the initramfs, so that it can use the host's programs as
// Debian installed them (podman, conmon, crun, containerd, runsc, perl...)
// with kvm_amd underneath:
//
//	CAPSULE_RIG_HOSTROOT=1 bin/kvmrig /bin/sh -c 'crun --version; ls -l /dev/kvm'
//
// The rig starts QEMU's virtiofsd (/usr/lib/qemu/virtiofsd) next to the
// guest's QEMU, in a private mount namespace where the host's root
// filesystem, without the filesystems mounted on it (/proc, /sys, /dev and
// the like), is bound read-only; it serves it as the virtio-fs tag
// "hostroot" (cache=always: the guest caches freely). The guest's RAM is
// then a shared memfd, as vhost-user requires. Nothing is copied: files are
// read as the test opens them.
//
// The guest loads virtio-pci, fuse, virtiofs and overlay from the same
// kernel package (they come in the per-run archive) and mounts the share
// read-only at /hostroot/host, with an overlay on top whose upper and work
// directories are in a tmpfs (/hostroot/rw), at /hostroot/root. In the
// overlay it mounts proc, sysfs, cgroup2 at /sys/fs/cgroup, devtmpfs at
// /dev (with /dev/kvm, a new devpts instance at /dev/pts and a tmpfs at
// /dev/shm), an empty tmpfs at /run, securityfs, a tmpfs at
// /var/lib/containers (overlayfs cannot be the upper layer of podman's
// overlay storage), and the guest's own /tmp, which holds the per-run
// archive's files below /tmp (go test's binary). The test binary, the
// working directory and the module's testdata and bin are found at their
// paths: in the share when they are on the host's root filesystem (the
// host's live files then, those over 64 MiB included), or else bound from
// the per-run archive. The kernel package's
// whole module tree, kept in the cache and indexed by busybox depmod,
// appears through the share at /lib/modules/<version>, in the guest and in
// the overlay, and the guest's busybox modprobe is the kernel's: modules
// load on demand (ip link add ... type veth or bridge, nf_tables). This
// needs the cache on the host's root filesystem. The test runs chrooted
// there, through the host's /bin/sh, with Debian's PATH for root
// (/usr/local/sbin to /bin) and the usual environment. Everything it writes (/etc, /var, /usr...) lands in the tmpfs, in guest
// RAM (CAPSULE_RIG_MEM), and is gone when the guest stops: no write
// reaches the host, whose files the guest cannot write even by remounting
// the share. The test binary need not be static in this mode: the host's
// root has the C library.
//
// The mode needs root on the host (virtiofsd and the mount namespace). It
// adds about 0.3 s to the guest's setup (modules and mounts) and 0.1 s to
// the test's start; the boot itself is as fast (2.2-2.9 s to /init either
// way on a 2-core host), and module trees that the share has are not
// copied into the initrd. Filesystems mounted on the host below / (a
// separate /usr or /var, say) are not shared, and virtiofsd passes no
// extended attributes (file capabilities included). CAPSULE_RIG_QEMU is
// not needed with it: the host's QEMU is there.
//
// # Environment
//
// Run options come from the environment, because go test passes the test
// binary and its -test.* flags as the only arguments:
//
//	CAPSULE_RIG_CACHE    cache directory (default $XDG_CACHE_HOME/capsule/rig,
//	                     or ~/.cache/capsule/rig)
//	CAPSULE_RIG_TIMEOUT  limit for one run, as a Go duration (default 15m)
//	CAPSULE_RIG_MEM      guest memory, as for qemu -m (default 2G)
//	CAPSULE_RIG_CPUS     guest vCPUs (default 1: two can freeze TCG's nested SVM)
//	CAPSULE_RIG_VERBOSE  1 shows the kernel log, QEMU warnings and timings
//	CAPSULE_RIG_QEMU     1 adds qemu-system-x86_64 to the guest (above)
//	CAPSULE_RIG_HOSTROOT 1 runs the test in the host's root filesystem,
//	                     read-only under a tmpfs overlay (above)
//	CAPSULE_RIG_KERNEL   kernel package to use, e.g.
//	                     linux-image-6.1.0-57-cloud-amd64 (default: resolved
//	                     from linux-image-cloud-amd64 with apt-cache, and
//	                     re-resolved once a day)
//
// # Cache
//
// The kernel package is fetched with apt-get download and unpacked with
// dpkg-deb -x, without installing it; vmlinuz, the modules the rig and the
// test guests load, and the package's module tree (lib/modules/<version>,
// about 90 MB, indexed by busybox depmod) are kept, in
// <cache>/kernel/<package>_<version> (FetchKernel exports this, for
// internal/images' stock kernel); a kernel staged by an older rig is
// fetched again once and only gains the files it lacked. The base archive is kept as
// <cache>/base-<hash>.cpio.gz, keyed by a hash of its inputs. Both are built
// under an flock on <cache>/lock and published by an atomic rename, so
// several rigs (go test -p) can run at once. Per-run files live in a private
// temporary directory that is removed when the run ends.
//
// # Host requirements
//
// qemu-system-x86_64 (qemu-system-x86), a static busybox (busybox-static),
// apt-get, apt-cache and dpkg-deb; for CAPSULE_RIG_HOSTROOT, root and
// /usr/lib/qemu/virtiofsd (qemu-system-common). The guest's modules are kvm-amd; TCG
// emulates the AMD CPU whatever the host CPU is.
package rig
