package devices

import (
	"bytes"
	"io"
	"sync"
	"testing"
	"time"
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
	if lost := s.Close(time.Second); lost != 0 {
		t.Fatalf("%d bytes lost", lost)
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

// blockingWriter is a console reader that never reads: its Write blocks
// until release is closed.
type blockingWriter struct {
	release chan struct{}
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	return len(p), nil
}

// countingWriter records what it is given and in how many calls.
type countingWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	calls int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls++
	return w.buf.Write(p)
}

func TestSerialOutputNeverWaitsForTheReader(t *testing.T) {
	w := &blockingWriter{release: make(chan struct{})}
	defer close(w.release) // lets the abandoned writer goroutine end
	s := NewSerial(w, &fakeIRQ{})
	const total = 10 << 20
	start := time.Now()
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		for i := range total {
			wr(s, uartTHR, byte(i))
		}
	}()
	select {
	case <-wrote:
		t.Logf("10 MiB of THR writes took %v", time.Since(start))
	case <-time.After(2 * time.Minute): // seconds, even under -race
		t.Fatal("the guest's THR writes blocked on a stalled reader")
	}
	if got, want := s.out.Dropped(), uint64(total-ConsoleBufferSize); got != want {
		t.Fatalf("dropped %d bytes, want %d (all beyond the %d-byte buffer)", got, want, ConsoleBufferSize)
	}
	if lsr := rd(s, uartLSR); lsr&(lsrTHRE|lsrTEMT) != lsrTHRE|lsrTEMT {
		t.Fatalf("LSR = %#x with output dropped; the transmitter must still look empty", lsr)
	}
	start = time.Now()
	lost := s.Close(100 * time.Millisecond)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close waited %v for a blocked writer, flush bound 100ms", d)
	}
	if lost != total {
		t.Fatalf("Close reports %d bytes lost, want %d (none reached the reader)", lost, total)
	}
}

func TestOutputBuffer(t *testing.T) {
	t.Run("a burst of single bytes reaches the writer in order in few writes", func(t *testing.T) {
		w := &countingWriter{}
		b := NewOutputBuffer(w, 1<<20)
		var want bytes.Buffer
		for i := range 100000 {
			c := byte('a' + i%26)
			b.WriteByte(c)
			want.WriteByte(c)
		}
		if lost := b.Close(5 * time.Second); lost != 0 {
			t.Fatalf("%d bytes lost with a writer that keeps up", lost)
		}
		if !bytes.Equal(w.buf.Bytes(), want.Bytes()) {
			t.Fatalf("writer got %d bytes, not the %d written in order", w.buf.Len(), want.Len())
		}
		if w.calls > 1000 {
			t.Fatalf("%d writes for 100000 bytes: output is not batched", w.calls)
		}
		t.Logf("100000 bytes in %d writes", w.calls)
	})
	t.Run("a full buffer drops the excess of a write and counts it", func(t *testing.T) {
		w := &blockingWriter{release: make(chan struct{})}
		defer close(w.release)
		b := NewOutputBuffer(w, 10)
		if n, err := b.Write([]byte("0123456789abcdef")); n != 16 || err != nil {
			t.Fatalf("Write = %d, %v; want 16, nil (output is best effort)", n, err)
		}
		if got := b.Dropped(); got != 6 {
			t.Fatalf("dropped %d, want 6", got)
		}
		if lost := b.Close(10 * time.Millisecond); lost != 16 {
			t.Fatalf("lost %d, want 16", lost)
		}
	})
	t.Run("writes after Close are dropped", func(t *testing.T) {
		w := &countingWriter{}
		b := NewOutputBuffer(w, 10)
		b.Write([]byte("ab"))
		if lost := b.Close(time.Second); lost != 0 {
			t.Fatalf("lost %d", lost)
		}
		b.Write([]byte("cd"))
		if lost := b.Close(time.Second); lost != 2 || w.buf.String() != "ab" {
			t.Fatalf("lost %d, writer got %q; want 2 and \"ab\"", lost, w.buf.String())
		}
	})
	t.Run("close without output starts nothing and loses nothing", func(t *testing.T) {
		if lost := NewOutputBuffer(io.Discard, 10).Close(time.Hour); lost != 0 {
			t.Fatalf("lost %d", lost)
		}
	})
}
