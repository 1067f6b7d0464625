package machine

import (
	"encoding/binary"
	"fmt"
)

// Interrupt-controller addresses and the MP table capsule writes so that a
// guest without ACPI (Linux with acpi=off or without CONFIG_ACPI) finds
// every vCPU and the I/O APIC.
const (
	LAPICAddr  = 0xfee00000
	IOAPICAddr = 0xfec00000
	// IOAPICPins is the number of inputs of KVM's in-kernel I/O APIC.
	IOAPICPins = 24
	// MPTableAddr is where the MP floating pointer and the configuration
	// table go: the second half of the BIOS area [BIOSStart, 1 MiB), one
	// of the places the MP specification says to scan and reserved in the
	// memory map. (The last KiB of base memory, the EBDA, would hold the
	// table for 37 vCPUs only.)
	MPTableAddr = BIOSStart + 0x8000
	mpTableMax  = KernelMin - MPTableAddr // room up to 1 MiB

	apicVersion   = 0x14
	ioapicVersion = 0x11
)

// MP configuration entry types and flags (Intel MP specification 1.4).
const (
	mpProcessor = 0
	mpBus       = 1
	mpIOAPIC    = 2
	mpIOIntr    = 3
	mpLocalIntr = 4

	mpCPUEnabled = 1
	mpCPUBoot    = 2

	mpIntINT    = 0
	mpIntNMI    = 1
	mpIntExtINT = 3
)

func checksum(b []byte) byte {
	var s byte
	for _, x := range b {
		s += x
	}
	return -s
}

// MPTable returns the MP floating pointer and configuration table for cpus
// vCPUs (APIC ids 0..cpus-1), one ISA bus, and the in-kernel I/O APIC (id
// cpus) whose pin n is ISA IRQ n, as KVM's default routing wires them;
// LINT0 is ExtINT (the PIC) and LINT1 NMI on every CPU. base is the
// guest-physical address the bytes will be written at.
func MPTable(cpus int, base uint64) ([]byte, error) {
	if cpus < 1 || cpus > 254 {
		return nil, fmt.Errorf("MP table: %d vCPUs, want 1 to 254", cpus)
	}
	le := binary.LittleEndian
	const fpSize, hdrSize = 16, 44
	var entries []byte
	for id := range cpus {
		e := make([]byte, 20)
		e[0], e[1], e[2] = mpProcessor, byte(id), apicVersion
		e[3] = mpCPUEnabled
		if id == 0 {
			e[3] |= mpCPUBoot
		}
		le.PutUint32(e[4:], 0x600) // family 6 signature
		le.PutUint32(e[8:], 0x201) // FPU, APIC
		entries = append(entries, e...)
	}
	entries = append(entries, mpBus, 0, 'I', 'S', 'A', ' ', ' ', ' ')
	ioapicID := byte(cpus)
	ioapic := make([]byte, 8)
	ioapic[0], ioapic[1], ioapic[2], ioapic[3] = mpIOAPIC, ioapicID, ioapicVersion, 1
	le.PutUint32(ioapic[4:], IOAPICAddr)
	entries = append(entries, ioapic...)
	for irq := range byte(IOAPICPins) {
		// type, interrupt type, flags (conform to bus), bus 0, bus irq,
		// destination I/O APIC, pin.
		entries = append(entries, mpIOIntr, mpIntINT, 0, 0, 0, irq, ioapicID, irq)
	}
	entries = append(entries,
		mpLocalIntr, mpIntExtINT, 0, 0, 0, 0, 0xff, 0,
		mpLocalIntr, mpIntNMI, 0, 0, 0, 0, 0xff, 1)
	count := cpus + 1 + 1 + IOAPICPins + 2

	table := make([]byte, fpSize+hdrSize+len(entries))
	if uint64(len(table)) > mpTableMax {
		return nil, fmt.Errorf("MP table for %d vCPUs is %d bytes, over the %d available", cpus, len(table), mpTableMax)
	}
	fp, hdr := table[:fpSize], table[fpSize:fpSize+hdrSize]
	copy(fp, "_MP_")
	le.PutUint32(fp[4:], uint32(base)+fpSize)
	fp[8], fp[9] = 1, 4 // length in 16-byte units, spec revision 1.4
	fp[10] = checksum(fp)

	copy(hdr, "PCMP")
	le.PutUint16(hdr[4:], uint16(hdrSize+len(entries)))
	hdr[6] = 4
	copy(hdr[8:], "CAPSULE ")
	copy(hdr[16:], "MICROVM     ")
	le.PutUint16(hdr[34:], uint16(count))
	le.PutUint32(hdr[36:], LAPICAddr)
	copy(table[fpSize+hdrSize:], entries)
	hdr[7] = checksum(table[fpSize:])
	return table, nil
}

// WriteMPTable writes MPTable(cpus) at MPTableAddr.
func WriteMPTable(mem *GuestMemory, cpus int) error {
	t, err := MPTable(cpus, MPTableAddr)
	if err != nil {
		return err
	}
	if err := mem.WriteAt(t, MPTableAddr); err != nil {
		return fmt.Errorf("write MP table: %w", err)
	}
	return nil
}
