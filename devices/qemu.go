package devices

import "sync"

// Ports of QEMU's debugging devices, which unikernels and operating-system
// test suites write to end a run or report a panic.
const (
	// DebugExitPort is QEMU's isa-debug-exit device as configured by
	// "-device isa-debug-exit,iobase=0x501": a write of v (any width)
	// ends the run with status (v << 1) | 1.
	DebugExitPort = 0x501
	// PVPanicPort is the ISA pvpanic device QEMU places at 0x505: a write
	// with bit 0 set says the guest panicked; bit 1 says a crash kernel
	// was loaded (kdump) and the guest goes on.
	PVPanicPort = 0x505

	pvpanicPanicked    = 1 << 0
	pvpanicCrashLoaded = 1 << 1
)

// DebugExit is QEMU's isa-debug-exit: a write of v calls OnExit with
// (v << 1) | 1, truncated to a byte-sized exit status as QEMU's process
// status is. Reads return zero.
type DebugExit struct {
	OnExit func(status int)
}

func (d *DebugExit) Read(_ uint64, data []byte) { clear(data) }

func (d *DebugExit) Write(_ uint64, data []byte) {
	if len(data) == 0 || d.OnExit == nil {
		return
	}
	var v uint64
	for i, b := range data {
		v |= uint64(b) << (8 * i)
	}
	d.OnExit(int((v<<1 | 1) & 0xff))
}

// PVPanic is the ISA pvpanic device: a read returns the events it
// supports (panicked, crash loaded), a write with the panicked bit calls
// OnPanic once, and a write with only the crash-loaded bit calls
// OnCrashLoaded.
type PVPanic struct {
	OnPanic       func()
	OnCrashLoaded func()
	once          sync.Once
}

func (d *PVPanic) Read(offset uint64, data []byte) {
	clear(data)
	if offset == 0 && len(data) > 0 {
		data[0] = pvpanicPanicked | pvpanicCrashLoaded
	}
}

func (d *PVPanic) Write(offset uint64, data []byte) {
	if offset != 0 || len(data) == 0 {
		return
	}
	switch {
	case data[0]&pvpanicPanicked != 0:
		if d.OnPanic != nil {
			d.once.Do(d.OnPanic)
		}
	case data[0]&pvpanicCrashLoaded != 0:
		if d.OnCrashLoaded != nil {
			d.OnCrashLoaded()
		}
	}
}
