// Package vmm runs one virtual machine: it builds guest memory, loads the
// kernel, creates vCPUs and devices from a [Config], runs the vCPUs on
// their own OS threads and stops them all when the guest or the caller
// says so.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/capsule-vm/capsule/bootloader"
	"github.com/capsule-vm/capsule/devices"
	"github.com/capsule-vm/capsule/internal/proc"
	"github.com/capsule-vm/capsule/kvm"
	"github.com/capsule-vm/capsule/machine"
	"github.com/capsule-vm/capsule/virtio"
)

// Config describes a VM. Zero values take the defaults below.
type Config struct {
	Kernel    string // Linux bzImage, ELF vmlinux with a PVH note, Multiboot kernel or capsule unikernel
	Initrd    string // optional initial ramdisk (Linux, PVH) or module (Multiboot)
	Cmdline   string
	CPUs      int       // default 1
	MemoryMiB int       // default 128
	Console   io.Writer // serial output; default os.Stdout
	Disks     []Disk    // virtio-blk disks, in order (the first is /dev/vda)
	Nets      []Net     // virtio-net interfaces, in order (eth0, ...)
	Vsock     *Vsock    // add a virtio-vsock device
	RNG       bool      // add a virtio-rng device
	Log       io.Writer // device errors; default os.Stderr
}

// Defaults.
const (
	DefaultCPUs      = 1
	DefaultMemoryMiB = 128
)

// Exit statuses capsule uses for stops the guest did not choose itself.
const (
	StatusTripleFault = 125 // KVM_EXIT_SHUTDOWN
	StatusCrash       = 126 // entry failure, KVM internal error, unhandled exit
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
)

func (r Reason) String() string {
	return [...]string{"exit port", "reset", "triple fault", "crash", "canceled", "power off"}[r]
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

	serial *devices.Serial
	phases []Phase

	virtioDevs    []virtio.Device // opened by New, in MMIO order
	virtioClosers []func() error  // their resources, same order
	virtio        []*virtioDev    // wired to KVM

	mu       sync.Mutex
	stopped  bool
	result   Result
	firstRun time.Duration
	boot     time.Duration
	started  bool
}

// New validates cfg, loads the kernel into fresh guest memory and sets up
// the VM. Errors name the flag or file at fault. The flags are checked
// before anything else; the kernel and initrd are then loaded while KVM
// is set up in parallel (the copy into guest RAM is the longest step of
// start-up), and a loader error is returned in preference to any KVM one,
// so a bad file gives the same error on a host without KVM.
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
	if cfg.CPUs < 1 || cfg.CPUs > 255 {
		return nil, fmt.Errorf("--cpus %d: must be between 1 and 255", cfg.CPUs)
	}
	if cfg.MemoryMiB < machine.MinMemory/machine.MiB {
		return nil, fmt.Errorf("--memory %d: at least %d MiB needed", cfg.MemoryMiB, machine.MinMemory/machine.MiB)
	}
	if cfg.Kernel == "" {
		return nil, errors.New("--kernel is required")
	}
	devs, closers, err := openVirtio(cfg)
	if err != nil {
		return nil, err
	}
	if len(devs) > 0 {
		cfg.Cmdline = strings.TrimSpace(cfg.Cmdline + virtioCmdline(len(devs)))
	}
	mem, err := machine.NewGuestMemory(uint64(cfg.MemoryMiB) * machine.MiB)
	if err != nil {
		for _, c := range closers {
			c()
		}
		return nil, fmt.Errorf("--memory %d: %w", cfg.MemoryMiB, err)
	}
	v := &VM{cfg: cfg, mem: mem, virtioDevs: devs, virtioClosers: closers}
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

func (v *VM) load() error {
	entry, info, err := bootloader.Load(v.mem, bootloader.Config{
		Kernel: v.cfg.Kernel, Initrd: v.cfg.Initrd, Cmdline: v.cfg.Cmdline, CPUs: v.cfg.CPUs,
	})
	if err != nil {
		return err
	}
	switch entry.Mode {
	case bootloader.Mode64:
		err = machine.SetupLongMode(v.mem)
	case bootloader.Mode32:
		err = machine.SetupGDT(v.mem)
	default:
		err = fmt.Errorf("kernel %s: loader returned no entry mode", v.cfg.Kernel)
	}
	if err != nil {
		return err
	}
	// Kernels find the vCPUs and the I/O APIC in the MP table (without
	// ACPI) or in the ACPI MADT; both describe the same machine.
	if err := machine.WriteMPTable(v.mem, v.cfg.CPUs); err != nil {
		return err
	}
	if err := machine.WriteACPITables(v.mem, v.cfg.CPUs); err != nil {
		return err
	}
	v.entry, v.info = entry, info
	return nil
}

// Info describes the loaded kernel.
func (v *VM) Info() bootloader.Info { return v.info }

// Close releases the vCPUs, the VM, /dev/kvm and guest memory.
func (v *VM) Close() error {
	errs := []error{v.closeVirtio()}
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
	return errors.Join(errs...)
}

// create opens KVM and builds the VM, its devices and vCPUs.
func (v *VM) create() error {
	sys, err := kvm.Open()
	if err != nil {
		return err
	}
	v.sys = sys
	v.mark("/dev/kvm opened")
	if max := sys.MaxVCPUs(); v.cfg.CPUs > max {
		return fmt.Errorf("--cpus %d: this host's KVM allows at most %d vCPUs", v.cfg.CPUs, max)
	}
	if v.vm, err = sys.CreateVM(); err != nil {
		return err
	}
	// Addresses just below 4 GiB, outside RAM and the devices, for the
	// TSS and identity map VT-x needs (harmless on AMD).
	if err := v.vm.SetTSSAddr(0xfffbd000); err != nil {
		return err
	}
	if err := v.vm.SetIdentityMapAddr(0xfffbc000); err != nil {
		return err
	}
	if err := v.vm.CreateIRQChip(); err != nil {
		return err
	}
	if err := v.vm.CreatePIT2(); err != nil {
		return err
	}
	if err := v.mem.MapInto(func(slot uint32, gpa uint64, host []byte) error {
		return v.vm.SetUserMemoryRegion(slot, 0, gpa, host)
	}); err != nil {
		return fmt.Errorf("--memory %d: %w", v.cfg.MemoryMiB, err)
	}
	v.mark("VM with irqchip, PIT and memory created")
	if err := v.addDevices(); err != nil {
		return err
	}
	if err := v.addVirtio(v.cfg.Log); err != nil {
		return err
	}
	return v.createVCPUs()
}

// irqLine is an in-kernel irqchip input as a devices.Interrupt.
type irqLine struct {
	vm  *kvm.VM
	irq uint32
}

func (l irqLine) SetLevel(high bool) error { return l.vm.SetIRQLine(l.irq, high) }

func (v *VM) addDevices() error {
	v.serial = devices.NewSerial(v.cfg.Console, irqLine{v.vm, devices.COM1IRQ})
	for _, d := range []struct {
		base, size uint64
		dev        devices.Device
	}{
		{devices.COM1Port, 8, v.serial},
		{devices.I8042Data, 5, &devices.I8042{OnReset: func() { v.stop(Result{Reason: ReasonReset}) }}},
		{devices.ExitPort, 1, &devices.ExitDevice{OnExit: func(s byte) { v.stop(Result{Reason: ReasonExitPort, Status: int(s)}) }}},
		{devices.BootMarkerPort, 1, &devices.BootMarker{OnBoot: v.markBoot}},
		{devices.RTCPort, devices.RTCPorts, devices.NewRTC(nil)},
		{devices.PMBase, devices.PMPorts, &devices.PowerControl{OnPowerOff: func() { v.stop(Result{Reason: ReasonPowerOff}) }}},
	} {
		if err := v.pio.insert(d.base, d.size, d.dev); err != nil {
			return err
		}
	}
	return nil
}

func (v *VM) createVCPUs() error {
	supported, err := v.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	v.mark("supported CPUID read")
	cpuid := machine.CPUIDConfig{CPUs: v.cfg.CPUs, TSCDeadline: v.sys.CheckExtension(kvm.CapTSCDeadline) > 0}
	for id := range v.cfg.CPUs {
		c, err := v.vm.CreateVCPU(id)
		if err != nil {
			return fmt.Errorf("--cpus %d: %w", v.cfg.CPUs, err)
		}
		v.vcpus = append(v.vcpus, c)
		if id == 0 && v.sys.CheckExtension(kvm.CapGetTSCKHz) > 0 {
			if khz, err := c.TSCKHz(); err == nil {
				cpuid.TSCKHz = khz
			}
		}
		if err := c.SetCPUID(machine.CPUID(supported, id, cpuid)); err != nil {
			return err
		}
		if err := c.SetMSRs(machine.BootMSRs()); err != nil {
			return err
		}
		l, err := c.LAPIC()
		if err != nil {
			return err
		}
		machine.SetLINTs(&l)
		if err := c.SetLAPIC(l); err != nil {
			return err
		}
	}
	return nil
}

// setBootState puts the boot vCPU at the kernel's entry, once the loader
// has said where that is; the others wait for INIT/SIPI in the in-kernel
// local APIC, as on hardware.
func (v *VM) setBootState() error {
	boot := v.vcpus[0]
	s, err := boot.Sregs()
	if err != nil {
		return err
	}
	if v.entry.Mode == bootloader.Mode64 {
		machine.LongModeSregs(&s)
	} else {
		machine.ProtectedModeSregs(&s)
	}
	if err := boot.SetSregs(s); err != nil {
		return err
	}
	e := v.entry
	return boot.SetRegs(kvm.Regs{RIP: e.RIP, RSP: e.RSP, RAX: e.RAX, RBX: e.RBX, RDI: e.RDI, RSI: e.RSI, RFLAGS: 2})
}

// Receive sends console input to the guest's serial port.
func (v *VM) Receive(p []byte) { v.serial.Receive(p) }

func (v *VM) markBoot() {
	t := proc.Since()
	v.mu.Lock()
	v.boot = t
	v.mu.Unlock()
}

// stop records why the VM stops (the first reason wins) and kicks every
// vCPU out of the guest.
func (v *VM) stop(r Result) {
	v.mu.Lock()
	if v.stopped {
		v.mu.Unlock()
		return
	}
	v.stopped = true
	v.result = r
	v.mu.Unlock()
	for _, c := range v.vcpus {
		c.Kick()
	}
}

func (v *VM) isStopped() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.stopped
}

// Run runs the VM until the guest stops it or ctx ends, and returns how it
// ended. Every vCPU thread has finished when Run returns. A VM runs once.
func (v *VM) Run(ctx context.Context) (Result, error) {
	v.mu.Lock()
	if v.started {
		v.mu.Unlock()
		return Result{}, errors.New("vmm: VM already ran")
	}
	v.started = true
	v.mu.Unlock()

	// A thread inside a blocking system call keeps its P (in syscall state)
	// until the runtime's sysmon takes it back, which can take 10 ms when
	// the process is otherwise idle. vCPU threads sit in KVM_RUN, and each
	// queue with an ioeventfd has a device goroutine asleep in read(2) (see
	// virtio.Kick); with GOMAXPROCS no larger than their number (one host
	// CPU, or a small container), a woken device goroutine or the main one
	// would wait for sysmon. Two spare Ps avoid that.
	want := len(v.vcpus) + 2
	for _, d := range v.virtio {
		want += len(d.eventFDs)
	}
	if runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
	errs := make([]error, len(v.vcpus))
	var wg sync.WaitGroup
	for i, c := range v.vcpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = v.runVCPU(c)
			if errs[i] != nil {
				v.stop(Result{Reason: ReasonCrash, Status: StatusCrash, Detail: errs[i].Error()})
			}
		}()
	}
	// Start-up garbage (flag parsing, CPUID buffers, table building) is
	// handed back to the host while the guest boots, off the critical
	// path: with transparent huge pages the idle heap would otherwise keep
	// whole 2 MiB pages resident.
	debug.FreeOSMemory()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		v.stop(Result{Reason: ReasonCanceled})
		<-done
	}
	v.mu.Lock()
	r := v.result
	r.FirstRun, r.Boot = v.firstRun, v.boot
	v.mu.Unlock()
	return r, errors.Join(errs...)
}

// runVCPU is one vCPU's thread: it runs the guest and dispatches exits
// until the VM stops.
func (v *VM) runVCPU(c *kvm.VCPU) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if c.ID() == 0 {
		t := proc.Since()
		v.mu.Lock()
		v.firstRun = t
		v.mu.Unlock()
	}
	for !v.isStopped() {
		e, err := c.Run()
		if err != nil {
			return err
		}
		switch e := e.(type) {
		case *kvm.IOExit:
			v.handleIO(e)
		case *kvm.MMIOExit:
			v.handleMMIO(e)
		case *kvm.InterruptedExit:
			// A kick (checked by the loop) or a stray signal.
		case *kvm.ShutdownExit:
			v.stop(Result{Reason: ReasonTripleFault, Status: StatusTripleFault,
				Detail: fmt.Sprintf("guest triple-faulted on vCPU %d\n%s", c.ID(), dumpState(c))})
		case *kvm.SystemEventExit:
			if e.Type == kvm.SystemEventReset || e.Type == kvm.SystemEventShutdown {
				v.stop(Result{Reason: ReasonReset})
			} else {
				v.stop(Result{Reason: ReasonCrash, Status: StatusCrash, Detail: fmt.Sprintf("vCPU %d: %v", c.ID(), e)})
			}
		case *kvm.HaltExit:
			// Only without an in-kernel irqchip; nothing can wake it.
			v.stop(Result{Reason: ReasonCrash, Status: StatusCrash, Detail: fmt.Sprintf("vCPU %d halted with nothing to wake it", c.ID())})
		default: // FailEntry, InternalError, Unknown
			v.stop(Result{Reason: ReasonCrash, Status: StatusCrash,
				Detail: fmt.Sprintf("vCPU %d: %v\n%s", c.ID(), e, dumpState(c))})
		}
	}
	return nil
}

func (v *VM) handleIO(e *kvm.IOExit) {
	size := uint64(e.Size)
	for i := uint64(0); i < uint64(e.Count); i++ {
		data := e.Data[i*size : (i+1)*size]
		dev, off, ok := v.pio.lookup(uint64(e.Port))
		switch {
		case !ok && e.Out:
		case !ok:
			for j := range data {
				data[j] = 0xff // nothing on the bus
			}
		case e.Out:
			dev.Write(off, data)
		default:
			dev.Read(off, data)
		}
	}
}

func (v *VM) handleMMIO(e *kvm.MMIOExit) {
	dev, off, ok := v.mmio.lookup(e.Addr)
	switch {
	case !ok && e.Write:
	case !ok:
		clear(e.Data)
	case e.Write:
		dev.Write(off, e.Data)
	default:
		dev.Read(off, e.Data)
	}
}

// dumpState formats a vCPU's registers for a crash report.
func dumpState(c *kvm.VCPU) string {
	r, err := c.Regs()
	if err != nil {
		return "registers unavailable: " + err.Error()
	}
	s, err := c.Sregs()
	if err != nil {
		return "special registers unavailable: " + err.Error()
	}
	return fmt.Sprintf("RIP=%016x RSP=%016x RFLAGS=%08x\n"+
		"RAX=%016x RBX=%016x RCX=%016x RDX=%016x\n"+
		"RSI=%016x RDI=%016x RBP=%016x R8 =%016x\n"+
		"R9 =%016x R10=%016x R11=%016x R12=%016x\n"+
		"R13=%016x R14=%016x R15=%016x\n"+
		"CS=%04x(base %x l=%d) SS=%04x CR0=%08x CR2=%016x CR3=%016x CR4=%08x EFER=%x",
		r.RIP, r.RSP, r.RFLAGS, r.RAX, r.RBX, r.RCX, r.RDX, r.RSI, r.RDI, r.RBP, r.R8,
		r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15,
		s.CS.Selector, s.CS.Base, s.CS.L, s.SS.Selector, s.CR0, s.CR2, s.CR3, s.CR4, s.EFER)
}

// Usage is the VMM's memory use.
type Usage struct {
	RSS           uint64 // resident set of the whole process
	GuestResident uint64 // of which guest RAM
}

// Overhead is the memory the VMM itself uses: RSS less resident guest RAM.
func (u Usage) Overhead() uint64 {
	if u.GuestResident > u.RSS {
		return 0
	}
	return u.RSS - u.GuestResident
}

// MemoryUsage measures the process's RSS and the resident part of guest
// RAM. Call it before Close.
func (v *VM) MemoryUsage() (Usage, error) {
	var u Usage
	if v.mem == nil {
		return u, errors.New("vmm: VM closed")
	}
	g, err := v.mem.Resident()
	if err != nil {
		return u, err
	}
	u.GuestResident = g
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return u, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb uint64
			if _, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), &kb); err != nil {
				return u, fmt.Errorf("parse VmRSS %q: %w", rest, err)
			}
			u.RSS = kb << 10
			return u, nil
		}
	}
	return u, errors.New("no VmRSS in /proc/self/status")
}
