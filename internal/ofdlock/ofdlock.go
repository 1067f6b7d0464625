// Package ofdlock takes open file description locks (F_OFD_SETLK) on
// whole files: held until the file is closed, released if the process
// dies, and conflicting between two opens even in one process, unlike
// POSIX record locks.
package ofdlock

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// ErrBusy is returned when another open file description holds a
// conflicting lock.
var ErrBusy = errors.New("locked by another open of the file")

// Lock locks the whole of f without waiting: exclusively (a write lock) or
// shared (a read lock, which needs f open for reading).
func Lock(f *os.File, exclusive bool) error {
	typ := int16(unix.F_RDLCK)
	if exclusive {
		typ = unix.F_WRLCK
	}
	fl := unix.Flock_t{Type: typ, Whence: io.SeekStart}
	err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &fl)
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
		return ErrBusy
	}
	return err
}
