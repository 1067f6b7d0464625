package devices

import "sync"

// Debug ports capsule offers every guest.
const (
	// ExitPort: a byte written here stops the VM; capsule exits with it.
	ExitPort = 0xf4
	// BootMarkerPort: the guest writes BootMarkerValue here when it has
	// booted; capsule records the time since its process started.
	BootMarkerPort  = 0xf5
	BootMarkerValue = 123
	// I8042Port is the i8042 command/status port; command 0xfe pulses the
	// CPU reset line (how Linux's reboot=k and many guests reset).
	I8042Port     = 0x64
	I8042Data     = 0x60
	i8042CmdReset = 0xfe
)

// ExitDevice turns a guest write on ExitPort into a stop request.
type ExitDevice struct {
	OnExit func(status byte)
}

func (d *ExitDevice) Read(_ uint64, data []byte) { clear(data) }

func (d *ExitDevice) Write(_ uint64, data []byte) {
	if len(data) > 0 && d.OnExit != nil {
		d.OnExit(data[0])
	}
}

// BootMarker calls OnBoot the first time the guest writes
// BootMarkerValue.
type BootMarker struct {
	OnBoot func()
	once   sync.Once
}

func (d *BootMarker) Read(_ uint64, data []byte) { clear(data) }

func (d *BootMarker) Write(_ uint64, data []byte) {
	if len(data) > 0 && data[0] == BootMarkerValue && d.OnBoot != nil {
		d.once.Do(d.OnBoot)
	}
}

// I8042 is just enough of the PS/2 controller for a guest to reset the
// machine: it spans ports 0x60-0x64 and reports an empty controller.
type I8042 struct {
	OnReset func()
}

func (d *I8042) Read(_ uint64, data []byte) { clear(data) }

func (d *I8042) Write(offset uint64, data []byte) {
	if offset == I8042Port-I8042Data && len(data) > 0 && data[0] == i8042CmdReset && d.OnReset != nil {
		d.OnReset()
	}
}

// ACPI PM1a registers as capsule's ACPI tables describe them: the event
// block (status and enable, 4 bytes) at PMBase and the control register
// right after it, at 0x604 as on QEMU's machines. Guests without ACPI
// tables (many Multiboot unikernels) write SLP_EN to 0x604 to power off.
const (
	PMBase          = 0x600
	PMPorts         = 6
	PM1aControlPort = PMBase + 4
	pm1SCIEnable    = 1 << 0
	pm1SleepEnable  = 1 << 13
)

// PowerControl is the PM1a event and control block. PM1 status reads as
// zero (no event ever fires the SCI); PM1 enable keeps what the guest
// writes, as ACPI drivers check; PM1a control reads with SCI_EN set (the
// machine is always in ACPI mode) and calls OnPowerOff when the guest sets
// SLP_EN (a 16-bit write of 0x2000 is the usual S5 request).
type PowerControl struct {
	OnPowerOff func()

	mu     sync.Mutex
	enable [2]byte
}

const (
	pm1EnableOffset  = 2
	pm1ControlOffset = PM1aControlPort - PMBase
)

func (d *PowerControl) Read(offset uint64, data []byte) {
	clear(data)
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range data {
		switch off := offset + uint64(i); off {
		case pm1EnableOffset, pm1EnableOffset + 1:
			data[i] = d.enable[off-pm1EnableOffset]
		case pm1ControlOffset:
			data[i] = pm1SCIEnable
		}
	}
}

func (d *PowerControl) Write(offset uint64, data []byte) {
	d.mu.Lock()
	for i, b := range data {
		if off := offset + uint64(i); off == pm1EnableOffset || off == pm1EnableOffset+1 {
			d.enable[off-pm1EnableOffset] = b
		}
	}
	d.mu.Unlock()
	if offset != pm1ControlOffset || len(data) < 2 || d.OnPowerOff == nil {
		return
	}
	if (uint16(data[0])|uint16(data[1])<<8)&pm1SleepEnable != 0 {
		d.OnPowerOff()
	}
}
