package vmm

import (
	"fmt"
	"sync"

	"github.com/capsule-vm/capsule/devices"
	"github.com/capsule-vm/capsule/kvm"
)

// irqLine is an in-kernel irqchip input as a devices.Interrupt.
type irqLine struct {
	vm  *kvm.VM
	irq uint32
}

func (l irqLine) SetLevel(high bool) error { return l.vm.SetIRQLine(l.irq, high) }

// addLegacyDevices puts the PC's port-I/O devices on the bus: the serial
// console, the i8042 reset line, capsule's exit and boot-marker ports, the
// RTC, the ACPI PM1a registers, QEMU's debug-exit and pvpanic ports, and
// PCI configuration mechanism #1 with an empty bus.
func (v *VM) addLegacyDevices() error {
	var crashLoaded sync.Once // a guest may write the event any number of times
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
		{devices.DebugExitPort, 4, &devices.DebugExit{OnExit: func(s int) { v.stop(Result{Reason: ReasonDebugExit, Status: s}) }}},
		{devices.PVPanicPort, 1, &devices.PVPanic{
			OnPanic: func() {
				v.stop(Result{Reason: ReasonPanic, Status: StatusPanic, Detail: "the guest reported a panic (pvpanic)"})
			},
			OnCrashLoaded: func() {
				crashLoaded.Do(func() { fmt.Fprintln(v.log, "capsule: the guest loaded a crash kernel (pvpanic)") })
			},
		}},
		{devices.PCIConfigAddress, devices.PCIConfigPorts, &devices.PCIHostBridge{}},
	} {
		if err := v.pio.insert(d.base, d.size, d.dev); err != nil {
			return err
		}
	}
	return nil
}
