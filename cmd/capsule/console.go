package main

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

const ctrlA = 0x01

// console forwards stdin to the guest. On a terminal it switches the
// terminal to raw mode (restored by stop, on every path) and watches for
// the Ctrl-A x escape.
type console struct {
	wakeR, wakeW *os.File
	done         chan struct{}
	restore      func()
	once         sync.Once
}

// startConsole starts forwarding in's bytes to send; onStop is called when
// the user types Ctrl-A x.
func startConsole(in *os.File, send func([]byte), onStop func()) (*console, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	c := &console{wakeR: r, wakeW: w, done: make(chan struct{}), restore: func() {}}
	fd := int(in.Fd())
	tty := term.IsTerminal(fd)
	if tty {
		old, err := term.MakeRaw(fd)
		if err != nil {
			r.Close()
			w.Close()
			return nil, fmt.Errorf("console: raw mode: %w", err)
		}
		c.restore = func() { term.Restore(fd, old) }
	}
	go c.loop(fd, tty, send, onStop)
	return c, nil
}

func (c *console) loop(fd int, tty bool, send func([]byte), onStop func()) {
	defer close(c.done)
	buf := make([]byte, 256)
	escape := false
	for {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(c.wakeR.Fd()), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		if pfd[1].Revents != 0 {
			return
		}
		if pfd[0].Revents&(unix.POLLIN|unix.POLLHUP) == 0 {
			if pfd[0].Revents != 0 {
				return // POLLERR/POLLNVAL: no usable input
			}
			continue
		}
		n, err := unix.Read(fd, buf)
		if n <= 0 || err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			return // EOF: no more input
		}
		if !tty {
			send(buf[:n])
			continue
		}
		out := buf[:0]
		for _, b := range buf[:n] {
			switch {
			case escape && b == 'x':
				onStop()
				return
			case escape:
				escape = false
				out = append(out, b) // Ctrl-A Ctrl-A → Ctrl-A; other keys pass
			case b == ctrlA:
				escape = true
			default:
				out = append(out, b)
			}
		}
		if len(out) > 0 {
			send(out)
		}
	}
}

// stop ends forwarding, waits for the reader, and restores the terminal.
func (c *console) stop() {
	c.once.Do(func() {
		c.wakeW.Write([]byte{0})
		<-c.done
		c.wakeR.Close()
		c.wakeW.Close()
		c.restore()
	})
}
