package devices

import (
	"encoding/binary"
	"sync"
)

// PCI configuration mechanism #1: a 32-bit address register at
// PCIConfigAddress (enable bit 31, bus 23:16, device 15:11, function
// 10:8, register 7:2) and a 4-byte data window at PCIConfigData.
const (
	PCIConfigAddress = 0xcf8
	PCIConfigData    = 0xcfc
	PCIConfigPorts   = 8 // 0xcf8-0xcff

	pciEnable = 1 << 31

	// The host bridge's identity: Red Hat's vendor ID with the device ID
	// of QEMU's generic PCIe host bridge, class "host bridge" (06/00).
	// Kernels only look at the class to accept a type 1 bus.
	hostBridgeVendor = 0x1b36
	hostBridgeDevice = 0x0008
	hostBridgeClass  = 0x060000
)

// PCIHostBridge answers configuration mechanism #1 with a bus 0 that
// holds one device, a host bridge at 00:00.0, and nothing else: every
// other function reads as all ones (absent), and writes are ignored. It
// lets a kernel built with PCI find a working, empty bus instead of
// reporting that it found no configuration access at all.
type PCIHostBridge struct {
	mu   sync.Mutex
	addr uint32
}

func (p *PCIHostBridge) Read(offset uint64, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if offset < PCIConfigData-PCIConfigAddress {
		// The address register, read back as written (kernels check that
		// a written enable bit sticks).
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], p.addr)
		for i := range data {
			if o := offset + uint64(i); o < 4 {
				data[i] = b[o]
			} else {
				data[i] = 0xff
			}
		}
		return
	}
	reg := p.config()
	for i := range data {
		o := offset - (PCIConfigData - PCIConfigAddress) + uint64(i)
		if o < 4 {
			data[i] = reg[o]
		} else {
			data[i] = 0xff
		}
	}
}

func (p *PCIHostBridge) Write(offset uint64, data []byte) {
	// Only a full 32-bit write at 0xcf8 sets the address: byte writes to
	// 0xcf8-0xcfb are how kernels probe for mechanism #2 and must not
	// change it (mechanism #1 hardware behaves the same way).
	if offset != 0 || len(data) != 4 {
		return
	}
	p.mu.Lock()
	p.addr = binary.LittleEndian.Uint32(data)
	p.mu.Unlock()
}

// config returns the 32-bit configuration register the address register
// selects, little-endian; all ones when nothing is there.
func (p *PCIHostBridge) config() [4]byte {
	v := uint32(0xffffffff)
	bus, dev, fn, reg := p.addr>>16&0xff, p.addr>>11&0x1f, p.addr>>8&7, p.addr&0xfc
	// Bits 30:24 (AMD's extended register number) select registers past
	// 255, which a conventional bridge does not have.
	if p.addr&pciEnable != 0 && p.addr&0x7f000000 == 0 && bus == 0 && dev == 0 && fn == 0 {
		v = hostBridgeRegister(reg)
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	return b
}

// hostBridgeRegister is the host bridge's type 0 header: identity,
// status (no capabilities), class, header type 0 single-function, and
// zero for everything else (no BARs, no interrupt).
func hostBridgeRegister(reg uint32) uint32 {
	switch reg {
	case 0x00:
		return hostBridgeDevice<<16 | hostBridgeVendor
	case 0x08:
		return hostBridgeClass << 8 // revision 0
	}
	return 0
}
