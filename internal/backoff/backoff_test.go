package backoff

import (
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

func TestDelayDoublesUpToMax(t *testing.T) {
	var b Delay
	var got []time.Duration
	for range 10 {
		b.d = min(max(2*b.d, Min), Max) // what Wait does, without the wait
		got = append(got, b.d)
	}
	want := []time.Duration{Min, 2 * Min, 4 * Min, 8 * Min, 16 * Min, 32 * Min, 64 * Min, 128 * Min, Max, Max}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delays %v, want %v", got, want)
		}
	}
	b.Reset()
	if !b.Wait(nil) || b.d != Min {
		t.Errorf("after Reset: delay %v, want %v", b.d, Min)
	}
}

func TestWaitEndsWhenDone(t *testing.T) {
	b := Delay{d: Max}
	done := make(chan struct{})
	close(done)
	start := time.Now()
	if b.Wait(done) {
		t.Error("Wait reported true with done closed")
	}
	if time.Since(start) > Max/2 {
		t.Errorf("Wait took %v with done closed", time.Since(start))
	}
}

// flakyListener fails its first Accepts with err, then accepts for real.
type flakyListener struct {
	net.Listener
	fails int
	err   error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, l.err
	}
	return l.Listener.Accept()
}

func TestAcceptOutlivesErrors(t *testing.T) {
	for _, err := range []error{
		&net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.EMFILE)},
		&net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.EPROTO)},
		errors.New("an error nobody calls temporary"),
	} {
		t.Run(err.Error(), func(t *testing.T) {
			ln, lerr := net.Listen("unix", t.TempDir()+"/s")
			if lerr != nil {
				t.Fatal(lerr)
			}
			fl := &flakyListener{Listener: ln, fails: 3, err: err}
			got := make(chan net.Conn, 1)
			ended := make(chan struct{})
			go func() {
				defer close(ended)
				Accept(fl, nil, func(c net.Conn) { got <- c })
			}()
			c, derr := net.Dial("unix", ln.Addr().String())
			if derr != nil {
				t.Fatal(derr)
			}
			defer c.Close()
			select {
			case hc := <-got:
				hc.Close()
			case <-time.After(5 * time.Second):
				t.Fatal("no connection accepted after the errors")
			}
			ln.Close()
			select {
			case <-ended:
			case <-time.After(5 * time.Second):
				t.Fatal("Accept did not end when its listener closed")
			}
		})
	}
	t.Run("done ends it while it waits", func(t *testing.T) {
		ln, err := net.Listen("unix", t.TempDir()+"/s")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		fl := &flakyListener{Listener: ln, fails: 1 << 30, err: errors.New("always")}
		done := make(chan struct{})
		ended := make(chan struct{})
		go func() {
			defer close(ended)
			Accept(fl, done, func(net.Conn) {})
		}()
		close(done)
		select {
		case <-ended:
		case <-time.After(5 * time.Second):
			t.Fatal("Accept did not end when done closed")
		}
	})
}
