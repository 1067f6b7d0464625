package vsock

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// failingListener fails its first Accepts with err, then accepts for
// real.
type failingListener struct {
	net.Listener
	fails int
	err   error
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, l.err
	}
	return l.Listener.Accept()
}

func TestAcceptLoopOutlivesErrors(t *testing.T) {
	dir, err := os.MkdirTemp("", "vsock")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	d, err := Open(uint64(3000+os.Getpid()), filepath.Join(dir, "v.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// A second socket served by a second loop, whose Accept first fails
	// with an error that is not temporary, as the old loop ended on.
	ln, err := net.Listen("unix", filepath.Join(dir, "w.sock"))
	if err != nil {
		t.Fatal(err)
	}
	fl := &failingListener{Listener: ln, fails: 3, err: errors.New("injected accept error")}
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		d.acceptLoop(fl)
	}()
	c, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A served connection with a bad first line is closed at once; one
	// nobody accepts would wait in the backlog until the deadline.
	c.Write([]byte("HELLO\n"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %v: want the connection served and closed after the accept errors", err)
	}
	ln.Close()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the accept loop did not end when its listener closed")
	}
}
