package devices

import (
	"bytes"
	"testing"
)

type fakeIRQ struct{ levels []bool }

func (f *fakeIRQ) SetLevel(high bool) error { f.levels = append(f.levels, high); return nil }

func (f *fakeIRQ) high() bool { return len(f.levels) > 0 && f.levels[len(f.levels)-1] }

func rd(s *Serial, off uint64) byte {
	b := []byte{0}
	s.Read(off, b)
	return b[0]
}

func wr(s *Serial, off uint64, v byte) { s.Write(off, []byte{v}) }

func TestSerialTransmitsToItsWriter(t *testing.T) {
	var out bytes.Buffer
	s := NewSerial(&out, &fakeIRQ{})
	for _, b := range []byte("hi\n") {
		wr(s, uartTHR, b)
	}
	if out.String() != "hi\n" {
		t.Fatalf("output %q", out.String())
	}
	if lsr := rd(s, uartLSR); lsr&(lsrTHRE|lsrTEMT) != lsrTHRE|lsrTEMT {
		t.Fatalf("LSR = %#x, transmitter should always be empty", lsr)
	}
}

func TestSerialPassesLinuxProbes(t *testing.T) {
	s := NewSerial(&bytes.Buffer{}, &fakeIRQ{})
	t.Run("scratch register", func(t *testing.T) {
		wr(s, uartSCR, 0xa5)
		if rd(s, uartSCR) != 0xa5 {
			t.Fatal("scratch register lost its value")
		}
	})
	t.Run("IER keeps the low nibble", func(t *testing.T) {
		wr(s, uartIER, 0xff)
		if got := rd(s, uartIER); got != 0x0f {
			t.Fatalf("IER = %#x, want 0x0f", got)
		}
		wr(s, uartIER, 0)
	})
	t.Run("loopback maps modem control to status", func(t *testing.T) {
		wr(s, uartMCR, mcrLoop|0x0a)
		if got := rd(s, uartMSR) & 0xf0; got != 0x90 {
			t.Fatalf("MSR in loopback = %#x, want 0x90", got)
		}
		wr(s, uartMCR, 0x08)
	})
	t.Run("FIFO enable shows in IIR", func(t *testing.T) {
		wr(s, uartFCR, 0x07)
		if got := rd(s, uartIIR); got&iirFIFOs != iirFIFOs {
			t.Fatalf("IIR = %#x, want FIFO bits set (16550A)", got)
		}
	})
	t.Run("divisor latch", func(t *testing.T) {
		wr(s, uartLCR, lcrDLAB)
		wr(s, uartRBR, 1)
		wr(s, uartIER, 0)
		if rd(s, uartRBR) != 1 {
			t.Fatal("DLL not stored")
		}
		wr(s, uartLCR, 0x03)
	})
}

func TestSerialInterrupts(t *testing.T) {
	irq := &fakeIRQ{}
	s := NewSerial(&bytes.Buffer{}, irq)
	wr(s, uartMCR, 0x08) // OUT2 gates the line
	t.Run("THRE interrupt when enabled, cleared by reading IIR", func(t *testing.T) {
		wr(s, uartIER, ierTHRE)
		if !irq.high() {
			t.Fatal("enabling THRE did not raise the line")
		}
		if iir := rd(s, uartIIR) & 0x0f; iir != iirTHRE {
			t.Fatalf("IIR = %#x, want THRE", iir)
		}
		if irq.high() {
			t.Fatal("line still high after IIR read")
		}
		wr(s, uartTHR, 'x')
		if !irq.high() {
			t.Fatal("transmit did not raise THRE again")
		}
		wr(s, uartIER, 0)
		if irq.high() {
			t.Fatal("line high with interrupts disabled")
		}
	})
	t.Run("received data raises RDA until read", func(t *testing.T) {
		wr(s, uartIER, ierRDA)
		s.Receive([]byte("ab"))
		if !irq.high() || rd(s, uartIIR)&0x0f != iirRDA {
			t.Fatal("input did not raise RDA")
		}
		if rd(s, uartLSR)&lsrDR == 0 {
			t.Fatal("LSR data-ready clear with input queued")
		}
		if a, b := rd(s, uartRBR), rd(s, uartRBR); a != 'a' || b != 'b' {
			t.Fatalf("read %q%q, want ab", a, b)
		}
		if irq.high() || rd(s, uartLSR)&lsrDR != 0 {
			t.Fatal("RDA still pending after the FIFO drained")
		}
	})
	t.Run("input beyond the FIFO is dropped, not grown", func(t *testing.T) {
		s.Receive(make([]byte, 3*rxLimit))
		if len(s.rx) != rxLimit {
			t.Fatalf("rx holds %d bytes, limit %d", len(s.rx), rxLimit)
		}
	})
}
