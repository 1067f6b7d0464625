package kvm

// Ioctl request numbers for /dev/kvm and its VM and vCPU file descriptors
// (linux/kvm.h, KVMIO = 0xAE). They are precomputed; kvm_test.go checks each
// against the _IO/_IOR/_IOW/_IOWR encoding of its structure's size.
const (
	ioctlGetAPIVersion       = 0xAE00
	ioctlCreateVM            = 0xAE01
	ioctlGetMSRIndexList     = 0xC004AE02
	ioctlCheckExtension      = 0xAE03
	ioctlGetVCPUMmapSize     = 0xAE04
	ioctlGetSupportedCPUID   = 0xC008AE05
	ioctlCreateVCPU          = 0xAE41
	ioctlSetUserMemoryRegion = 0x4020AE46
	ioctlSetTSSAddr          = 0xAE47
	ioctlSetIdentityMapAddr  = 0x4008AE48
	ioctlCreateIRQChip       = 0xAE60
	ioctlIRQLine             = 0x4008AE61
	ioctlIRQFD               = 0x4020AE76
	ioctlCreatePIT2          = 0x4040AE77
	ioctlIOEventFD           = 0x4040AE79
	ioctlSetClock            = 0x4030AE7B
	ioctlGetClock            = 0x8030AE7C
	ioctlRun                 = 0xAE80
	ioctlGetRegs             = 0x8090AE81
	ioctlSetRegs             = 0x4090AE82
	ioctlGetSregs            = 0x8138AE83
	ioctlSetSregs            = 0x4138AE84
	ioctlGetMSRs             = 0xC008AE88
	ioctlSetMSRs             = 0x4008AE89
	ioctlGetFPU              = 0x81A0AE8C
	ioctlSetFPU              = 0x41A0AE8D
	ioctlGetLAPIC            = 0x8400AE8E
	ioctlSetLAPIC            = 0x4400AE8F
	ioctlSetCPUID2           = 0x4008AE90
	ioctlGetCPUID2           = 0xC008AE91
	ioctlGetMPState          = 0x8004AE98
	ioctlSetMPState          = 0x4004AE99
	ioctlGetTSCKHz           = 0xAEA3
)

// APIVersion is the only stable KVM API version; KVM_GET_API_VERSION must
// return it.
const APIVersion = 12

// Capability numbers for [System.CheckExtension] (linux/kvm.h).
type Cap int

const (
	CapIRQChip        Cap = 0
	CapHLT            Cap = 1
	CapUserMemory     Cap = 3
	CapSetTSSAddr     Cap = 4
	CapExtCPUID       Cap = 7
	CapNrVCPUs        Cap = 9
	CapNrMemSlots     Cap = 10
	CapPIT2           Cap = 33
	CapSetIdentityMap Cap = 37
	CapAdjustClock    Cap = 39
	CapIRQFD          Cap = 32
	CapIOEventFD      Cap = 36
	CapMaxVCPUs       Cap = 66
	CapImmediateExit  Cap = 136
	CapNestedState    Cap = 157
	CapSplitIRQChip   Cap = 121
	CapTSCControl     Cap = 60
	CapGetTSCKHz      Cap = 61
	CapTSCDeadline    Cap = 72
	CapKVMClockCtrl   Cap = 76
	CapX2APICAPI      Cap = 129
	CapIRQRouting     Cap = 25
	CapSignalMSI      Cap = 77
	CapSyncMMU        Cap = 16
	CapVCPUEvents     Cap = 41
	CapDebugRegs      Cap = 50
	CapXSave          Cap = 55
	CapXCRS           Cap = 56
	CapReadonlyMem    Cap = 81
)

// Sizes of the kernel ABI structures, checked by the tests against the Go
// structures below.
const (
	sizeofUserspaceMemoryRegion = 32
	sizeofRegs                  = 144
	sizeofSegment               = 24
	sizeofDTable                = 16
	sizeofSregs                 = 312
	sizeofFPU                   = 416
	sizeofMSREntry              = 16
	sizeofCPUIDEntry2           = 40
	sizeofLAPICState            = 1024
	sizeofPITConfig             = 64
	sizeofIRQLevel              = 8
	sizeofIOEventFD             = 64
	sizeofIRQFD                 = 32
	sizeofClockData             = 48
)

type userspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// Regs is struct kvm_regs: the general-purpose registers.
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// Segment is struct kvm_segment: a segment register's hidden state.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// DTable is struct kvm_dtable: a descriptor-table register (GDTR, IDTR).
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs is struct kvm_sregs: segment, control and descriptor-table registers.
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	InterruptBitmap        [4]uint64
}

// FPU is struct kvm_fpu: x87 and SSE state.
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// MSR is one model-specific register: struct kvm_msr_entry.
type MSR struct {
	Index uint32
	_     uint32
	Data  uint64
}

// CPUIDEntry is struct kvm_cpuid_entry2: one CPUID leaf (and sub-leaf).
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// CPUIDFlagSignificantIndex marks a leaf whose sub-leaf (Index) matters.
const CPUIDFlagSignificantIndex = 1

// LAPICState is struct kvm_lapic_state: the local APIC's register page.
type LAPICState struct {
	Regs [1024]byte
}

type pitConfig struct {
	Flags uint32
	_     [15]uint32
}

type irqLevel struct {
	IRQ   uint32
	Level uint32
}

type ioEventFD struct {
	DataMatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	_         [36]uint8
}

const (
	ioEventFDFlagDataMatch = 1 << 0
	ioEventFDFlagPIO       = 1 << 1
	ioEventFDFlagDeassign  = 1 << 2
)

type irqFD struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	_          [16]uint8
}

const irqFDFlagDeassign = 1 << 0

// ClockData is struct kvm_clock_data: the VM's kvmclock value.
type ClockData struct {
	Clock    uint64
	Flags    uint32
	_        uint32
	Realtime uint64
	HostTSC  uint64
	_        [4]uint32
}

// Exit reasons (kvm_run.exit_reason).
const (
	exitUnknown       = 0
	exitException     = 1
	exitIO            = 2
	exitHypercall     = 3
	exitDebug         = 4
	exitHLT           = 5
	exitMMIO          = 6
	exitIRQWindowOpen = 7
	exitShutdown      = 8
	exitFailEntry     = 9
	exitIntr          = 10
	exitInternalError = 17
	exitSystemEvent   = 24
)

// Offsets into the mmap'd struct kvm_run.
const (
	runImmediateExit = 1
	runExitReason    = 8
	runUnion         = 32
)
