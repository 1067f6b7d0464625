package kvm

import "testing"

// ioc encodes an ioctl request number the way linux/ioctl.h does.
func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | 0xAE<<8 | nr }

const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

func TestIoctlNumbersMatchKernelEncoding(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"KVM_GET_API_VERSION", ioctlGetAPIVersion, ioc(iocNone, 0x00, 0)},
		{"KVM_CREATE_VM", ioctlCreateVM, ioc(iocNone, 0x01, 0)},
		{"KVM_GET_MSR_INDEX_LIST", ioctlGetMSRIndexList, ioc(iocRead|iocWrite, 0x02, 4)},
		{"KVM_CHECK_EXTENSION", ioctlCheckExtension, ioc(iocNone, 0x03, 0)},
		{"KVM_GET_VCPU_MMAP_SIZE", ioctlGetVCPUMmapSize, ioc(iocNone, 0x04, 0)},
		{"KVM_GET_SUPPORTED_CPUID", ioctlGetSupportedCPUID, ioc(iocRead|iocWrite, 0x05, 8)},
		{"KVM_CREATE_VCPU", ioctlCreateVCPU, ioc(iocNone, 0x41, 0)},
		{"KVM_SET_USER_MEMORY_REGION", ioctlSetUserMemoryRegion, ioc(iocWrite, 0x46, sizeOf[userspaceMemoryRegion]())},
		{"KVM_SET_TSS_ADDR", ioctlSetTSSAddr, ioc(iocNone, 0x47, 0)},
		{"KVM_SET_IDENTITY_MAP_ADDR", ioctlSetIdentityMapAddr, ioc(iocWrite, 0x48, 8)},
		{"KVM_CREATE_IRQCHIP", ioctlCreateIRQChip, ioc(iocNone, 0x60, 0)},
		{"KVM_IRQ_LINE", ioctlIRQLine, ioc(iocWrite, 0x61, sizeOf[irqLevel]())},
		{"KVM_IRQFD", ioctlIRQFD, ioc(iocWrite, 0x76, sizeOf[irqFD]())},
		{"KVM_CREATE_PIT2", ioctlCreatePIT2, ioc(iocWrite, 0x77, sizeOf[pitConfig]())},
		{"KVM_IOEVENTFD", ioctlIOEventFD, ioc(iocWrite, 0x79, sizeOf[ioEventFD]())},
		{"KVM_SET_CLOCK", ioctlSetClock, ioc(iocWrite, 0x7b, sizeOf[ClockData]())},
		{"KVM_GET_CLOCK", ioctlGetClock, ioc(iocRead, 0x7c, sizeOf[ClockData]())},
		{"KVM_RUN", ioctlRun, ioc(iocNone, 0x80, 0)},
		{"KVM_GET_REGS", ioctlGetRegs, ioc(iocRead, 0x81, sizeOf[Regs]())},
		{"KVM_SET_REGS", ioctlSetRegs, ioc(iocWrite, 0x82, sizeOf[Regs]())},
		{"KVM_GET_SREGS", ioctlGetSregs, ioc(iocRead, 0x83, sizeOf[Sregs]())},
		{"KVM_SET_SREGS", ioctlSetSregs, ioc(iocWrite, 0x84, sizeOf[Sregs]())},
		{"KVM_GET_MSRS", ioctlGetMSRs, ioc(iocRead|iocWrite, 0x88, 8)},
		{"KVM_SET_MSRS", ioctlSetMSRs, ioc(iocWrite, 0x89, 8)},
		{"KVM_GET_FPU", ioctlGetFPU, ioc(iocRead, 0x8c, sizeOf[FPU]())},
		{"KVM_SET_FPU", ioctlSetFPU, ioc(iocWrite, 0x8d, sizeOf[FPU]())},
		{"KVM_GET_LAPIC", ioctlGetLAPIC, ioc(iocRead, 0x8e, sizeOf[LAPICState]())},
		{"KVM_SET_LAPIC", ioctlSetLAPIC, ioc(iocWrite, 0x8f, sizeOf[LAPICState]())},
		{"KVM_SET_CPUID2", ioctlSetCPUID2, ioc(iocWrite, 0x90, 8)},
		{"KVM_GET_CPUID2", ioctlGetCPUID2, ioc(iocRead|iocWrite, 0x91, 8)},
		{"KVM_GET_MP_STATE", ioctlGetMPState, ioc(iocRead, 0x98, 4)},
		{"KVM_SET_MP_STATE", ioctlSetMPState, ioc(iocWrite, 0x99, 4)},
		{"KVM_GET_TSC_KHZ", ioctlGetTSCKHz, ioc(iocNone, 0xa3, 0)},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
}

func TestStructSizesMatchKernelABI(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_userspace_memory_region", sizeOf[userspaceMemoryRegion](), sizeofUserspaceMemoryRegion},
		{"kvm_regs", sizeOf[Regs](), sizeofRegs},
		{"kvm_segment", sizeOf[Segment](), sizeofSegment},
		{"kvm_dtable", sizeOf[DTable](), sizeofDTable},
		{"kvm_sregs", sizeOf[Sregs](), sizeofSregs},
		{"kvm_fpu", sizeOf[FPU](), sizeofFPU},
		{"kvm_msr_entry", sizeOf[MSR](), sizeofMSREntry},
		{"kvm_cpuid_entry2", sizeOf[CPUIDEntry](), sizeofCPUIDEntry2},
		{"kvm_lapic_state", sizeOf[LAPICState](), sizeofLAPICState},
		{"kvm_pit_config", sizeOf[pitConfig](), sizeofPITConfig},
		{"kvm_irq_level", sizeOf[irqLevel](), sizeofIRQLevel},
		{"kvm_ioeventfd", sizeOf[ioEventFD](), sizeofIOEventFD},
		{"kvm_irqfd", sizeOf[irqFD](), sizeofIRQFD},
		{"kvm_clock_data", sizeOf[ClockData](), sizeofClockData},
	} {
		if tc.got != tc.want {
			t.Errorf("sizeof(%s) = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestDecodeRejectsIODataOutsideKVMRun(t *testing.T) {
	c := &VCPU{run: make([]byte, 4096)}
	put32 := func(off int, v uint32) {
		c.run[off], c.run[off+1], c.run[off+2], c.run[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	put32(runExitReason, exitIO)
	c.run[runUnion+1] = 4      // size
	put32(runUnion+4, 0x10000) // count
	c.run[runUnion+8] = 0x00   // data_offset low byte
	c.run[runUnion+9] = 0x10   // data_offset 0x1000 = len(run)
	if _, err := c.decode(); err == nil {
		t.Fatal("decode accepted IO data past the end of kvm_run")
	}
	put32(runUnion+4, 1)
	c.run[runUnion+9] = 0x01 // offset 0x100
	e, err := c.decode()
	if err != nil {
		t.Fatal(err)
	}
	if io, ok := e.(*IOExit); !ok || len(io.Data) != 4 {
		t.Fatalf("decode = %v, want a 4-byte IO exit", e)
	}
}

func TestProbeReportsMissingDevice(t *testing.T) {
	h := probe(t.TempDir()+"/kvm", t.TempDir())
	if h.Kind != KindNone || h.Err == nil {
		t.Fatalf("probe of a missing device = %+v, want KindNone with an error", h)
	}
}
