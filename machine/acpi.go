package machine

import (
	"encoding/binary"
	"fmt"
)

// ACPI tables for kernels that describe CPUs and interrupt controllers only
// through ACPI (Debian's cloud kernel is built without MP-table support).
//
// capsule describes a legacy PC rather than a hardware-reduced platform: a
// hardware-reduced kernel drops the 8259 PIC and with it the ISA interrupt
// numbers, so the serial port (IRQ 4) and the RTC (IRQ 8) could not request
// their interrupts unless every device were also described in AML. The
// tables are an RSDP, an XSDT, a FADT with the PM1a event and control
// blocks at PMBase (SCI on IRQ 9, never raised) and the i8042 reset as its
// reset register, a FACS, a DSDT holding the \_S5 sleep package (so that
// an ACPI power-off writes SLP_EN to PM1a control) and QEMU's pvpanic
// device, and a MADT listing every vCPU's local APIC and the I/O APIC.
// They sit in the first half of the BIOS area [BIOSStart, 1 MiB), which
// the memory map reserves and where a kernel scans for the RSDP; the MP
// table has the second half.
const (
	ACPIAddr = BIOSStart // RSDP; the other tables follow it
	acpiMax  = 0x8000    // up to MPTableAddr

	// PMBase is the PM1a event block (4 bytes); PM1a control follows
	// (2 bytes), at 0x604 as on QEMU's machines.
	PMBase         = 0x600
	SCIIRQ         = 9
	acpiOEMID      = "CAPSUL"
	acpiOEMTableID = "MICROVM "
	acpiCreatorID  = "CPSL"
	sdtHeaderSize  = 36
)

// FADT fields (ACPI 6.x, table revision 6, 276 bytes).
const (
	fadtSize           = 276
	fadtDSDT           = 40
	fadtSCIInt         = 46
	fadtPM1aEvtBlk     = 56
	fadtPM1aCntBlk     = 64
	fadtPM1EvtLen      = 88
	fadtPM1CntLen      = 89
	fadtXFirmwareCtrl  = 132
	fadtXPM1aEvtBlk    = 148
	fadtXPM1aCntBlk    = 172
	fadtFlagWBINVD     = 1 << 0
	fadtFlagPowerBtn   = 1 << 4 // no fixed-feature power button
	fadtFlagSleepBtn   = 1 << 5 // no fixed-feature sleep button
	fadtIAPCBootArch   = 109
	fadtFlags          = 112
	fadtResetReg       = 116
	fadtResetValue     = 128
	fadtMinorVersion   = 131
	fadtXDSDT          = 140
	fadtHypervisorID   = 268
	fadtFlagResetReg   = 1 << 10
	bootArchVGAAbsent  = 1 << 2 // no VGA; the 8042 bit (1) stays clear: no PS/2 ports to probe
	gasSystemIO        = 1
	gasAccessByte      = 1
	madtFlagPCATCompat = 1
)

// sdt builds an ACPI table: the standard header followed by body, with its
// checksum set.
func sdt(sig string, rev byte, body []byte) []byte {
	t := make([]byte, sdtHeaderSize+len(body))
	copy(t, sig)
	binary.LittleEndian.PutUint32(t[4:], uint32(len(t)))
	t[8] = rev
	copy(t[10:], acpiOEMID)
	copy(t[16:], acpiOEMTableID)
	binary.LittleEndian.PutUint32(t[24:], 1)
	copy(t[28:], acpiCreatorID)
	binary.LittleEndian.PutUint32(t[32:], 1)
	copy(t[sdtHeaderSize:], body)
	t[9] = checksum(t)
	return t
}

const facsSize = 64

func facs() []byte {
	b := make([]byte, facsSize)
	copy(b, "FACS")
	binary.LittleEndian.PutUint32(b[4:], facsSize)
	b[32] = 2 // version
	return b
}

// gas encodes an ACPI generic address of a system I/O port block.
func gas(b []byte, bits byte, port uint64) {
	access := byte(1)
	if bits >= 16 {
		access = 2
	}
	b[0], b[1], b[2], b[3] = gasSystemIO, bits, 0, access
	binary.LittleEndian.PutUint64(b[4:], port)
}

func madt(cpus int) []byte {
	le := binary.LittleEndian
	b := le.AppendUint32(nil, LAPICAddr)
	b = le.AppendUint32(b, madtFlagPCATCompat)
	for id := range cpus {
		// Processor local APIC: type 0, length 8, UID, APIC id, enabled.
		b = append(b, 0, 8, byte(id), byte(id))
		b = le.AppendUint32(b, 1)
	}
	// I/O APIC: type 1, length 12, id, reserved, address, GSI base 0.
	b = append(b, 1, 12, byte(cpus), 0)
	b = le.AppendUint32(b, IOAPICAddr)
	b = le.AppendUint32(b, 0)
	// The SCI: ISA IRQ 9 is GSI 9, level-triggered, active high (type 2,
	// length 10, bus 0, source, GSI, flags).
	b = append(b, 2, 10, 0, SCIIRQ)
	b = le.AppendUint32(b, SCIIRQ)
	b = le.AppendUint16(b, 0x0d)
	// Local APIC NMI on LINT1 of every processor: type 4, length 6.
	b = append(b, 4, 6, 0xff, 0, 0, 1)
	return sdt("APIC", 5, b)
}

func fadt(dsdt, facsAddr uint64) []byte {
	le := binary.LittleEndian
	b := make([]byte, fadtSize-sdtHeaderSize)
	at := func(off int) []byte { return b[off-sdtHeaderSize:] }
	le.PutUint64(at(fadtXFirmwareCtrl), facsAddr) // FIRMWARE_CTRL stays 0: only one may be set
	le.PutUint32(at(fadtDSDT), uint32(dsdt))
	le.PutUint16(at(fadtSCIInt), SCIIRQ)
	le.PutUint32(at(fadtPM1aEvtBlk), PMBase)
	le.PutUint32(at(fadtPM1aCntBlk), PMBase+4)
	at(fadtPM1EvtLen)[0], at(fadtPM1CntLen)[0] = 4, 2
	gas(at(fadtXPM1aEvtBlk), 32, PMBase)
	gas(at(fadtXPM1aCntBlk), 16, PMBase+4)
	le.PutUint16(at(fadtIAPCBootArch), bootArchVGAAbsent)
	le.PutUint32(at(fadtFlags), fadtFlagWBINVD|fadtFlagPowerBtn|fadtFlagSleepBtn|fadtFlagResetReg)
	// RESET_REG: generic address of the i8042 command port.
	copy(at(fadtResetReg), []byte{gasSystemIO, 8, 0, gasAccessByte})
	le.PutUint64(at(fadtResetReg+4), 0x64)
	at(fadtResetValue)[0] = 0xfe
	at(fadtMinorVersion)[0] = 0
	le.PutUint64(at(fadtXDSDT), dsdt)
	copy(at(fadtHypervisorID), "CAPSULE ")
	return sdt("FACP", 6, b)
}

// ACPITables returns the tables for cpus vCPUs, laid out to be written at
// base.
func ACPITables(cpus int, base uint64) ([]byte, error) {
	if cpus < 1 || cpus > 254 {
		return nil, fmt.Errorf("ACPI tables: %d vCPUs, want 1 to 254", cpus)
	}
	le := binary.LittleEndian
	const rsdpSize = 36
	align := func(n int) int { return (n + 15) &^ 15 }

	dsdt := sdt("DSDT", 2, dsdtAML)
	madtT := madt(cpus)
	facsOff := 64 // the FACS must be 64-byte aligned
	xsdtOff := align(facsOff + facsSize)
	xsdtSize := sdtHeaderSize + 2*8
	fadtOff := align(xsdtOff + xsdtSize)
	madtOff := align(fadtOff + fadtSize)
	dsdtOff := align(madtOff + len(madtT))
	total := dsdtOff + len(dsdt)
	if total > acpiMax {
		return nil, fmt.Errorf("ACPI tables for %d vCPUs are %d bytes, over %d", cpus, total, acpiMax)
	}
	out := make([]byte, total)
	copy(out[facsOff:], facs())
	copy(out[fadtOff:], fadt(base+uint64(dsdtOff), base+uint64(facsOff)))
	copy(out[madtOff:], madtT)
	copy(out[dsdtOff:], dsdt)
	xsdt := sdt("XSDT", 1, le.AppendUint64(le.AppendUint64(nil, base+uint64(fadtOff)), base+uint64(madtOff)))
	copy(out[xsdtOff:], xsdt)

	r := out[:rsdpSize]
	copy(r, "RSD PTR ")
	copy(r[9:], acpiOEMID)
	r[15] = 2 // ACPI 2.0+ RSDP
	le.PutUint32(r[20:], rsdpSize)
	le.PutUint64(r[24:], base+uint64(xsdtOff))
	r[8] = checksum(r[:20])
	r[32] = checksum(r)
	return out, nil
}

// WriteACPITables writes ACPITables(cpus) at ACPIAddr.
func WriteACPITables(mem *GuestMemory, cpus int) error {
	t, err := ACPITables(cpus, ACPIAddr)
	if err != nil {
		return err
	}
	if err := mem.WriteAt(t, ACPIAddr); err != nil {
		return fmt.Errorf("write ACPI tables: %w", err)
	}
	return nil
}
