package devices

import (
	"io"
	"log/slog"
	"sync"
)

// COM1's I/O base and interrupt line on a PC.
const (
	COM1Port = 0x3f8
	COM1IRQ  = 4
)

// UART register offsets and bits (16550A).
const (
	uartRBR = 0 // receive buffer (read, DLAB=0)
	uartTHR = 0 // transmit holding (write, DLAB=0)
	uartIER = 1
	uartIIR = 2 // interrupt identification (read)
	uartFCR = 2 // FIFO control (write)
	uartLCR = 3
	uartMCR = 4
	uartLSR = 5
	uartMSR = 6
	uartSCR = 7

	ierRDA  = 0x01 // received data available
	ierTHRE = 0x02 // transmitter holding register empty
	ierMask = 0x0f

	iirNone  = 0x01
	iirTHRE  = 0x02
	iirRDA   = 0x04
	iirFIFOs = 0xc0

	lcrDLAB = 0x80

	mcrLoop = 0x10

	lsrDR   = 0x01
	lsrTHRE = 0x20
	lsrTEMT = 0x40

	msrCTS = 0x10
	msrDSR = 0x20
	msrRI  = 0x40
	msrDCD = 0x80

	rxLimit = 4096
)

// Serial is a 16550A UART. Transmitted bytes go to an io.Writer; bytes
// given to [Serial.Receive] reach the guest through the receive FIFO.
type Serial struct {
	mu  sync.Mutex
	out io.Writer
	irq Interrupt

	ier, lcr, mcr, scr, fcr byte
	dll, dlm                byte
	thrPending              bool // THRE interrupt pending
	rx                      []byte
	level                   bool // current IRQ line level
	outErr                  bool
}

// NewSerial returns a UART writing to out and raising irq.
func NewSerial(out io.Writer, irq Interrupt) *Serial {
	return &Serial{out: out, irq: irq, dll: 12, mcr: 0x08}
}

// Receive queues input for the guest. Bytes beyond the FIFO's room are
// dropped, as on a real UART with no flow control.
func (s *Serial) Receive(p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	room := rxLimit - len(s.rx)
	s.rx = append(s.rx, p[:min(len(p), max(room, 0))]...)
	s.updateIRQ()
}

func (s *Serial) Read(offset uint64, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(data)
	if len(data) == 0 {
		return
	}
	data[0] = s.read(offset)
	s.updateIRQ()
}

func (s *Serial) Write(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.write(offset, data[0])
	s.updateIRQ()
}

func (s *Serial) read(offset uint64) byte {
	dlab := s.lcr&lcrDLAB != 0
	switch offset {
	case uartRBR:
		if dlab {
			return s.dll
		}
		if len(s.rx) == 0 {
			return 0
		}
		b := s.rx[0]
		s.rx = s.rx[1:]
		return b
	case uartIER:
		if dlab {
			return s.dlm
		}
		return s.ier
	case uartIIR:
		iir := s.iir()
		if iir&0x0f == iirTHRE {
			s.thrPending = false // reading IIR acknowledges THRE
		}
		if s.fcr&1 != 0 {
			iir |= iirFIFOs
		}
		return iir
	case uartLCR:
		return s.lcr
	case uartMCR:
		return s.mcr
	case uartLSR:
		lsr := byte(lsrTHRE | lsrTEMT)
		if len(s.rx) > 0 {
			lsr |= lsrDR
		}
		return lsr
	case uartMSR:
		if s.mcr&mcrLoop != 0 {
			// Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
			m := s.mcr
			var msr byte
			if m&0x01 != 0 {
				msr |= msrDSR
			}
			if m&0x02 != 0 {
				msr |= msrCTS
			}
			if m&0x04 != 0 {
				msr |= msrRI
			}
			if m&0x08 != 0 {
				msr |= msrDCD
			}
			return msr
		}
		return msrDCD | msrDSR | msrCTS
	case uartSCR:
		return s.scr
	}
	return 0
}

func (s *Serial) write(offset uint64, b byte) {
	dlab := s.lcr&lcrDLAB != 0
	switch offset {
	case uartTHR:
		if dlab {
			s.dll = b
			return
		}
		if s.mcr&mcrLoop != 0 {
			if len(s.rx) < rxLimit {
				s.rx = append(s.rx, b)
			}
		} else if _, err := s.out.Write([]byte{b}); err != nil && !s.outErr {
			s.outErr = true // report once; the guest keeps running
			slog.Warn("serial console output failed", "err", err)
		}
		s.thrPending = true
	case uartIER:
		if dlab {
			s.dlm = b
			return
		}
		if b&ierTHRE != 0 && s.ier&ierTHRE == 0 {
			s.thrPending = true // THR is always empty
		}
		s.ier = b & ierMask
	case uartFCR:
		s.fcr = b
		if b&0x02 != 0 {
			s.rx = s.rx[:0]
		}
	case uartLCR:
		s.lcr = b
	case uartMCR:
		s.mcr = b & 0x1f
	case uartSCR:
		s.scr = b
	}
}

func (s *Serial) iir() byte {
	switch {
	case s.ier&ierRDA != 0 && len(s.rx) > 0:
		return iirRDA
	case s.ier&ierTHRE != 0 && s.thrPending:
		return iirTHRE
	}
	return iirNone
}

// updateIRQ drives the line from the pending interrupts; OUT2 gates it, as
// on a PC.
func (s *Serial) updateIRQ() {
	level := s.iir() != iirNone && s.mcr&0x08 != 0
	if level == s.level || s.irq == nil {
		return
	}
	s.level = level
	if err := s.irq.SetLevel(level); err != nil {
		slog.Warn("serial interrupt", "err", err)
	}
}
