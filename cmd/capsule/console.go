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
// the Ctrl-A x escape. Raw mode is for input only: the terminal still turns
// the guest's "\n" into "\r\n" on output, as QEMU's stdio console leaves
// it, so that a guest that writes bare line feeds does not staircase.
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
		if err == nil {
			c.restore = func() { term.Restore(fd, old) }
			err = keepOutputProcessing(fd)
		}
		if err != nil {
			c.restore()
			r.Close()
			w.Close()
			return nil, fmt.Errorf("console: raw mode: %w", err)
		}
	}
	go c.loop(fd, tty, send, onStop)
	return c, nil
}

// keepOutputProcessing turns output processing with "\n" → "\r\n" back
// on for the terminal fd, which term.MakeRaw turned off. Only stdin's
// terminal is made raw: when stdout is the same terminal this covers it,
// and a different terminal on stdout was never changed.
func keepOutputProcessing(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Oflag |= unix.OPOST | unix.ONLCR
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
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
