package machine

import (
	"math/bits"

	"github.com/capsule-vm/capsule/kvm"
)

// CPUIDConfig says what the VMM offers beyond KVM's supported leaves.
type CPUIDConfig struct {
	CPUs        int
	TSCKHz      uint32 // TSC frequency for the 0x40000010 leaf; 0 leaves it out
	TSCDeadline bool   // the in-kernel LAPIC can run the TSC-deadline timer
}

// CPUID leaves and bits capsule edits.
const (
	kvmSignatureLeaf = 0x40000000
	kvmTimingLeaf    = 0x40000010 // EAX TSC kHz, EBX APIC bus kHz
	apicBusKHz       = 1000000    // KVM's local APIC timer runs at 1 GHz

	leaf1ECXDTES64      = 1 << 2
	leaf1ECXMonitor     = 1 << 3
	leaf1ECXDSCPL       = 1 << 4
	leaf1ECXEST         = 1 << 7
	leaf1ECXTM2         = 1 << 8
	leaf1ECXPDCM        = 1 << 15
	leaf1ECXTSCDeadline = 1 << 24
	leaf1ECXHypervisor  = 1 << 31
	leaf1EDXDS          = 1 << 21
	leaf1EDXACPI        = 1 << 22
	leaf1EDXHTT         = 1 << 28
	leaf1EDXTM          = 1 << 29
	leaf1EDXPBE         = 1 << 31
)

// CPUID returns the CPUID leaves for vCPU id, built from what KVM supports:
//   - leaf 1 and the topology leaves (0xb, 0x1f, 4, 0x80000008) give each
//     vCPU its own APIC id and describe cfg.CPUs single-threaded cores in
//     one package;
//   - the hypervisor bit is set and KVM's paravirtual leaves (0x40000000,
//     kvm-clock in 0x40000001) are kept, with the TSC-frequency leaf
//     0x40000010 added when the frequency is known;
//   - features no VMM device backs (thermal and power monitoring, debug
//     store, MONITOR/MWAIT, the thermal/power leaf 6) are hidden.
func CPUID(supported []kvm.CPUIDEntry, id int, cfg CPUIDConfig) []kvm.CPUIDEntry {
	cpus := max(cfg.CPUs, 1)
	coreBits := uint32(bits.Len(uint(cpus - 1)))
	out := make([]kvm.CPUIDEntry, 0, len(supported)+1)
	haveTiming := false
	for _, e := range supported {
		switch e.Function {
		case 1:
			// EBX[31:24] initial APIC id, EBX[23:16] logical processors.
			e.EBX = e.EBX&0x0000ffff | uint32(id)<<24 | uint32(min(cpus, 255))<<16
			e.ECX |= leaf1ECXHypervisor
			e.ECX &^= leaf1ECXDTES64 | leaf1ECXMonitor | leaf1ECXDSCPL | leaf1ECXEST | leaf1ECXTM2 | leaf1ECXPDCM
			if cfg.TSCDeadline {
				e.ECX |= leaf1ECXTSCDeadline
			}
			e.EDX |= leaf1EDXHTT
			e.EDX &^= leaf1EDXDS | leaf1EDXACPI | leaf1EDXTM | leaf1EDXPBE
		case 4:
			// EAX[31:26]: cores per package - 1; one thread per cache.
			e.EAX = e.EAX&0x3ff | (uint32(cpus-1)&0x3f)<<26
		case 6:
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		case 0xb, 0x1f:
			e.EDX = uint32(id)
			switch e.Index {
			case 0: // SMT level: one thread per core
				e.EAX, e.EBX, e.ECX = 0, 1, 1<<8
			case 1: // core level
				e.EAX, e.EBX, e.ECX = coreBits, uint32(cpus), 1|2<<8
			default:
				e.EAX, e.EBX, e.ECX = 0, 0, e.Index
			}
		case kvmSignatureLeaf:
			if cfg.TSCKHz != 0 {
				e.EAX = max(e.EAX, kvmTimingLeaf)
			}
		case kvmTimingLeaf:
			haveTiming = true
			e.EAX, e.EBX = cfg.TSCKHz, apicBusKHz
		case 0x80000008:
			// AMD: ECX[7:0] number of cores - 1, [15:12] APIC id bits.
			e.ECX = e.ECX&^0xf0ff | uint32(cpus-1)&0xff | coreBits<<12
		}
		out = append(out, e)
	}
	if cfg.TSCKHz != 0 && !haveTiming {
		out = append(out, kvm.CPUIDEntry{Function: kvmTimingLeaf, EAX: cfg.TSCKHz, EBX: apicBusKHz})
	}
	return out
}
