package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// StreamKind is which of a process's stdio a stream connection carries.
type StreamKind uint8

// The stream kinds. A process with a terminal has only Stdin and Stdout
// (the pty carries stderr too).
const (
	Stdin  StreamKind = 0
	Stdout StreamKind = 1
	Stderr StreamKind = 2
)

func (k StreamKind) String() string {
	switch k {
	case Stdin:
		return "stdin"
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	}
	return fmt.Sprintf("stream %d", uint8(k))
}

// streamMagic opens every stream header.
var streamMagic = [4]byte{'C', 'P', 'S', 'T'}

// MaxIDLen is the longest process id, in bytes.
const MaxIDLen = 255

// StreamHeader opens a stream connection to StreamPort: "CPST", the
// protocol version (2 bytes, big endian), the kind (1 byte), the length
// of the process id (1 byte) and the id. The agent answers one byte, 0
// when the stream is attached; otherwise a length byte and that many
// bytes of message follow, and the agent closes the connection.
type StreamHeader struct {
	Version uint16
	Kind    StreamKind
	ID      string
}

// CheckID checks a process id: 1 to MaxIDLen bytes.
func CheckID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return fmt.Errorf("process id of %d bytes: want 1 to %d", len(id), MaxIDLen)
	}
	return nil
}

// WriteStreamHeader writes h to w.
func WriteStreamHeader(w io.Writer, h StreamHeader) error {
	if err := CheckID(h.ID); err != nil {
		return err
	}
	b := make([]byte, 0, 8+len(h.ID))
	b = append(b, streamMagic[:]...)
	b = binary.BigEndian.AppendUint16(b, h.Version)
	b = append(b, byte(h.Kind), byte(len(h.ID)))
	b = append(b, h.ID...)
	_, err := w.Write(b)
	return err
}

// ReadStreamHeader reads a stream header from r.
func ReadStreamHeader(r io.Reader) (StreamHeader, error) {
	var b [8]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return StreamHeader{}, fmt.Errorf("stream header: %w", err)
	}
	if [4]byte(b[:4]) != streamMagic {
		return StreamHeader{}, errors.New("stream header: bad magic")
	}
	h := StreamHeader{Version: binary.BigEndian.Uint16(b[4:6]), Kind: StreamKind(b[6])}
	if h.Kind > Stderr {
		return StreamHeader{}, fmt.Errorf("stream header: unknown kind %d", b[6])
	}
	id := make([]byte, b[7])
	if _, err := io.ReadFull(r, id); err != nil {
		return StreamHeader{}, fmt.Errorf("stream header: %w", err)
	}
	h.ID = string(id)
	if err := CheckID(h.ID); err != nil {
		return StreamHeader{}, fmt.Errorf("stream header: %w", err)
	}
	return h, nil
}

// WriteStreamAnswer writes the agent's answer to a stream header: nil
// attaches the stream, an error refuses it with its message (cut to 255
// bytes).
func WriteStreamAnswer(w io.Writer, refusal error) error {
	if refusal == nil {
		_, err := w.Write([]byte{0})
		return err
	}
	msg := refusal.Error()
	if len(msg) > 255 {
		msg = msg[:255]
	}
	_, err := w.Write(append([]byte{1, byte(len(msg))}, msg...))
	return err
}

// ReadStreamAnswer reads the agent's answer: nil when the stream is
// attached, the agent's refusal otherwise.
func ReadStreamAnswer(r io.Reader) error {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:1]); err != nil {
		return fmt.Errorf("stream answer: %w", err)
	}
	if b[0] == 0 {
		return nil
	}
	if _, err := io.ReadFull(r, b[1:2]); err != nil {
		return fmt.Errorf("stream answer: %w", err)
	}
	msg := make([]byte, b[1])
	if _, err := io.ReadFull(r, msg); err != nil {
		return fmt.Errorf("stream answer: %w", err)
	}
	return fmt.Errorf("agent refused the stream: %q", msg)
}
