// Package tail keeps the last bytes of a stream, such as a guest's
// console, to show when something fails.
package tail

import "sync"

// Writer keeps the last Max bytes written to it; it is safe for
// concurrent use.
type Writer struct {
	Max int

	mu  sync.Mutex
	buf []byte
}

func (t *Writer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.Max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

// Bytes is a copy of what was kept.
func (t *Writer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]byte(nil), t.buf...)
}
