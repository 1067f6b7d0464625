package guest

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/capsule-vm/capsule/internal/backoff"
)

// hybridTimeout bounds a connection's CONNECT line.
const hybridTimeout = 10 * time.Second

// listenHybrid listens on the Unix socket path for connections that
// speak Firecracker's hybrid vsock handshake, as capsule's vsock device
// does on the host ("CONNECT <port>\n", answered "OK <n>\n"), and
// returns a listener for each of ports: the agent's stand-in for vsock
// outside a guest. A connection to another port is closed, as a guest
// refuses it.
func listenHybrid(path string, ports ...uint32) (map[uint32]net.Listener, func() error, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, nil, err
	}
	done := make(chan struct{})
	lns := make(map[uint32]net.Listener)
	chans := make(map[uint32]*chanListener)
	for _, p := range ports {
		cl := &chanListener{conns: make(chan net.Conn), done: done, addr: ln.Addr()}
		lns[p], chans[p] = cl, cl
	}
	var once sync.Once
	closeAll := func() error {
		once.Do(func() { close(done) })
		return ln.Close()
	}
	for _, cl := range chans {
		cl.close = closeAll
	}
	go backoff.Accept(ln, done, func(c net.Conn) {
		go func() {
			port, err := readConnect(c)
			cl := chans[port]
			if err != nil || cl == nil {
				c.Close()
				return
			}
			select {
			case cl.conns <- c:
			case <-done:
				c.Close()
			}
		}()
	})
	return lns, closeAll, nil
}

// readConnect reads "CONNECT <port>\n", a byte at a time so that no
// byte of the stream is read with it, and answers "OK <port>\n".
func readConnect(c net.Conn) (uint32, error) {
	c.SetReadDeadline(time.Now().Add(hybridTimeout))
	var line []byte
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			return 0, err
		}
		if one[0] == '\n' {
			break
		}
		if len(line) >= 64 {
			return 0, errors.New("CONNECT line too long")
		}
		line = append(line, one[0])
	}
	c.SetReadDeadline(time.Time{})
	arg, ok := strings.CutPrefix(string(line), "CONNECT ")
	port, err := strconv.ParseUint(arg, 10, 32)
	if !ok || err != nil {
		return 0, fmt.Errorf("want CONNECT <port>, got %q", line)
	}
	_, err = fmt.Fprintf(c, "OK %d\n", port)
	return uint32(port), err
}

// chanListener hands out the connections of one port.
type chanListener struct {
	conns chan net.Conn
	done  chan struct{}
	addr  net.Addr
	close func() error
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { return l.close() }
func (l *chanListener) Addr() net.Addr { return l.addr }
