package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY returns a new pseudo-terminal: its master, where the test plays
// the user at a terminal emulator, and its slave, the terminal capsule
// would have as stdin and stdout.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals on this host: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	// Fd would switch master to blocking mode and lose its read deadline.
	rc, err := master.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n uint32
	ctlErr := rc.Control(func(fd uintptr) {
		if err = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); err == nil {
			n, err = unix.IoctlGetUint32(int(fd), unix.TIOCGPTN)
		}
	})
	if err != nil || ctlErr != nil {
		t.Fatalf("unlock and name the pty: %v %v", err, ctlErr)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slave.Close() })
	return master, slave
}

func termios(t *testing.T, f *os.File) unix.Termios {
	t.Helper()
	tio, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	return *tio
}

// readN reads n bytes from master, failing the test if they do not come
// within 10 s.
func readN(t *testing.T, master *os.File, n int) []byte {
	t.Helper()
	master.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, n)
	if _, err := io.ReadFull(master, buf); err != nil {
		t.Fatalf("read %d bytes from the terminal: %v (got %q)", n, err, buf)
	}
	return buf
}

func TestConsoleOnATerminal(t *testing.T) {
	master, slave := openPTY(t)
	before := termios(t, slave)
	keys := make(chan []byte, 16)
	stopped := make(chan struct{})
	con, err := startConsole(slave, func(b []byte) { keys <- bytes.Clone(b) }, func() { close(stopped) })
	if err != nil {
		t.Fatal(err)
	}
	defer con.stop()

	raw := termios(t, slave)
	if raw.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != 0 {
		t.Errorf("input is not raw: lflag %#x", raw.Lflag)
	}
	if raw.Oflag&(unix.OPOST|unix.ONLCR) != unix.OPOST|unix.ONLCR {
		t.Errorf("output processing is off: oflag %#x", raw.Oflag)
	}

	// The guest writes bare line feeds; the user sees each line start at
	// column 0.
	if _, err := slave.Write([]byte("a\nb\n")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, master, 6); string(got) != "a\r\nb\r\n" {
		t.Errorf("guest output %q reached the terminal as %q, want %q", "a\nb\n", got, "a\r\nb\r\n")
	}

	// Keys reach the guest as typed, Ctrl-A Ctrl-A as one Ctrl-A.
	if _, err := master.Write([]byte("hi\r\x01\x01")); err != nil {
		t.Fatal(err)
	}
	var typed []byte
	for len(typed) < 4 {
		select {
		case k := <-keys:
			typed = append(typed, k...)
		case <-time.After(10 * time.Second):
			t.Fatalf("the guest got %q of %q", typed, "hi\r\x01")
		}
	}
	if string(typed) != "hi\r\x01" {
		t.Errorf("the guest got %q, want %q", typed, "hi\r\x01")
	}

	// Ctrl-A x stops the VM, and stop gives the terminal back as it was.
	if _, err := master.Write([]byte("\x01x")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Ctrl-A x did not stop the VM")
	}
	con.stop()
	if after := termios(t, slave); after != before {
		t.Errorf("terminal not restored after stop:\n got %+v\nwant %+v", after, before)
	}
}
