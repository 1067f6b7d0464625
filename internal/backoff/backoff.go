// Package backoff paces the loops that must outlive errors they cannot
// handle, such as an accept loop that meets EMFILE or ECONNABORTED: after
// each error in a row the loop waits twice as long as after the last,
// from Min up to Max, and a success starts over. Only the loop's own end
// (its listener closed, or a done channel) stops it.
package backoff

import (
	"errors"
	"net"
	"time"
)

const (
	// Min is the wait after a first error.
	Min = 5 * time.Millisecond
	// Max is the longest wait after an error.
	Max = time.Second
)

// Delay is the wait before a loop's next try; the zero value waits Min
// after its first error.
type Delay struct{ d time.Duration }

// Wait waits after an error, doubling the delay up to Max; it reports
// false, at once, if done is closed meanwhile: the loop must end.
func (b *Delay) Wait(done <-chan struct{}) bool {
	b.d = min(max(2*b.d, Min), Max)
	t := time.NewTimer(b.d)
	defer t.Stop()
	select {
	case <-done:
		return false
	case <-t.C:
		return true
	}
}

// Reset starts over after a success.
func (b *Delay) Reset() { b.d = 0 }

// Accept accepts connections on l and hands each to handle until l is
// closed or done is closed. Every other error (EMFILE, ENFILE,
// ECONNABORTED, or one Go does not call temporary) is waited out with a
// Delay and the loop goes on.
func Accept(l net.Listener, done <-chan struct{}, handle func(net.Conn)) {
	var delay Delay
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || !delay.Wait(done) {
				return
			}
			continue
		}
		delay.Reset()
		handle(c)
	}
}
