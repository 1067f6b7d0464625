package devices

import (
	"io"
	"log/slog"
	"sync"
	"time"
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

// ConsoleBufferSize bounds the serial output a [Serial] holds for a writer
// that has not taken it yet; beyond it, output is dropped and counted.
const ConsoleBufferSize = 1 << 20

// Serial is a 16550A UART. Transmitted bytes go to an io.Writer through an
// [OutputBuffer] of [ConsoleBufferSize] bytes, so a guest's write to THR
// never waits for the writer; bytes given to [Serial.Receive] reach the
// guest through the receive FIFO. The transmitter looks empty to the guest
// at all times (LSR THRE and TEMT set, a THRE interrupt after each byte
// when enabled), as on a UART with an infinitely fast line.
type Serial struct {
	mu  sync.Mutex
	out *OutputBuffer
	irq Interrupt

	ier, lcr, mcr, scr, fcr byte
	dll, dlm                byte
	thrPending              bool // THRE interrupt pending
	rx                      []byte
	level                   bool // current IRQ line level
	irqFailed               bool // driving the line failed (reported once)
}

// NewSerial returns a UART writing to out and raising irq. Output reaches
// out from a goroutine of its own (see [OutputBuffer]); Close flushes it.
func NewSerial(out io.Writer, irq Interrupt) *Serial {
	return &Serial{out: NewOutputBuffer(out, ConsoleBufferSize), irq: irq, dll: 12, mcr: 0x08}
}

// Close ends the UART's output: it waits up to flush for the writer to
// take what is buffered, then abandons it, and returns the number of bytes
// of output lost, dropped while the buffer was full or left unwritten (see
// [OutputBuffer.Close]). Call it once the guest can no longer write.
func (s *Serial) Close(flush time.Duration) uint64 { return s.out.Close(flush) }

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
		} else {
			s.out.WriteByte(b) // never blocks
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
	if err := s.irq.SetLevel(level); err != nil && !s.irqFailed {
		s.irqFailed = true // once: a guest can toggle the line at will
		slog.Warn("serial interrupt", "err", err)
	}
}

// OutputBuffer passes output a guest produces (its serial console, log
// lines it triggers) to an io.Writer without ever making the producer wait
// for that writer: Write appends to a buffer of at most limit bytes and
// returns, and a goroutine of the buffer's own, started by the first
// Write, hands what has accumulated to the writer in one Write per burst.
// When the writer does not keep up and the buffer is full, further output
// is dropped and counted. Close gives the writer a bounded time to catch
// up and then abandons it; the writer is never closed.
type OutputBuffer struct {
	w     io.Writer
	limit int

	mu       sync.Mutex
	pending  []byte // accepted, not yet handed to w
	spare    []byte // the last batch's storage, reused
	inFlight int    // bytes handed to w in a Write that has not returned
	dropped  uint64 // bytes refused while the buffer was full
	started  bool   // the goroutine runs
	waiting  bool   // the goroutine waits for a wake-up
	closed   bool
	wake     chan struct{} // capacity 1
	stop     chan struct{} // closed by Close
	done     chan struct{} // closed when the goroutine ends
}

// outputCoalesce is how long the writer goroutine lets output accumulate
// after the first byte of a burst before writing it: a guest printing a
// byte per port write then costs one wake-up and one write(2) per 20 ms
// at most, not one per byte, for a delay no one notices on a console.
// 20 ms rather than 1: in the nested rig, the console workload (1000 lines)
// made the guest triple-fault or hang in 6 of 14 attempts with 1 ms, in 0
// of 8 with 20 ms, and ran faster (6485 against 5695 chars/s): the writer's
// frequent wake-ups on another CPU are what TCG's nested SVM mishandles.
const outputCoalesce = 20 * time.Millisecond

// NewOutputBuffer returns a buffer of limit bytes in front of w.
func NewOutputBuffer(w io.Writer, limit int) *OutputBuffer {
	return &OutputBuffer{w: w, limit: limit, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

// Write accepts as much of p as the buffer has room for and drops (and
// counts) the rest. It never blocks on the writer and never fails: output
// is best effort, and its loss is reported by Close.
func (b *OutputBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		b.dropped += uint64(len(p))
		return len(p), nil
	}
	room := max(b.limit-len(b.pending)-b.inFlight, 0)
	n := min(len(p), room)
	b.dropped += uint64(len(p) - n)
	if n > 0 {
		b.pending = append(b.pending, p[:n]...)
		b.kick()
	}
	return len(p), nil
}

// WriteByte is Write of one byte, without the slice.
func (b *OutputBuffer) WriteByte(c byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || len(b.pending)+b.inFlight >= b.limit {
		b.dropped++
		return nil
	}
	b.pending = append(b.pending, c)
	b.kick()
	return nil
}

// kick starts or wakes the goroutine if it is not already on its way.
// b.mu is held.
func (b *OutputBuffer) kick() {
	if !b.started {
		b.started = true
		go b.run()
		return
	}
	if b.waiting {
		b.waiting = false
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
}

// Dropped returns the number of bytes refused so far because the buffer
// was full (or closed).
func (b *OutputBuffer) Dropped() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dropped
}

// run is the writer goroutine: it sleeps until output arrives, lets a
// burst accumulate for outputCoalesce, and writes it in one call. A
// failed write is reported once (the output is lost, the guest goes on).
func (b *OutputBuffer) run() {
	defer close(b.done)
	timer := time.NewTimer(outputCoalesce)
	reported := false
	for {
		select {
		case <-timer.C:
		case <-b.stop: // flush at once
		}
		b.mu.Lock()
		if len(b.pending) == 0 {
			if b.closed {
				b.mu.Unlock()
				return
			}
			b.waiting = true
			b.mu.Unlock()
			select {
			case <-b.wake:
			case <-b.stop:
			}
			timer.Reset(outputCoalesce)
			continue
		}
		batch := b.pending
		b.pending, b.spare = b.spare[:0], nil
		b.inFlight = len(batch)
		b.mu.Unlock()
		_, err := b.w.Write(batch)
		if err != nil && !reported {
			reported = true
			slog.Warn("console output failed", "err", err)
		}
		b.mu.Lock()
		b.inFlight = 0
		b.spare = batch[:0]
		b.mu.Unlock()
		timer.Reset(outputCoalesce)
	}
}

// Close stops accepting output, waits until what is buffered has been
// written or flush has passed, whichever comes first, and returns the
// bytes lost in all: those dropped while the buffer was full and those
// still unwritten when the wait ended. A writer blocked past flush is
// abandoned (its goroutine stays in its Write), never closed. Close is
// safe to call more than once; later calls do not wait.
func (b *OutputBuffer) Close(flush time.Duration) uint64 {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.stop)
	}
	started := b.started
	b.mu.Unlock()
	if started {
		t := time.NewTimer(flush)
		select {
		case <-b.done:
		case <-t.C:
		}
		t.Stop()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dropped + uint64(len(b.pending)+b.inFlight)
}
