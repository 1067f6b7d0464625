SHELL := /bin/bash
# capsule — build, demo and tests. Run as root on Debian (deps uses apt-get).
#
#   make            build bin/capsule, bin/kvmrig, bin/capsule-agent and the test guests
#   make demo       install what is missing, build, boot Debian's stock Linux kernel
#                   with the test initramfs (through the nested rig without hardware KVM)
#   make test       install what is missing, build, run every test (host + rig)
#   make images     fetch/build the Linux guest images into testdata/images (cached)
#   make install    install bin/capsule, the default guest kernel and the agent
#                   initramfs under PREFIX (/usr/local; DESTDIR honoured)
#   make uninstall  remove what make install put there
#   make bench      boot-time benchmark against QEMU, in the rig
#   make bench-io   virtio-blk and virtio-net benchmark against QEMU, in the rig
#   make bench-console  quiet and verbose boots and the console's output rate
#                   against QEMU, in the rig
#   make bench-run  capsule run --rootfs ROOT -- true, phase by phase, in the rig
#   make bench-fs   shared-directory benchmark: capsule's virtio-9p against
#                   QEMU's virtio-9p and virtiofsd, in the rig
#   make soak       verbose boots of each kernel, SOAK_N times each, in the rig
#                   (not in make test)
#   make fuzz-long  every fuzz target for much longer (nightly; not in make test)

GO       ?= go
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
export CGO_ENABLED = 0
LDFLAGS_BUILD = -s -w -X main.version=$(VERSION)
GOFLAGS_BUILD = -trimpath -ldflags "$(LDFLAGS_BUILD)"
# capsule's Go heap without transparent huge pages (GODEBUG=disablethp=1):
# where THP is `always`, a fault anywhere in a fresh 2 MiB of heap maps all
# of it, and the pages the runtime never used stay resident while it counts
# them as released (2-3 MiB of the VMM's overhead in the rig). Go 1.26
# accepts disablethp in no //go:debug line nor go.mod godebug, so it goes
# into the binary's default GODEBUG, after whatever default the go command
# computes; a GODEBUG in the environment still overrides it.
comma := ,
CAPSULE_GODEBUG = $(shell $(GO) list -f '{{.DefaultGODEBUG}}' ./cmd/capsule)
CAPSULE_LDFLAGS = -X=runtime.godebugDefault=$(CAPSULE_GODEBUG)$(if $(CAPSULE_GODEBUG),$(comma))disablethp=1

# Debian packages: gcc/binutils for the test guests, qemu/busybox/cpio for
# the nested real-KVM rig and the initramfs, linux-source and its build
# tools for the minimal guest kernel; podman, conmon and crun for
# test-rig-podman, which runs them in the rig's host-root mode.
DEB_PKGS = gcc libc6-dev binutils make qemu-system-x86 busybox-static cpio ca-certificates \
	linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev lz4 xz-utils \
	e2fsprogs e2fsck-static podman conmon crun netavark aardvark-dns
# Packages of the rig/e2e tests run inside the nested guest.
RIG_PKGS = ./kvm ./vmm ./cmd/capsule ./agent

GUESTS = $(patsubst %.S,%.elf,$(wildcard testdata/guests/*.S))
# Hostile C guests (testdata/guests/hostile): every NAME.c but kit.c is a
# guest, linked with the kit (start.S, kit.c) into NAME.elf.
HOSTILE = testdata/guests/hostile
HOSTILE_GUESTS = $(patsubst %.c,%.elf,$(filter-out $(HOSTILE)/kit.c,$(wildcard $(HOSTILE)/*.c)))
HOSTILE_CFLAGS = -ffreestanding -nostdlib -static -no-pie -O2 -mno-red-zone -fno-stack-protector -fno-pic \
	-mgeneral-regs-only -fno-asynchronous-unwind-tables -fno-tree-loop-distribute-patterns -Wall -Werror

IMG = testdata/images
LINUX_CMDLINE = console=ttyS0 quiet reboot=k panic=-1

.PHONY: all deps demo test test-host test-race test-rig fuzz fuzz-long vet clean images demo-images bench bench-io \
	bench-console bench-fs bench-run soak install test-rig-podman uninstall default-images

all: bin/capsule bin/kvmrig bin/capsule-agent $(GUESTS) $(HOSTILE_GUESTS)

bin/capsule: FORCE
	$(GO) build -trimpath -ldflags "$(LDFLAGS_BUILD) $(CAPSULE_LDFLAGS)" -o $@ ./cmd/capsule

bin/kvmrig: FORCE
	$(GO) build $(GOFLAGS_BUILD) -o $@ ./cmd/kvmrig

# The guest agent: the static init of the guests that run programs from
# a host directory (capsule run --rootfs).
bin/capsule-agent: FORCE
	$(GO) build $(GOFLAGS_BUILD) -o $@ ./cmd/capsule-agent

testdata/guests/%.elf: testdata/guests/%.S testdata/guests/hello.ld testdata/guests/lib64.inc
	gcc -nostdlib -static -no-pie -Wl,-T,testdata/guests/hello.ld -Wl,--build-id=none -o $@ $<

$(HOSTILE)/%.elf: $(HOSTILE)/%.c $(HOSTILE)/kit.c $(HOSTILE)/kit.h $(HOSTILE)/start.S $(HOSTILE)/hostile.ld
	gcc $(HOSTILE_CFLAGS) -Wl,-T,$(HOSTILE)/hostile.ld -Wl,--build-id=none -Wl,--no-warn-rwx-segments -Wl,-z,noexecstack -o $@ $(HOSTILE)/start.S $(HOSTILE)/kit.c $<

deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || \
		{ echo "deps: apt-get install$$missing failed (run as root on Debian)" >&2; exit 1; }; \
	fi
	@command -v $(GO) >/dev/null || { echo "deps: Go 1.26 is required (PATH has no go)" >&2; exit 1; }

# Guest images, cached under ~/.cache/capsule/images (the minimal kernel
# takes a few minutes to build the first time), the ext4 disk of the
# virtio-blk tests, and a static e2fsck for checking it inside the rig.
images: deps $(IMG)/disk.ext4 $(IMG)/e2fsck
	$(GO) run ./internal/cmd/images all

# install: capsule and the two images it boots when no --kernel or
# --initrd is given, where it looks for them (internal/guestimage):
# $(PREFIX)/share/capsule next to $(PREFIX)/bin/capsule; and capsule-oci,
# a link to capsule that is its OCI runtime (capsule oci) under runc's
# command line, for podman --runtime and containerd's runc shim.
PREFIX ?= /usr/local
DESTDIR ?=
SHAREDIR = $(PREFIX)/share/capsule
install: bin/capsule default-images
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SHAREDIR)
	install -m 0755 bin/capsule $(DESTDIR)$(PREFIX)/bin/capsule
	ln -sf capsule $(DESTDIR)$(PREFIX)/bin/capsule-oci
	install -m 0644 $(IMG)/default.vmlinux $(DESTDIR)$(SHAREDIR)/vmlinux
	install -m 0644 $(IMG)/agent.cpio.gz $(DESTDIR)$(SHAREDIR)/agent.cpio.gz

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/capsule $(DESTDIR)$(PREFIX)/bin/capsule-oci $(DESTDIR)$(SHAREDIR)/vmlinux $(DESTDIR)$(SHAREDIR)/agent.cpio.gz
	-rmdir $(DESTDIR)$(SHAREDIR) 2>/dev/null

# default-images: the default kernel (default.vmlinux, default.bzImage) and
# the agent initramfs (agent.cpio.gz), which make images also builds.
default-images: deps
	$(GO) run ./internal/cmd/images default-kernel
	$(GO) run ./internal/cmd/images agent-initramfs

$(IMG)/disk.ext4: $(wildcard testdata/disk/*)
	@mkdir -p $(IMG)
	rm -f $@.tmp && mke2fs -q -F -t ext4 -d testdata/disk $@.tmp 16M && mv $@.tmp $@

$(IMG)/e2fsck: /sbin/e2fsck.static
	@mkdir -p $(IMG)
	cp $< $@

demo-images: deps
	$(GO) run ./internal/cmd/images stock-kernel
	$(GO) run ./internal/cmd/images initramfs

# demo boots Debian's stock cloud kernel with the busybox initramfs; on a
# host without hardware KVM it goes through the nested rig (a TCG guest
# with real kvm_amd).
DEMO_RUN = run --kernel $(CURDIR)/$(IMG)/stock.bzImage --initrd $(CURDIR)/$(IMG)/initramfs.cpio.gz \
	--cmdline '$(LINUX_CMDLINE) capsule.exit=0' --timeout 120s
demo: deps all demo-images
	@if bin/capsule probe | grep -q '^kvm: hardware'; then \
		bin/capsule $(DEMO_RUN); \
	else \
		bin/capsule probe | head -1; \
		echo "demo: no hardware KVM here; booting through the nested rig"; \
		bin/kvmrig $(CURDIR)/bin/capsule $(DEMO_RUN); \
	fi

# bench: capsule against QEMU's fastest configuration, same kernel, same
# run; in the rig (which then carries QEMU) when KVM is not hardware. The
# rig gets two vCPUs here: with one, a 10-run benchmark did not finish
# within the rig's 15 minutes (not investigated yet), and the benchmark
# never kicks a running guest, which is what two vCPUs can freeze on.
BENCH_KERNEL ?= $(IMG)/minimal.vmlinux
BENCH_RUNS ?= 10
BENCH_ARGS = bench --kernel $(CURDIR)/$(BENCH_KERNEL) --initrd $(CURDIR)/$(IMG)/initramfs.cpio.gz \
	--runs $(BENCH_RUNS) --against qemu
# bench-io: virtio-blk (capsule-io blkbench) and virtio-net (TCP over the
# user-mode network) against QEMU microvm with the same devices.
BENCH_IO_RUNS ?= 5
BENCH_IO_ARGS = bench --kernel $(CURDIR)/$(IMG)/minimal.bzImage --initrd $(CURDIR)/$(IMG)/initramfs.cpio.gz \
	--runs $(BENCH_IO_RUNS) --against qemu --timeout 90s
BENCH_VMM = if bin/capsule probe | grep -q '^kvm: hardware'; then bin/capsule $$args; \
	else CAPSULE_RIG_QEMU=1 CAPSULE_RIG_CPUS=$${CAPSULE_RIG_CPUS:-2} bin/kvmrig $(CURDIR)/bin/capsule $$args; fi
bench: deps all images
	@args="$(BENCH_ARGS)"; $(BENCH_VMM)

bench-io: deps all images
	@args="$(BENCH_IO_ARGS) --workload disk"; $(BENCH_VMM)
	@args="$(BENCH_IO_ARGS) --workload net"; $(BENCH_VMM)

# bench-console: the boot with and without quiet (--verbose-boot) and the
# guest's console output rate (--workload console, BENCH_CONSOLE_LINES lines
# of 80 characters), against QEMU, on the minimal kernel; the boots also on
# the stock kernel, against QEMU with its RTC (the stock kernel's fastest
# QEMU configuration in the rig). BENCH_CONSOLE_KERNELS=minimal leaves the
# stock kernel out.
BENCH_CONSOLE_RUNS ?= 5
BENCH_CONSOLE_LINES ?= 1000
BENCH_CONSOLE_KERNELS ?= minimal stock
BENCH_CONSOLE_ARGS = bench --initrd $(CURDIR)/$(IMG)/initramfs.cpio.gz --runs $(BENCH_CONSOLE_RUNS) --against qemu --timeout 120s
bench-console: deps all images
	@for k in $(BENCH_CONSOLE_KERNELS); do \
		case $$k in \
		minimal) kargs="--kernel $(CURDIR)/$(IMG)/minimal.bzImage" ;; \
		stock) kargs="--kernel $(CURDIR)/$(IMG)/stock.bzImage --qemu-machine microvm,x-option-roms=off,pit=off,pic=off,rtc=on" ;; \
		*) echo "bench-console: unknown kernel $$k (want minimal or stock)" >&2; exit 2 ;; \
		esac; \
		args="$(BENCH_CONSOLE_ARGS) $$kargs" && $(BENCH_VMM) || exit 1; \
		args="$(BENCH_CONSOLE_ARGS) $$kargs --verbose-boot" && $(BENCH_VMM) || exit 1; \
	done
	@args="$(BENCH_CONSOLE_ARGS) --kernel $(CURDIR)/$(IMG)/minimal.bzImage --workload console --lines $(BENCH_CONSOLE_LINES)"; $(BENCH_VMM)

# bench-fs: a shared host directory (capsule-io fsbench: 256 MiB written
# and read, 4 KiB random reads, 10,000 files created, stat'ed and
# unlinked, tar x of a 3000-file tree) under capsule's virtio-9p, QEMU's
# virtio-9p (-fsdev local) and QEMU's virtiofsd, on the default kernel
# (which has 9p and virtio-fs), 512 MiB guests; once for each 9p cache
# mode of BENCH_FS_CACHES (the same mount options for capsule and QEMU).
# The rig gets 3 GiB: the shares live in its RAM; and one vCPU: with two,
# the rig guest itself died or its nested guest hung or triple-faulted
# (TCG's nested SVM) in each of six tries of capsule's 256 MiB write
# (2026-12-07), where one vCPU ran it cleanly.
BENCH_FS_RUNS ?= 3
BENCH_FS_CACHES ?= loose mmap
BENCH_FS_MSIZE ?= 512000
BENCH_FS_MIB ?= 256
BENCH_FS_FILES ?= 10000
BENCH_FS_ARGS = bench --kernel $(CURDIR)/$(IMG)/default.bzImage --initrd $(CURDIR)/$(IMG)/initramfs.cpio.gz \
	--runs $(BENCH_FS_RUNS) --against qemu --timeout 300s --workload fs --fs-mib $(BENCH_FS_MIB) --fs-files $(BENCH_FS_FILES)
bench-fs: deps all images
	@export CAPSULE_RIG_MEM=$${CAPSULE_RIG_MEM:-3G} CAPSULE_RIG_TIMEOUT=$${CAPSULE_RIG_TIMEOUT:-40m} \
		CAPSULE_RIG_CPUS=$${CAPSULE_RIG_CPUS:-1}; \
	for cache in $(BENCH_FS_CACHES); do \
		args="$(BENCH_FS_ARGS) --fs-options msize=$(BENCH_FS_MSIZE),cache=$$cache" && { $(BENCH_VMM); } || exit 1; \
	done

# bench-run: capsule run --rootfs ROOT -- true end to end, BENCH_RUN_RUNS
# times, broken into VMM start, kernel, agent ready, program and VM stop
# (capsule run -v's breakdown), on the default kernel and the agent
# initramfs; ROOT is a static busybox.
BENCH_RUN_RUNS ?= 10
BENCH_RUN_ARGS = bench --workload run --kernel $(CURDIR)/$(IMG)/default.vmlinux \
	--initrd $(CURDIR)/$(IMG)/agent.cpio.gz --runs $(BENCH_RUN_RUNS)
bench-run: deps all images
	@args="$(BENCH_RUN_ARGS)"; $(BENCH_VMM)

# soak: SOAK_N verbose boots (no quiet) of each kernel (minimal bzImage,
# minimal PVH vmlinux, stock bzImage) under capsule, each required to reach
# the init and exit 0; a failure prints capsule's stderr and the last
# console lines. In the rig unless KVM is hardware; long, so not in make test.
# One rig run a kernel: when the rig guest freezes (kvmrig then runs the
# test binary again in a fresh one), only that kernel's boots start over.
SOAK_N ?= 20
SOAK_KERNELS ?= minimal.bzImage minimal.vmlinux stock.bzImage
soak: all images
	@exec=""; bin/capsule probe | grep -q '^kvm: hardware' || exec="-exec $(CURDIR)/bin/kvmrig"; \
	fail=0; for k in $(SOAK_KERNELS); do \
		CAPSULE_SOAK=$(SOAK_N) CAPSULE_RIG_TIMEOUT=$${CAPSULE_RIG_TIMEOUT:-60m} $(GO) test -count=1 -timeout 0 -v \
			$$exec -run "^TestSoakVerboseBoots$$/^$${k//./\\.}$$" ./cmd/capsule || fail=1; \
	done; exit $$fail

test: deps all vet test-host test-race test-rig test-rig-podman fuzz

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting" >&2; exit 1; }

# Every package on this host: tests that need KVM skip here when /dev/kvm is
# missing, and run for real in test-rig.
test-host: all images
	$(GO) test -count=1 ./...

# The device packages and the transport under the race detector (it needs
# cgo, so this one command builds with it): resets under traffic, the
# console and log buffers, the rate limiters.
test-race: all
	CGO_ENABLED=1 $(GO) test -count=1 -race ./virtio/... ./devices ./internal/ratelimit

# The KVM packages again, inside the nested rig, where skipping is an error.
# RIG_RUN, when set, is go test's -run filter (make test-rig
# RIG_PKGS=./cmd/capsule RIG_RUN=TestOCI).
RIG_RUN ?=
test-rig: all images
	$(GO) test -count=1 -p 1 -v -exec $(CURDIR)/bin/kvmrig $(if $(RIG_RUN),-run '$(RIG_RUN)') $(RIG_PKGS)

# podman with capsule-oci as its runtime, in the rig's host-root mode
# (internal/rig: the host's root read-only under a tmpfs overlay, so the
# host's podman, conmon and crun run there on kvm_amd).
test-rig-podman: all images
	CAPSULE_RIG_HOSTROOT=1 CAPSULE_RIG_MEM=$${CAPSULE_RIG_MEM:-3G} \
		$(GO) test -count=1 -v -exec $(CURDIR)/bin/kvmrig -run 'TestPodman' ./cmd/capsule

# Fuzz targets run for a count of inputs, not a time: a duration-based
# -fuzztime races Go's fuzz coordinator at its deadline and can fail with a
# bare "context deadline exceeded" on a loaded machine (go.dev/issue/75804,
# fixed in Go 1.27). Counts are a few seconds each on a 2-core machine.
fuzz:
	for f in FuzzParseELF FuzzParseBzImage FuzzFindPVHEntry FuzzParseMultiboot FuzzLoadImage; do \
		$(GO) test -run=NONE -fuzz=^$$f$$ -fuzztime=200000x ./bootloader || exit 1; \
	done
	$(GO) test -run=NONE -fuzz=^FuzzPop$$ -fuzztime=50000x ./virtio
	$(GO) test -run=NONE -fuzz=^FuzzRequest$$ -fuzztime=15000x ./virtio/blk
	$(GO) test -run=NONE -fuzz=^FuzzPacket$$ -fuzztime=200000x ./virtio/vsock
	$(GO) test -run=NONE -fuzz=^FuzzRequest$$ -fuzztime=60000x ./virtio/p9
	$(GO) test -run=NONE -fuzz=^FuzzReadStreamHeader$$ -fuzztime=100000x ./agent
	$(GO) test -run=NONE -fuzz=^FuzzDHCP$$ -fuzztime=300000x ./virtio/net/usernet
	$(GO) test -run=NONE -fuzz=^FuzzGuestFrame$$ -fuzztime=100000x ./virtio/net/usernet

# fuzz-long: every target for much longer, nightly-style, not part of make
# test. FUZZ_LONG_X inputs each (count-based for the reason above); about
# 10-30 minutes a target on a 2-core machine with the default.
FUZZ_LONG_X ?= 20000000
FUZZ_TARGETS = ./bootloader:FuzzParseELF ./bootloader:FuzzParseBzImage ./bootloader:FuzzFindPVHEntry \
	./bootloader:FuzzParseMultiboot ./bootloader:FuzzLoadImage ./virtio:FuzzPop ./virtio/blk:FuzzRequest \
	./virtio/p9:FuzzRequest ./agent:FuzzReadStreamHeader ./virtio/vsock:FuzzPacket ./virtio/net/usernet:FuzzDHCP ./virtio/net/usernet:FuzzGuestFrame
fuzz-long:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; f=$${t##*:}; echo "fuzz-long: $$f in $$pkg, $(FUZZ_LONG_X) inputs"; \
		$(GO) test -run=NONE -fuzz=^$$f$$ -fuzztime=$(FUZZ_LONG_X)x $$pkg || exit 1; \
	done

clean:
	rm -rf bin $(GUESTS) $(HOSTILE_GUESTS) $(IMG)

FORCE:
