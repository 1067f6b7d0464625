// Package agent is the host's side of capsule-agent, the init of a
// capsule guest that runs programs from a directory shared over
// virtio-9p: the protocol's constants (ports, version, the stdio stream
// header) and the client capsule drives the agent with.
//
// The host speaks ttrpc (package agentpb) on ControlPort to set up the
// sandbox and start, signal, resize and wait for processes. Each
// process's stdin, stdout and stderr travel as raw bytes, each on a
// connection of its own to StreamPort that starts with a StreamHeader.
// Output streams end (EOF) once the process and everything holding its
// pipes are done, before the agent reports its exit; the host's end of
// its stdin stream reaches the program as end of file.
package agent

import (
	"errors"
	"fmt"
	"syscall"
)

// Version is the protocol version; host and agent must agree.
const Version = 1

// The agent's vsock ports.
const (
	// ControlPort carries the ttrpc service.
	ControlPort = 1024
	// StreamPort carries one process stream a connection.
	StreamPort = 1025
)

var (
	// ErrAgentLost is the error of a call when the connection to the agent
	// is lost: the agent died, the guest crashed or powered off, or a
	// stream ended short of what the agent reported sending.
	ErrAgentLost = errors.New("connection to the guest agent lost")
	// ErrVersion is the error of Dial when the agent speaks another
	// version of the protocol.
	ErrVersion = errors.New("guest agent protocol version mismatch")
	// ErrNotFound is the error of Start when the program is not found.
	ErrNotFound = errors.New("executable file not found")
	// ErrPermission is the error of Start when the program cannot be run.
	ErrPermission = errors.New("permission denied")
	// ErrExited is the error of Signal and Resize on a process that has
	// already exited.
	ErrExited = errors.New("process has exited")
)

// Exit statuses of a program that Start could not run, as a shell (and
// docker and runc) report them.
const (
	StatusCannotRun = 126 // ErrPermission
	StatusNotFound  = 127 // ErrNotFound
)

// StartStatus is the exit status that a Start error stands for:
// StatusNotFound for ErrNotFound, StatusCannotRun for ErrPermission; ok
// is false for any other error (or none).
func StartStatus(err error) (status int, ok bool) {
	switch {
	case errors.Is(err, ErrNotFound):
		return StatusNotFound, true
	case errors.Is(err, ErrPermission):
		return StatusCannotRun, true
	}
	return 0, false
}

// ExitStatus is how a process ended: its exit code, or the signal that
// killed it.
type ExitStatus struct {
	Code   int            // the exit code, when Signal is 0
	Signal syscall.Signal // the signal that killed the process, or 0
}

// ShellCode is the status a shell would report: Code, or 128+Signal.
func (s ExitStatus) ShellCode() int {
	if s.Signal != 0 {
		return 128 + int(s.Signal)
	}
	return s.Code
}

func (s ExitStatus) String() string {
	if s.Signal != 0 {
		return fmt.Sprintf("killed by signal %d (%v)", int(s.Signal), s.Signal)
	}
	return fmt.Sprintf("exit status %d", s.Code)
}
