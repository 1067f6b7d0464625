// Package devices holds capsule's emulated legacy devices: the 16550A UART,
// the i8042 reset line and the debug ports (exit status and boot-time
// marker).
//
// A device sees only register offsets and data, plus an [Interrupt] line
// handed to it by the VMM; it never touches KVM or guest memory. Register
// handlers run on the vCPU thread that trapped the access, so they are
// short and never block on host I/O.
package devices

// Device handles guest accesses to a range of port or MMIO addresses.
// Offsets are relative to the range's base; data has the access width
// (1, 2, 4 or 8 bytes). Read fills data.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

// Interrupt is an interrupt line into the guest's interrupt controller.
type Interrupt interface {
	// SetLevel drives the line high or low.
	SetLevel(high bool) error
}
