// Package vmm runs one virtual machine: it builds guest memory, loads the
// kernel, creates vCPUs and devices from a [Config], runs the vCPUs on
// their own OS threads and stops them all when the guest or the caller
// says so.
//
// The files follow the VM's life: vmm.go (configuration and results,
// New, Close), build.go (memory, kernel, KVM and vCPU set-up), devices.go
// and specs.go (virtio devices: specs, slots, wiring), legacy.go (the
// port-I/O devices of the PC), run.go (the vCPU threads and their exits),
// usage.go (memory accounting) and host.go (what a caller needs to know
// of the host's KVM).
package vmm

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/capsule-vm/capsule/bootloader"
	"github.com/capsule-vm/capsule/devices"
	"github.com/capsule-vm/capsule/internal/proc"
	"github.com/capsule-vm/capsule/kvm"
	"github.com/capsule-vm/capsule/machine"
)

// Config describes a VM. Zero values take the defaults below.
type Config struct {
	Kernel    string // Linux bzImage, ELF vmlinux, Multiboot kernel or capsule unikernel
	Initrd    string // optional initial ramdisk (Linux) or module (Multiboot)
	Cmdline   string
	CPUs      int // default 1
	MemoryMiB int // default 128
	// Console gets the guest's serial output; default os.Stdout. A
	// goroutine of the VM writes it, in batches, from a buffer of
	// devices.ConsoleBufferSize bytes: a writer that does not keep up
	// (a pipe nobody reads) loses output, never stalls the guest or a
	// stop. When the vCPUs stop, Run waits at most 500 ms for the writer
	// to catch up, then abandons it and reports on Log the bytes lost
	// ("capsule: N bytes of console output dropped: ..."). The VM never
	// closes Console.
	Console io.Writer
	// Devices are the VM's virtio devices; Devices[n] gets slot n (see
	// Device).
	Devices []Device
	// Log gets device errors and other lines the guest can trigger,
	// prefixed "capsule: "; default os.Stderr. It is buffered as Console
	// is (64 KiB, at most 250 ms of waiting at the end of Run), and each
	// device prints at most 10 lines a second, then one "N more messages
	// suppressed" line. The VM never closes Log.
	Log io.Writer
}

// Defaults and bounds.
const (
	DefaultCPUs      = 1
	DefaultMemoryMiB = 128
	// MaxCPUs is the most vCPUs capsule describes (APIC ids 0-254 in the
	// MP and ACPI tables, 255 being the broadcast id); the host's KVM may
	// allow fewer.
	MaxCPUs = 254
	// MaxMemoryMiB bounds guest RAM at 1 TiB.
	MaxMemoryMiB = 1 << 20
)

// CheckCPUs says what is wrong with a vCPU count, or nil.
func CheckCPUs(n int) error {
	if n < 1 || n > MaxCPUs {
		return fmt.Errorf("must be between 1 and %d", MaxCPUs)
	}
	return nil
}

// CheckMemory says what is wrong with a guest RAM size in MiB, or nil.
func CheckMemory(mib int) error {
	if min := int(machine.MinMemory / machine.MiB); mib < min || mib > MaxMemoryMiB {
		return fmt.Errorf("must be between %d and %d MiB", min, MaxMemoryMiB)
	}
	return nil
}

// Exit statuses capsule uses for stops the guest did not choose itself.
const (
	StatusTripleFault = 125 // KVM_EXIT_SHUTDOWN
	StatusCrash       = 126 // entry failure, KVM internal error, unhandled exit
	// StatusPanic: the guest reported a panic through pvpanic. Even, so
	// that no isa-debug-exit status ((v << 1) | 1, always odd) is taken
	// for it, and clear of the shell's 126-127.
	StatusPanic = 122
)

// Reason is why a VM stopped.
type Reason int

const (
	ReasonExitPort    Reason = iota // the guest wrote its status to the exit port
	ReasonReset                     // the guest reset the machine (reboot)
	ReasonTripleFault               // the guest triple-faulted
	ReasonCrash                     // the vCPU could not go on (fail entry, internal error, ...)
	ReasonCanceled                  // the caller's context ended (signal, timeout, console key)
	ReasonPowerOff                  // the guest powered off (ACPI PM1a SLP_EN)
	ReasonDebugExit                 // the guest wrote to QEMU's isa-debug-exit port
	ReasonPanic                     // the guest reported a panic (pvpanic)
)

func (r Reason) String() string {
	names := [...]string{"exit port", "reset", "triple fault", "crash", "canceled", "power off", "debug exit", "guest panic"}
	if r < 0 || int(r) >= len(names) {
		return fmt.Sprintf("Reason(%d)", int(r))
	}
	return names[r]
}

// Result is how a VM's run ended.
type Result struct {
	Reason Reason
	Status int    // the exit status capsule should report
	Detail string // for a triple fault or crash: what happened, with registers
	// Times since the capsule process started (zero when not reached).
	FirstRun time.Duration // the first KVM_RUN
	Boot     time.Duration // the guest's boot-time marker
}

// VM is a configured virtual machine. Create it with New, run it once with
// Run, and Close it.
type VM struct {
	cfg   Config
	mem   *machine.GuestMemory
	entry bootloader.Entry
	info  bootloader.Info
	sys   *kvm.System
	vm    *kvm.VM
	vcpus []*kvm.VCPU
	pio   bus
	mmio  bus
	slots []*slot       // virtio devices, opened by New, in slot order
	exits []*exitCounts // per vCPU, from Run on
	// status is /proc/self/status, opened by New for MemoryUsage.
	status *os.File

	serial     *devices.Serial
	log        *devices.OutputBuffer // Config.Log, buffered
	deviceLogs []*deviceLog          // the virtio devices' rate-limited lines
	phases     []Phase

	mu       sync.Mutex
	stopped  bool
	result   Result
	firstRun time.Duration
	boot     time.Duration
	started  bool
}

// New validates cfg, opens the devices, loads the kernel into fresh guest
// memory and sets up the VM. Errors are one line naming the setting or
// file at fault. The settings are checked before anything else; the
// kernel and initrd are then loaded while KVM is set up in parallel (the
// copy into guest RAM is the longest step of start-up), and a loader
// error is returned in preference to any KVM one, so a bad file gives
// the same error on a host without KVM.
func New(cfg Config) (*VM, error) {
	if cfg.CPUs == 0 {
		cfg.CPUs = DefaultCPUs
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = DefaultMemoryMiB
	}
	if cfg.Console == nil {
		cfg.Console = os.Stdout
	}
	if cfg.Log == nil {
		cfg.Log = os.Stderr
	}
	if err := CheckCPUs(cfg.CPUs); err != nil {
		return nil, fmt.Errorf("%d vCPUs: %w", cfg.CPUs, err)
	}
	if err := CheckMemory(cfg.MemoryMiB); err != nil {
		return nil, fmt.Errorf("%d MiB of memory: %w", cfg.MemoryMiB, err)
	}
	if cfg.Kernel == "" {
		return nil, errors.New("no kernel given")
	}
	if err := checkDevices(cfg.Devices); err != nil {
		return nil, err
	}
	// A mistyped kernel path is reported before any device exists (a TAP
	// created, a socket bound); the kernel is read in full later.
	if _, err := os.Stat(cfg.Kernel); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("kernel %s: %w", cfg.Kernel, bootloader.ErrNotFound)
	}
	slots, err := openDevices(cfg.Devices)
	if err != nil {
		return nil, err
	}
	if len(slots) > 0 {
		cfg.Cmdline = strings.TrimSpace(cfg.Cmdline + virtioCmdline(slots))
	}
	mem, err := machine.NewGuestMemory(uint64(cfg.MemoryMiB) * machine.MiB)
	if err != nil {
		closeDevices(slots)
		return nil, fmt.Errorf("%d MiB of memory: %w", cfg.MemoryMiB, err)
	}
	v := &VM{cfg: cfg, mem: mem, slots: slots, log: devices.NewOutputBuffer(cfg.Log, logBufferSize)}
	v.status, _ = os.Open("/proc/self/status") // MemoryUsage says if it failed
	v.mark("guest memory mapped")
	loaded := make(chan error, 1)
	go func() {
		err := v.load()
		v.mark("kernel loaded")
		loaded <- err
	}()
	createErr := v.create()
	if err := <-loaded; err != nil {
		v.Close()
		return nil, err
	}
	if createErr == nil {
		createErr = v.canBoot()
	}
	if createErr == nil {
		createErr = v.setBootState()
	}
	if createErr != nil {
		v.Close()
		return nil, createErr
	}
	v.mark("VM and vCPUs created")
	return v, nil
}

// Phase is a start-up step and when it ended, since the process started.
type Phase struct {
	Name string
	At   time.Duration
}

func (v *VM) mark(name string) {
	t := proc.Since()
	v.mu.Lock()
	v.phases = append(v.phases, Phase{name, t})
	v.mu.Unlock()
}

// Phases lists the start-up steps New took, in the order they ended, for
// diagnosing slow starts. Loading and KVM set-up overlap.
func (v *VM) Phases() []Phase {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]Phase(nil), v.phases...)
}

// Info describes the loaded kernel.
func (v *VM) Info() bootloader.Info { return v.info }

// Close stops the devices and releases their back ends (flushing disks),
// the vCPUs, the VM, /dev/kvm and guest memory.
func (v *VM) Close() error {
	v.mu.Lock()
	slots := v.slots
	v.slots = nil
	v.mu.Unlock()
	errs := []error{closeDevices(slots)}
	if v.serial != nil {
		v.serial.Close(0) // Run flushed it; otherwise nothing is waited for
	}
	if v.log != nil {
		v.log.Close(0)
	}
	if v.vm != nil {
		errs = append(errs, v.vm.Close()) // closes the vCPUs too
		v.vm = nil
	}
	if v.sys != nil {
		errs = append(errs, v.sys.Close())
		v.sys = nil
	}
	if v.mem != nil {
		errs = append(errs, v.mem.Close())
		v.mem = nil
	}
	if v.status != nil {
		v.status.Close()
		v.status = nil
	}
	return errors.Join(errs...)
}

// DiscardMemory gives guest RAM [gpa, gpa+n) back to the host; the guest
// reads zeroes there afterwards (see machine.GuestMemory.Discard). A
// balloon device frees the pages its guest hands over with it.
func (v *VM) DiscardMemory(gpa, n uint64) error {
	if v.mem == nil {
		return errors.New("vmm: VM closed")
	}
	return v.mem.Discard(gpa, n)
}
