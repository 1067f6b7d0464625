package guest

import "golang.org/x/sys/unix"

// The boot-time marker (devices.BootMarkerPort and BootMarkerValue on the
// host side; the guest package does not import the host's): a byte
// written to an I/O port that capsule times against its own start, as
// the test initramfs's init does. The agent writes it first thing as PID
// 1, so capsule can tell the kernel's boot from the agent's set-up.
const (
	bootMarkerPort  = 0xf5
	bootMarkerValue = 123
)

// outb writes v to I/O port port (marker_amd64.s); the caller needs the
// port's permission (ioperm).
func outb(port uint16, v byte)

// markBoot writes the boot-time marker. Outside a capsule guest (no
// permission for the port, or not PID 1) it does nothing.
func markBoot() {
	if unix.Ioperm(bootMarkerPort, 1, 1) != nil {
		return
	}
	outb(bootMarkerPort, bootMarkerValue)
	unix.Ioperm(bootMarkerPort, 1, 0)
}
