package rig

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// tailLines is how many console lines are kept for failure reports.
const tailLines = 40

// phase is how far the guest has got, as told by its tagged lines.
type phase int

const (
	phaseBoot  phase = iota // kernel booting, before /init's "up"
	phaseSetup              // /init mounting and loading modules
	phaseTest               // the test binary runs
	phaseDone               // the exit status was printed
)

// console follows the guest's serial output line by line. It passes the
// test's output on, swallows the rig's own tagged lines and, unless
// verbose, everything printed outside the test, and records the timings
// and the exit status.
type console struct {
	tag     string
	out     io.Writer
	verbose bool

	phase    phase
	upAt     time.Time // "up": /init started
	runAt    time.Time // "run": the test started
	doneAt   time.Time // "exit=N"
	exitCode int
	setupErr string
	tail     []string
	results  *results // of go test's top-level tests, across attempts; nil: not kept
}

func newConsole(tag string, out io.Writer, verbose bool) *console {
	return &console{tag: tag, out: out, verbose: verbose, exitCode: -1}
}

// line handles one line of console output, without its "\n".
func (c *console) line(s string, now time.Time) {
	s = strings.TrimRight(s, "\r")
	c.keep(s)
	marker := c.tag + ": "
	i := strings.Index(s, marker)
	if i < 0 {
		c.print(s)
		return
	}
	if i > 0 {
		// Output without a final newline, followed by the marker.
		c.print(s[:i])
	}
	c.event(s[i+len(marker):], now)
}

// event handles the text of a tagged line.
func (c *console) event(msg string, now time.Time) {
	switch {
	case msg == "up":
		c.phase, c.upAt = phaseSetup, now
	case msg == "run":
		c.phase, c.runAt = phaseTest, now
	case strings.HasPrefix(msg, "exit="):
		if n, err := strconv.Atoi(strings.TrimPrefix(msg, "exit=")); err == nil {
			c.exitCode = n
		}
		c.phase, c.doneAt = phaseDone, now
	case strings.HasPrefix(msg, "error: "):
		c.setupErr = strings.TrimPrefix(msg, "error: ")
		c.phase, c.doneAt = phaseDone, now
	}
}

func (c *console) print(s string) {
	if c.phase == phaseTest || c.verbose {
		fmt.Fprintln(c.out, s)
	}
	if c.phase == phaseTest {
		c.results.add(s)
	}
}

func (c *console) keep(s string) {
	if len(c.tail) == tailLines {
		copy(c.tail, c.tail[1:])
		c.tail = c.tail[:tailLines-1]
	}
	c.tail = append(c.tail, s)
}

// exited reports whether the test's exit status arrived.
func (c *console) exited() bool { return c.exitCode >= 0 }
