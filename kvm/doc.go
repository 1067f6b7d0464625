// Package kvm is a typed wrapper over the Linux /dev/kvm API for x86-64.
//
// It holds the only ioctl calls in capsule. Objects form an ownership chain:
// a [System] (the open /dev/kvm) creates a [VM], and a VM creates its
// [VCPU]s. Each object owns its file descriptor and closes it in Close; a VM
// closes the vCPUs it created.
//
// [VCPU.Run] enters the guest and returns a typed [Exit] value (*[IOExit],
// *[MMIOExit], *[HaltExit], ...). A vCPU is bound to the OS thread that runs
// it; [VCPU.Kick] makes a running vCPU return to its caller promptly from
// any goroutine.
//
// Ioctl request numbers and structure sizes are precomputed constants;
// the package tests check them against the kernel's encoding rules
// (_IO/_IOR/_IOW/_IOWR) and the kernel ABI structure sizes.
// Code that needs package unsafe lives only in files named *_unsafe.go.
package kvm
