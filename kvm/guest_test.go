package kvm_test

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"testing"

	"github.com/capsule-vm/capsule/internal/kvmtest"
	"github.com/capsule-vm/capsule/kvm"
	"golang.org/x/sys/unix"
)

// newVM makes a VM with memSize bytes of RAM at guest-physical 0 and returns
// the VM and the host mapping of its RAM.
func newVM(t *testing.T, memSize int) (*kvm.VM, []byte) {
	t.Helper()
	sys := kvmtest.Open(t)
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	if err := vm.SetTSSAddr(0xfffbd000); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(-1, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	if err := vm.SetUserMemoryRegion(0, 0, 0, mem); err != nil {
		t.Fatal(err)
	}
	t.Logf("running on %s", kvmtest.Where())
	return vm, mem
}

// realModeVCPU makes a vCPU that starts in real mode at 0:ip.
func realModeVCPU(t *testing.T, vm *kvm.VM, id int, ip uint64) *kvm.VCPU {
	t.Helper()
	c, err := vm.CreateVCPU(id)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	s.CS.Base, s.CS.Selector = 0, 0
	s.DS.Base, s.DS.Selector = 0, 0
	if err := c.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := c.SetRegs(kvm.Regs{RIP: ip, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	return c
}

// run runs c until the next exit that is not an interruption.
func run(t *testing.T, c *kvm.VCPU) kvm.Exit {
	t.Helper()
	for {
		e, err := c.Run()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := e.(*kvm.InterruptedExit); !ok {
			return e
		}
	}
}

func wantIO(t *testing.T, e kvm.Exit, port uint16, out bool, size uint8) *kvm.IOExit {
	t.Helper()
	io, ok := e.(*kvm.IOExit)
	if !ok || io.Port != port || io.Out != out || io.Size != size || io.Count != 1 {
		t.Fatalf("exit = %v, want io out=%v port %#x size %d", e, out, port, size)
	}
	return io
}

func wantHalt(t *testing.T, e kvm.Exit) {
	t.Helper()
	if _, ok := e.(*kvm.HaltExit); !ok {
		t.Fatalf("exit = %v, want hlt", e)
	}
}

func TestRealModeGuestExits(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	vm, mem := newVM(t, 1<<16)
	copy(mem[0x1000:], []byte{
		0xb0, 0x42, // mov al, 0x42
		0xe6, 0x10, // out 0x10, al
		0xe4, 0x12, // in al, 0x12
		0xe6, 0x13, // out 0x13, al
		0xb8, 0x00, 0x20, // mov ax, 0x2000
		0x8e, 0xd8, // mov ds, ax
		0xc6, 0x06, 0x10, 0x00, 0x99, // mov byte [0x10], 0x99  (MMIO 0x20010)
		0xa0, 0x20, 0x00, // mov al, [0x20]  (MMIO 0x20020)
		0xe6, 0x14, // out 0x14, al
		0xf4, // hlt
	})
	c := realModeVCPU(t, vm, 0, 0x1000)

	t.Run("out gives the port and byte", func(t *testing.T) {
		io := wantIO(t, run(t, c), 0x10, true, 1)
		if !bytes.Equal(io.Data, []byte{0x42}) {
			t.Fatalf("out data = %x, want 42", io.Data)
		}
	})
	t.Run("in returns the byte the VMM supplies", func(t *testing.T) {
		io := wantIO(t, run(t, c), 0x12, false, 1)
		io.Data[0] = 0x5a
		io = wantIO(t, run(t, c), 0x13, true, 1)
		if io.Data[0] != 0x5a {
			t.Fatalf("guest echoed %#x, want 0x5a", io.Data[0])
		}
	})
	t.Run("mmio write and read", func(t *testing.T) {
		e := run(t, c)
		m, ok := e.(*kvm.MMIOExit)
		if !ok || !m.Write || m.Addr != 0x20010 || m.Len != 1 || m.Data[0] != 0x99 {
			t.Fatalf("exit = %v data %x, want mmio write 0x20010 = 99", e, m.Data)
		}
		e = run(t, c)
		m, ok = e.(*kvm.MMIOExit)
		if !ok || m.Write || m.Addr != 0x20020 || m.Len != 1 {
			t.Fatalf("exit = %v, want mmio read of 0x20020", e)
		}
		m.Data[0] = 0x77
		io := wantIO(t, run(t, c), 0x14, true, 1)
		if io.Data[0] != 0x77 {
			t.Fatalf("guest read %#x from mmio, want 0x77", io.Data[0])
		}
	})
	t.Run("hlt", func(t *testing.T) { wantHalt(t, run(t, c)) })
}

// setupLongMode writes a GDT and identity-mapping page tables for the first
// 2 MiB at low addresses of mem and puts c in 64-bit mode at rip.
func setupLongMode(t *testing.T, c *kvm.VCPU, mem []byte, rip uint64) {
	t.Helper()
	const gdt, pml4, pdpt, pd = 0x500, 0x2000, 0x3000, 0x4000
	le := binary.LittleEndian
	le.PutUint64(mem[gdt+8:], 0x00af9a000000ffff)  // 64-bit code
	le.PutUint64(mem[gdt+16:], 0x00cf92000000ffff) // data
	le.PutUint64(mem[pml4:], pdpt|3)
	le.PutUint64(mem[pdpt:], pd|3)
	le.PutUint64(mem[pd:], 0|0x83) // 2 MiB page, present, writable
	s, err := c.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	code := kvm.Segment{Base: 0, Limit: 0xffffffff, Selector: 8, Type: 11, Present: 1, S: 1, L: 1, G: 1}
	data := kvm.Segment{Base: 0, Limit: 0xffffffff, Selector: 16, Type: 3, Present: 1, S: 1, DB: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.GDT = kvm.DTable{Base: gdt, Limit: 23}
	s.CR3 = pml4
	s.CR4 = 1 << 5              // PAE
	s.CR0 = 1<<0 | 1<<4 | 1<<31 // PE, ET, PG
	s.EFER = 1<<8 | 1<<10       // LME, LMA
	if err := c.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := c.SetRegs(kvm.Regs{RIP: rip, RFLAGS: 2, RSP: 0x8000}); err != nil {
		t.Fatal(err)
	}
}

func TestLongModeGuestExits(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// RAM is the first 1 MiB; the page tables map 2 MiB, so 1-2 MiB is MMIO.
	vm, mem := newVM(t, 1<<20)
	copy(mem[0x1000:], []byte{
		0xb8, 0xef, 0xbe, 0xad, 0xde, // mov eax, 0xdeadbeef
		0xe7, 0x10, // out 0x10, eax
		0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // mov rax, 0x1122334455667788
		0x48, 0x89, 0x04, 0x25, 0x08, 0x00, 0x10, 0x00, // mov [0x100008], rax
		0x48, 0x8b, 0x0c, 0x25, 0x10, 0x00, 0x10, 0x00, // mov rcx, [0x100010]
		0xf4, // hlt
	})
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	setupLongMode(t, c, mem, 0x1000)

	io := wantIO(t, run(t, c), 0x10, true, 4)
	if got := binary.LittleEndian.Uint32(io.Data); got != 0xdeadbeef {
		t.Fatalf("out eax = %#x, want 0xdeadbeef", got)
	}
	e := run(t, c)
	m, ok := e.(*kvm.MMIOExit)
	if !ok || !m.Write || m.Addr != 0x100008 || m.Len != 8 || binary.LittleEndian.Uint64(m.Data) != 0x1122334455667788 {
		t.Fatalf("exit = %v, want 8-byte mmio write of 0x1122334455667788 at 0x100008", e)
	}
	e = run(t, c)
	m, ok = e.(*kvm.MMIOExit)
	if !ok || m.Write || m.Addr != 0x100010 || m.Len != 8 {
		t.Fatalf("exit = %v, want 8-byte mmio read at 0x100010", e)
	}
	binary.LittleEndian.PutUint64(m.Data, 0xcafef00dd00dfeed)
	wantHalt(t, run(t, c))
	r, err := c.Regs()
	if err != nil {
		t.Fatal(err)
	}
	if r.RCX != 0xcafef00dd00dfeed {
		t.Fatalf("rcx = %#x after mmio read, want 0xcafef00dd00dfeed", r.RCX)
	}
	s, err := c.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	if s.EFER&(1<<10) == 0 || s.CS.L != 1 {
		t.Fatalf("guest not in long mode: efer %#x cs.l %d", s.EFER, s.CS.L)
	}
}

func TestRegisterRoundTrips(t *testing.T) {
	vm, _ := newVM(t, 1<<16)
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("general registers", func(t *testing.T) {
		want := kvm.Regs{RAX: 1, RBX: 2, RCX: 3, RDX: 4, RSI: 5, RDI: 6, RSP: 7, RBP: 8,
			R8: 9, R9: 10, R10: 11, R11: 12, R12: 13, R13: 14, R14: 15, R15: 16, RIP: 0x1234, RFLAGS: 0x202}
		if err := c.SetRegs(want); err != nil {
			t.Fatal(err)
		}
		got, err := c.Regs()
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("regs = %+v, want %+v", got, want)
		}
	})
	t.Run("special registers", func(t *testing.T) {
		s, err := c.Sregs()
		if err != nil {
			t.Fatal(err)
		}
		s.CS.Base, s.CS.Selector = 0x10000, 0x1000
		s.GDT = kvm.DTable{Base: 0x500, Limit: 0x1f}
		if err := c.SetSregs(s); err != nil {
			t.Fatal(err)
		}
		got, err := c.Sregs()
		if err != nil {
			t.Fatal(err)
		}
		if got.CS.Base != 0x10000 || got.CS.Selector != 0x1000 || got.GDT.Base != 0x500 || got.GDT.Limit != 0x1f {
			t.Fatalf("sregs cs %+v gdt %+v", got.CS, got.GDT)
		}
	})
	t.Run("fpu", func(t *testing.T) {
		f, err := c.FPU()
		if err != nil {
			t.Fatal(err)
		}
		// KVM_SET_FPU ignores MXCSR, so only the x87 and XMM state is
		// round-tripped.
		f.FCW = 0x37f
		f.XMM[3][5] = 0xab
		if err := c.SetFPU(f); err != nil {
			t.Fatal(err)
		}
		got, err := c.FPU()
		if err != nil {
			t.Fatal(err)
		}
		if got.FCW != 0x37f || got.XMM[3][5] != 0xab {
			t.Fatalf("fpu fcw %#x xmm3[5] %#x", got.FCW, got.XMM[3][5])
		}
	})
	t.Run("msrs", func(t *testing.T) {
		const msrSysenterCS, msrSTAR = 0x174, 0xc0000081
		if err := c.SetMSRs([]kvm.MSR{{Index: msrSysenterCS, Data: 0x10}, {Index: msrSTAR, Data: 0x0023001000000000}}); err != nil {
			t.Fatal(err)
		}
		got, err := c.MSRs(msrSysenterCS, msrSTAR)
		if err != nil {
			t.Fatal(err)
		}
		if got[0].Data != 0x10 || got[1].Data != 0x0023001000000000 {
			t.Fatalf("msrs = %+v", got)
		}
	})
	t.Run("cpuid", func(t *testing.T) {
		sys := kvmtest.Open(t)
		sup, err := sys.SupportedCPUID()
		if err != nil {
			t.Fatal(err)
		}
		if len(sup) == 0 {
			t.Fatal("KVM_GET_SUPPORTED_CPUID returned no leaves")
		}
		if err := c.SetCPUID(sup); err != nil {
			t.Fatal(err)
		}
		got, err := c.CPUID()
		if err != nil {
			t.Fatal(err)
		}
		// What comes back is the leaves that were set (KVM adjusts some
		// bits of their values), except that newer kernels
		// leave out the leaves of features the process has no permission
		// for (AMX's 0x1d and 0x1e, AVX10's 0x24 without
		// ARCH_REQ_XCOMP_GUEST_PERM): seen with Linux 6.18.
		set := map[[2]uint32]kvm.CPUIDEntry{}
		for _, e := range sup {
			set[[2]uint32{e.Function, e.Index}] = e
		}
		mayDrop := map[uint32]bool{0x1d: true, 0x1e: true, 0x24: true}
		back := map[[2]uint32]bool{}
		for _, e := range got {
			k := [2]uint32{e.Function, e.Index}
			back[k] = true
			if _, ok := set[k]; !ok {
				t.Fatalf("cpuid round trip: leaf %#x/%d came back and was never set", e.Function, e.Index)
			}
		}
		if got[0].Function != 0 || got[0].EBX != sup[0].EBX {
			t.Fatalf("cpuid round trip: first leaf %+v, want the vendor leaf %+v", got[0], sup[0])
		}
		for k := range set {
			if !back[k] && !mayDrop[k[0]] {
				t.Fatalf("cpuid round trip: leaf %#x/%d was set and did not come back (%d of %d leaves did)", k[0], k[1], len(got), len(sup))
			}
		}
	})
}

func TestLAPICRoundTrip(t *testing.T) {
	vm, _ := newVM(t, 1<<16)
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreatePIT2(); err != nil {
		t.Fatal(err)
	}
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	const tpr = 0x80
	l.Regs[tpr] = 0x20
	if err := c.SetLAPIC(l); err != nil {
		t.Fatal(err)
	}
	got, err := c.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	if got.Regs[tpr] != 0x20 {
		t.Fatalf("LAPIC TPR = %#x, want 0x20", got.Regs[tpr])
	}
	if err := vm.SetIRQLine(4, true); err != nil {
		t.Fatal(err)
	}
	if err := vm.SetIRQLine(4, false); err != nil {
		t.Fatal(err)
	}
	clk, err := vm.Clock()
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.SetClock(clk.Clock + 1e9); err != nil {
		t.Fatal(err)
	}
}

func TestTwoVCPUsRunConcurrently(t *testing.T) {
	vm, mem := newVM(t, 1<<16)
	for i := range 2 {
		// vCPU i: out (0x20+i), i; hlt
		copy(mem[0x1000+0x100*i:], []byte{0xb0, byte(i), 0xe6, byte(0x20 + i), 0xf4})
	}
	vcpus := []*kvm.VCPU{realModeVCPU(t, vm, 0, 0x1000), realModeVCPU(t, vm, 1, 0x1100)}
	type result struct {
		id    int
		port  uint16
		value byte
		err   string
	}
	results := make(chan result, 2)
	for i, c := range vcpus {
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			r := result{id: i}
			for {
				e, err := c.Run()
				if err != nil {
					r.err = err.Error()
					break
				}
				if io, ok := e.(*kvm.IOExit); ok {
					r.port, r.value = io.Port, io.Data[0]
					continue
				}
				if _, ok := e.(*kvm.HaltExit); ok {
					break
				}
				if _, ok := e.(*kvm.InterruptedExit); !ok {
					r.err = "unexpected exit " + e.String()
					break
				}
			}
			results <- r
		}()
	}
	for range 2 {
		r := <-results
		if r.err != "" {
			t.Fatalf("vcpu %d: %s", r.id, r.err)
		}
		if r.port != uint16(0x20+r.id) || r.value != byte(r.id) {
			t.Errorf("vcpu %d wrote %#x to port %#x, want %#x to %#x", r.id, r.value, r.port, r.id, 0x20+r.id)
		}
	}
}

func TestKickStopsASpinningVCPU(t *testing.T) {
	vm, mem := newVM(t, 1<<16)
	copy(mem[0x1000:], []byte{0xeb, 0xfe}) // jmp $
	c := realModeVCPU(t, vm, 0, 0x1000)
	started := make(chan struct{})
	done := make(chan kvm.Exit, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		close(started)
		for {
			e, err := c.Run()
			if err != nil {
				t.Error(err)
				done <- nil
				return
			}
			if _, ok := e.(*kvm.InterruptedExit); ok {
				done <- e
				return
			}
		}
	}()
	<-started
	c.Kick()
	if e := <-done; e == nil {
		t.Fatal("vcpu failed")
	}
	// A kicked vCPU stays kicked: Run returns at once.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if e, err := c.Run(); err != nil || e.String() != "interrupted" {
		t.Fatalf("Run after Kick = %v, %v; want interrupted", e, err)
	}
}
