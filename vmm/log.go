package vmm

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// Bounds on the output a guest can cause on the host. Console output and
// log lines go through devices.OutputBuffer: a writer that does not keep
// up loses output, never stalls a vCPU or a stop.
const (
	// logBufferSize bounds log lines held for a Config.Log that does not
	// keep up.
	logBufferSize = 64 << 10
	// consoleFlush and logFlush bound how long Run waits, once the vCPUs
	// have stopped, for Config.Console and then Config.Log to take what
	// is buffered; a writer still blocked then is abandoned.
	consoleFlush = 500 * time.Millisecond
	logFlush     = 250 * time.Millisecond
	// logLinesPerSecond is the most lines one device's guest-triggered
	// errors print in a second; the rest are counted and reported as one
	// "N more messages suppressed" line.
	logLinesPerSecond = 10
)

// deviceLog prints one device's guest-triggered log lines, rate-limited:
// at most logLinesPerSecond lines in each one-second window, then a count
// of what was suppressed when the next window opens (or the run ends).
// Printing only appends to the VM's log buffer: it is safe on a vCPU
// thread and under a device's locks.
type deviceLog struct {
	out    io.Writer
	prefix string // "capsule: disk /img at 0xd0000000: "

	mu         sync.Mutex
	window     time.Time // start of the current window
	lines      int       // printed in the current window
	suppressed int
}

func (l *deviceLog) printf(format string, args ...any) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.window) >= time.Second {
		l.flushLocked()
		l.window, l.lines = now, 0
	}
	if l.lines >= logLinesPerSecond {
		l.suppressed++
		return
	}
	l.lines++
	fmt.Fprintf(l.out, "%s"+format+"\n", append([]any{l.prefix}, args...)...) // a path in the prefix may hold a %
}

// flush reports lines suppressed in the current window.
func (l *deviceLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
}

func (l *deviceLog) flushLocked() {
	if l.suppressed > 0 {
		fmt.Fprintf(l.out, "%s%d more messages suppressed\n", l.prefix, l.suppressed)
		l.suppressed = 0
	}
}

// finishOutput ends the console and the log once the vCPUs have stopped:
// the console gets consoleFlush to catch up, the count of console bytes
// lost is reported, suppressed log lines are counted, and the log gets
// logFlush. Neither writer is closed; one still blocked is abandoned.
func (v *VM) finishOutput() {
	if v.serial != nil {
		if lost := v.serial.Close(consoleFlush); lost > 0 {
			fmt.Fprintf(v.log, "capsule: %d bytes of console output dropped: the reader did not keep up\n", lost)
		}
	}
	for _, l := range v.deviceLogs {
		l.flush()
	}
	v.log.Close(logFlush)
}
