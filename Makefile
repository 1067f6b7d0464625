SHELL := /bin/bash
# capsule — build, demo and tests. Run as root on Debian (deps uses apt-get).
#
#   make            build bin/capsule, bin/kvmrig and the test guests
#   make demo       install what is missing, build, boot the hello unikernel
#   make test       install what is missing, build, run every test (host + rig)

GO       ?= go
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
export CGO_ENABLED = 0
GOFLAGS_BUILD = -trimpath -ldflags "-s -w -X main.version=$(VERSION)"

# Debian packages: gcc/binutils for the test guests, qemu/busybox/cpio for
# the nested real-KVM rig, apt's download for its kernel.
DEB_PKGS = gcc libc6-dev binutils make qemu-system-x86 busybox-static cpio ca-certificates
# Packages of the rig/e2e tests run inside the nested guest.
RIG_PKGS = ./kvm ./vmm ./cmd/capsule

GUESTS = $(patsubst %.S,%.elf,$(wildcard testdata/guests/*.S))

.PHONY: all deps demo test test-host test-rig fuzz vet clean

all: bin/capsule bin/kvmrig $(GUESTS)

bin/capsule: FORCE
	$(GO) build $(GOFLAGS_BUILD) -o $@ ./cmd/capsule

bin/kvmrig: FORCE
	$(GO) build $(GOFLAGS_BUILD) -o $@ ./cmd/kvmrig

testdata/guests/%.elf: testdata/guests/%.S testdata/guests/hello.ld
	gcc -nostdlib -static -no-pie -Wl,-T,testdata/guests/hello.ld -Wl,--build-id=none -o $@ $<

deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || \
		{ echo "deps: apt-get install$$missing failed (run as root on Debian)" >&2; exit 1; }; \
	fi
	@command -v $(GO) >/dev/null || { echo "deps: Go 1.26 is required (PATH has no go)" >&2; exit 1; }

# demo boots the hello unikernel; on a host without hardware KVM it goes
# through the nested rig (a TCG guest with real kvm_amd).
demo: deps all
	@if bin/capsule probe | grep -q '^kvm: hardware'; then \
		bin/capsule run --kernel testdata/guests/hello.elf --cmdline 'demo exit=0'; \
	else \
		bin/capsule probe | head -1; \
		echo "demo: no hardware KVM here; booting through the nested rig (first run fetches its kernel)"; \
		bin/kvmrig $(CURDIR)/bin/capsule run --kernel $(CURDIR)/testdata/guests/hello.elf --cmdline 'demo exit=0'; \
	fi

test: deps all vet test-host test-rig fuzz

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting" >&2; exit 1; }

# Every package on this host: tests that need KVM skip here when /dev/kvm is
# missing, and run for real in test-rig.
test-host: all
	$(GO) test -count=1 ./...

# The KVM packages again, inside the nested rig, where skipping is an error.
test-rig: all
	$(GO) test -count=1 -p 1 -v -exec $(CURDIR)/bin/kvmrig $(RIG_PKGS)

fuzz:
	$(GO) test -run=NONE -fuzz=FuzzParseELF -fuzztime=15s ./bootloader

clean:
	rm -rf bin $(GUESTS)

FORCE:
