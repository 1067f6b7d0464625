package rig

import (
	"fmt"
	"io"
)

// logger writes the rig's own "kvmrig: " messages.
type logger struct {
	w       io.Writer
	verbose bool
}

// always prints a message whatever the verbosity.
func (l *logger) always(format string, args ...any) {
	fmt.Fprintf(l.w, "kvmrig: "+format+"\n", args...)
}

// verbosef prints a message only in verbose mode.
func (l *logger) verbosef(format string, args ...any) {
	if l.verbose {
		l.always(format, args...)
	}
}
