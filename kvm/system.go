package kvm

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// DevicePath is where the KVM device node lives.
const DevicePath = "/dev/kvm"

// ErrNoKVM reports that /dev/kvm is missing or cannot be opened.
var ErrNoKVM = errors.New("KVM is not available")

// System is an open /dev/kvm.
type System struct {
	fd       int
	mmapSize int
}

// Open opens /dev/kvm and checks the API version and the capabilities every
// capsule VM needs.
func Open() (*System, error) {
	return OpenPath(DevicePath)
}

// OpenPath is like [Open] for a device node at another path.
func OpenPath(path string) (*System, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %w", ErrNoKVM, path, err)
	}
	s := &System{fd: fd}
	if err := s.check(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return s, nil
}

func (s *System) check() error {
	v, err := ioctl(s.fd, ioctlGetAPIVersion, 0)
	if err != nil {
		return fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != APIVersion {
		return fmt.Errorf("KVM API version %d required, %s has %d", APIVersion, DevicePath, v)
	}
	for _, c := range []struct {
		cap  Cap
		name string
	}{
		{CapUserMemory, "KVM_CAP_USER_MEMORY"},
		{CapIRQChip, "KVM_CAP_IRQCHIP"},
		{CapHLT, "KVM_CAP_HLT"},
		{CapSetTSSAddr, "KVM_CAP_SET_TSS_ADDR"},
		{CapExtCPUID, "KVM_CAP_EXT_CPUID"},
		{CapImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"},
	} {
		if s.CheckExtension(c.cap) <= 0 {
			return fmt.Errorf("%s missing from %s", c.name, DevicePath)
		}
	}
	n, err := ioctl(s.fd, ioctlGetVCPUMmapSize, 0)
	if err != nil {
		return fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	if n < 4096 {
		return fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE returned %d, want at least 4096", n)
	}
	s.mmapSize = int(n)
	return nil
}

// Close closes /dev/kvm. VMs created from it stay valid.
func (s *System) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}

// CheckExtension returns KVM_CHECK_EXTENSION's answer for c: 0 when absent,
// otherwise a positive, capability-specific value. Errors read as 0.
func (s *System) CheckExtension(c Cap) int {
	r, err := ioctl(s.fd, ioctlCheckExtension, uintptr(c))
	if err != nil {
		return 0
	}
	return int(r)
}

// MaxVCPUs is the most vCPUs a VM may have (KVM_CAP_MAX_VCPUS, falling back
// to KVM_CAP_NR_VCPUS and then 4, as the API documentation says).
func (s *System) MaxVCPUs() int {
	if n := s.CheckExtension(CapMaxVCPUs); n > 0 {
		return n
	}
	if n := s.CheckExtension(CapNrVCPUs); n > 0 {
		return n
	}
	return 4
}

// RecommendedVCPUs is KVM_CAP_NR_VCPUS: the most vCPUs KVM recommends.
func (s *System) RecommendedVCPUs() int {
	if n := s.CheckExtension(CapNrVCPUs); n > 0 {
		return n
	}
	return 4
}

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID: the CPUID leaves KVM can
// present to a guest.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	for n := 128; n <= 4096; n *= 2 {
		e, err := getCPUID(s.fd, ioctlGetSupportedCPUID, n)
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		return e, nil
	}
	return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: more than 4096 entries")
}

// CreateVM creates an empty VM.
func (s *System) CreateVM() (*VM, error) {
	var fd uintptr
	var err error
	for {
		fd, err = ioctl(s.fd, ioctlCreateVM, 0)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	return &VM{fd: int(fd), mmapSize: s.mmapSize}, nil
}

// Kind says what kind of KVM backs /dev/kvm on this host.
type Kind int

const (
	KindNone     Kind = iota // no usable /dev/kvm
	KindHardware             // kvm_intel or kvm_amd (VT-x/AMD-V)
	KindPVM                  // kvm_pvm: paravirtualized, supervisor code emulated
	KindUnknown              // /dev/kvm works but its module is not recognised
)

func (k Kind) String() string {
	switch k {
	case KindHardware:
		return "hardware"
	case KindPVM:
		return "pvm"
	case KindUnknown:
		return "unknown"
	}
	return "none"
}

// HostInfo describes this host's KVM.
type HostInfo struct {
	Kind   Kind
	Vendor string // "intel", "amd", "pvm" or ""
	// Err says why KVM is unusable when Kind is KindNone.
	Err error
	// Capabilities, when /dev/kvm opened.
	APIVersion   int
	MaxVCPUs     int
	NrVCPUs      int
	MemSlots     int
	NestedState  int
	IRQChip      bool
	PIT2         bool
	IRQFD        bool
	IOEventFD    bool
	ImmediateExt bool
	Nested       string // the module's "nested" parameter, if any
}

// Probe inspects /dev/kvm and the loaded modules. It never fails: problems
// are reported in HostInfo.Err with Kind KindNone.
func Probe() HostInfo {
	return probe(DevicePath, "/sys/module")
}

func probe(dev, sysModule string) HostInfo {
	var h HostInfo
	s, err := OpenPath(dev)
	if err != nil {
		h.Err = err
		if errors.Is(err, unix.ENOENT) {
			h.Err = fmt.Errorf("%s does not exist (no KVM module bound here%s)", dev, pvmGuestHint(sysModule))
		} else if errors.Is(err, unix.EACCES) {
			h.Err = fmt.Errorf("%s: permission denied (add yourself to the kvm group or run as root)", dev)
		} else if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) {
			h.Err = fmt.Errorf("%s: no KVM driver behind the device node%s", dev, pvmGuestHint(sysModule))
		}
		return h
	}
	defer s.Close()
	h.APIVersion = APIVersion
	h.MaxVCPUs = s.MaxVCPUs()
	h.NrVCPUs = s.RecommendedVCPUs()
	h.MemSlots = s.CheckExtension(CapNrMemSlots)
	h.NestedState = s.CheckExtension(CapNestedState)
	h.IRQChip = s.CheckExtension(CapIRQChip) > 0
	h.PIT2 = s.CheckExtension(CapPIT2) > 0
	h.IRQFD = s.CheckExtension(CapIRQFD) > 0
	h.IOEventFD = s.CheckExtension(CapIOEventFD) > 0
	h.ImmediateExt = s.CheckExtension(CapImmediateExit) > 0
	h.Kind, h.Vendor, h.Nested = classify(sysModule, h.NestedState)
	return h
}

// Kind says what kind of KVM the opened /dev/kvm is (see Probe).
func (s *System) Kind() Kind {
	k, _, _ := classify("/sys/module", s.CheckExtension(CapNestedState))
	return k
}

// classify tells the kind of KVM from the modules loaded and
// KVM_CAP_NESTED_STATE, with the vendor and the nested parameter.
func classify(sysModule string, nestedState int) (kind Kind, vendor, nested string) {
	switch {
	case exists(sysModule + "/kvm_pvm"):
		return KindPVM, "pvm", ""
	case exists(sysModule + "/kvm_intel"):
		return KindHardware, "intel", readTrim(sysModule + "/kvm_intel/parameters/nested")
	case exists(sysModule + "/kvm_amd"):
		return KindHardware, "amd", readTrim(sysModule + "/kvm_amd/parameters/nested")
	case nestedState > 0:
		// Built-in modules without sysfs entries: KVM_CAP_NESTED_STATE is
		// only offered by the VT-x/SVM back ends, never by PVM.
		return KindHardware, "", ""
	}
	return KindUnknown, "", ""
}

func pvmGuestHint(sysModule string) string {
	if exists(sysModule + "/kvm_pvm") {
		return "; kvm_pvm is built in but this kernel is itself a PVM guest, so it does not bind"
	}
	return ""
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func readTrim(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return string(b)
}

// RunIoctls are the ioctl requests a VM makes once it is set up: running
// vCPUs, reading their registers for a crash report, and driving
// interrupt lines (the serial port, and virtio devices without irqfd). A
// seccomp filter may allow these and no other KVM ioctl.
func RunIoctls() []uint64 {
	return []uint64{ioctlRun, ioctlGetRegs, ioctlGetSregs, ioctlIRQLine}
}
