package vmm

import (
	"errors"
	"fmt"

	"github.com/capsule-vm/capsule/kvm"
)

// What callers need to know of the host's KVM, so that they need not
// import package kvm themselves.
type (
	// HostInfo is what Probe found.
	HostInfo = kvm.HostInfo
	// KVMKind is the kind of KVM backing /dev/kvm.
	KVMKind = kvm.Kind
)

// The kinds of KVM.
const (
	KVMNone     = kvm.KindNone
	KVMHardware = kvm.KindHardware
	KVMPVM      = kvm.KindPVM
	KVMUnknown  = kvm.KindUnknown
)

// KVMDevice is the KVM device node.
const KVMDevice = kvm.DevicePath

// RunIoctls are the KVM ioctl requests a set-up VM still makes (see
// kvm.RunIoctls), for a seccomp filter.
func RunIoctls() []uint64 { return kvm.RunIoctls() }

// ErrNoKVM reports that /dev/kvm is missing or cannot be opened.
var ErrNoKVM = kvm.ErrNoKVM

// ErrCannotBootLinux reports a Linux kernel given to a host whose KVM
// cannot boot one: PVM (kvm_pvm) emulates guest supervisor code at about
// a million instructions a second, and a Linux boot would never end.
var ErrCannotBootLinux = errors.New("this host cannot boot Linux guests")

// Probe says what kind of KVM this host has and what it offers.
func Probe() HostInfo { return kvm.Probe() }

// hostKind is the kind of the opened KVM; tests replace it.
var hostKind = func(s *kvm.System) kvm.Kind { return s.Kind() }

// canBoot refuses, at once, a Linux kernel on a PVM host.
func (v *VM) canBoot() error {
	if !v.info.Linux || hostKind(v.sys) != kvm.KindPVM {
		return nil
	}
	return fmt.Errorf("kernel %s: %w: /dev/kvm is PVM (kvm_pvm), which runs guest kernel code emulated at about a million instructions a second; "+
		"boot it on a host with hardware KVM (Intel VT-x or AMD-V), or in capsule's nested rig (bin/kvmrig bin/capsule run ..., as make demo and make test-rig do)",
		v.cfg.Kernel, ErrCannotBootLinux)
}
