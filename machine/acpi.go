package machine

import (
	"encoding/binary"
	"fmt"
)

// ACPI tables for kernels that describe CPUs and interrupt controllers only
// through ACPI (Debian's cloud kernel is built without MP-table support).
// capsule offers a hardware-reduced ACPI platform, as Firecracker does: an
// RSDP, an XSDT, a FADT with the HW_REDUCED_ACPI flag and a reset register
// (the i8042 reset, 0xfe on port 0x64), an empty DSDT, and a MADT listing
// every vCPU's local APIC and the I/O APIC. The tables sit in the reserved
// BIOS area, where a kernel scans for the RSDP.
const (
	ACPIAddr = 0xe0000 // RSDP; the other tables follow it
	acpiMax  = 0x10000

	acpiOEMID      = "CAPSUL"
	acpiOEMTableID = "MICROVM "
	acpiCreatorID  = "CPSL"
	sdtHeaderSize  = 36
)

// FADT fields (ACPI 6.x, table revision 6, 276 bytes).
const (
	fadtSize           = 276
	fadtDSDT           = 40
	fadtIAPCBootArch   = 109
	fadtFlags          = 112
	fadtResetReg       = 116
	fadtResetValue     = 128
	fadtMinorVersion   = 131
	fadtXDSDT          = 140
	fadtHypervisorID   = 268
	fadtFlagResetReg   = 1 << 10
	fadtFlagHWReduced  = 1 << 20
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
	// Local APIC NMI on LINT1 of every processor: type 4, length 6.
	b = append(b, 4, 6, 0xff, 0, 0, 1)
	return sdt("APIC", 5, b)
}

func fadt(dsdt uint64) []byte {
	le := binary.LittleEndian
	b := make([]byte, fadtSize-sdtHeaderSize)
	at := func(off int) []byte { return b[off-sdtHeaderSize:] }
	le.PutUint32(at(fadtDSDT), uint32(dsdt))
	le.PutUint16(at(fadtIAPCBootArch), bootArchVGAAbsent)
	le.PutUint32(at(fadtFlags), fadtFlagHWReduced|fadtFlagResetReg)
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

	dsdt := sdt("DSDT", 2, nil)
	madtT := madt(cpus)
	xsdtOff := align(rsdpSize)
	xsdtSize := sdtHeaderSize + 2*8
	fadtOff := align(xsdtOff + xsdtSize)
	madtOff := align(fadtOff + fadtSize)
	dsdtOff := align(madtOff + len(madtT))
	total := dsdtOff + len(dsdt)
	if total > acpiMax {
		return nil, fmt.Errorf("ACPI tables for %d vCPUs are %d bytes, over %d", cpus, total, acpiMax)
	}
	out := make([]byte, total)
	copy(out[fadtOff:], fadt(base+uint64(dsdtOff)))
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
