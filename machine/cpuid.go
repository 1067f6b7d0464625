package machine

import "github.com/capsule-vm/capsule/kvm"

// CPUID returns the CPUID leaves for vCPU id of a cpus-vCPU guest, built
// from what KVM supports: each vCPU gets its own APIC id (leaf 1 and the
// x2APIC topology leaf 0xb) and the logical-processor count of leaf 1.
func CPUID(supported []kvm.CPUIDEntry, id, cpus int) []kvm.CPUIDEntry {
	out := append([]kvm.CPUIDEntry(nil), supported...)
	for i := range out {
		e := &out[i]
		switch e.Function {
		case 1:
			// EBX[31:24] initial APIC id, EBX[23:16] logical processors.
			e.EBX = e.EBX&0x0000ffff | uint32(id)<<24 | uint32(min(cpus, 255))<<16
			e.EDX |= 1 << 28 // HTT: the count above is valid
			e.ECX |= 1 << 31 // running under a hypervisor
		case 0xb:
			e.EDX = uint32(id)
		}
	}
	return out
}
