package vmm

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"

	"github.com/capsule-vm/capsule/internal/proc"
	"github.com/capsule-vm/capsule/kvm"
)

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
	for _, d := range v.slots {
		want += len(d.eventFDs)
	}
	if runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
	errs := make([]error, len(v.vcpus))
	v.mu.Lock()
	v.exits = make([]*exitCounts, len(v.vcpus))
	for i := range v.exits {
		v.exits[i] = newExitCounts()
	}
	v.mu.Unlock()
	var wg sync.WaitGroup
	for i, c := range v.vcpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = v.runVCPU(c, v.exits[i])
			if errs[i] != nil {
				v.stop(Result{Reason: ReasonCrash, Status: StatusCrash, Detail: errs[i].Error()})
			}
		}()
	}
	// Start-up garbage (flag parsing, CPUID buffers, table building) is
	// handed back to the host while the guest boots, off the critical
	// path. (The heap's huge pages are kept away by the binary's
	// disablethp=1 GODEBUG default, see the Makefile: under THP "always"
	// a released page inside a huge page stayed resident.)
	debug.FreeOSMemory()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		v.stop(Result{Reason: ReasonCanceled})
		<-done
	}
	v.finishOutput()
	v.mu.Lock()
	r := v.result
	r.FirstRun, r.Boot = v.firstRun, v.boot
	v.mu.Unlock()
	return r, errors.Join(errs...)
}

// runVCPU is one vCPU's thread: it runs the guest and dispatches exits
// until the VM stops.
func (v *VM) runVCPU(c *kvm.VCPU, n *exitCounts) error {
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
			n.io[e.Port]++
			v.handleIO(e)
		case *kvm.MMIOExit:
			n.mmio[e.Addr&^0xfff]++
			v.handleMMIO(e)
		case *kvm.InterruptedExit:
			// A kick (checked by the loop) or a stray signal.
			n.other["interrupted"]++
		case *kvm.ShutdownExit:
			v.stop(Result{Reason: ReasonTripleFault, Status: StatusTripleFault,
				Detail: fmt.Sprintf("guest triple-faulted on vCPU %d\n%s", c.ID(), shutdownState(c))})
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

// shutdownState describes a vCPU's registers after a triple fault. On
// AMD, KVM puts the vCPU through INIT before it reports the shutdown, so
// what it holds then is the reset state, not the state at the fault: the
// report says so rather than show those registers as the fault's.
func shutdownState(c *kvm.VCPU) string {
	r, s, err := registers(c)
	if err != nil {
		return err.Error()
	}
	if isResetState(r, s) {
		return "registers not shown: KVM re-initialised the vCPU before reporting the shutdown (as it does on AMD), " +
			"so they hold the reset state (RIP=fff0, CS=f000), not the state at the fault"
	}
	return formatState(r, s)
}

// isResetState reports whether a vCPU is in the x86 power-on/INIT state:
// real mode at the reset vector.
func isResetState(r kvm.Regs, s kvm.Sregs) bool {
	return r.RIP == 0xfff0 && s.CS.Selector == 0xf000 && s.CS.Base == 0xffff0000 && s.CR0&1 == 0
}

// dumpState formats a vCPU's registers for a crash report.
func dumpState(c *kvm.VCPU) string {
	r, s, err := registers(c)
	if err != nil {
		return err.Error()
	}
	return formatState(r, s)
}

// registers reads a vCPU's general and special registers.
func registers(c *kvm.VCPU) (kvm.Regs, kvm.Sregs, error) {
	r, err := c.Regs()
	if err != nil {
		return r, kvm.Sregs{}, fmt.Errorf("registers unavailable: %w", err)
	}
	s, err := c.Sregs()
	if err != nil {
		return r, s, fmt.Errorf("special registers unavailable: %w", err)
	}
	return r, s, nil
}

func formatState(r kvm.Regs, s kvm.Sregs) string {
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
