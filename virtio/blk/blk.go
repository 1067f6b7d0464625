// Package blk is capsule's virtio-blk device: a disk image file (or block
// device) as a virtio 1.2 block device with read, write, flush and get-id.
//
// A writable image is locked with an open file description lock
// (F_OFD_SETLK, write lock) and a read-only one with a read lock, so two
// VMs never write the same image and none reads an image another writes.
// Requests are checked before any I/O: a sector range past the end, a data
// length that is not a whole number of sectors, a write to a read-only
// disk or a malformed chain fail that request with VIRTIO_BLK_S_IOERR and
// touch neither the file nor guest memory outside the request's buffers.
//
// Every request completes with its status written to the last byte of its
// last device-writable descriptor (virtio 1.2, 5.2.6), and a used length
// that counts that byte. For a malformed chain that byte is the last byte
// of the chain's last descriptor when that is device-writable and inside
// guest RAM (see virtio.Chain.Status). A chain with no such byte cannot
// carry a status: it is completed with a used length of 0 and nothing
// done, the only completion with length 0, which a driver can tell from
// every other. The first malformed request of each activation is reported
// (virtio.Activation.Report).
//
// The image must be a regular file or a block device: Open refuses a
// directory, and a named pipe, socket or character device (which would
// block start-up or read as an endless disk) without opening it.
package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/capsule-vm/capsule/internal/ofdlock"
	"github.com/capsule-vm/capsule/internal/patherr"
	"github.com/capsule-vm/capsule/internal/ratelimit"
	"github.com/capsule-vm/capsule/virtio"
)

// Feature bits (virtio 1.2, 5.2.3).
const (
	FeatureSegMax = 1 << 2
	FeatureRO     = 1 << 5
	FeatureFlush  = 1 << 9
)

// Request types and status values (virtio 1.2, 5.2.6).
const (
	TypeIn    = 0
	TypeOut   = 1
	TypeFlush = 4
	TypeGetID = 8

	StatusOK     = 0
	StatusIOErr  = 1
	StatusUnsupp = 2

	// SectorSize is the unit of the request header's sector field.
	SectorSize = 512
	// HeaderSize is the size of the request header.
	HeaderSize = 16
	// IDLen is the length of the GET_ID answer.
	IDLen = 20
	// QueueSize is the size of the device's one queue.
	QueueSize = 256
)

// Device is one virtio-blk disk.
type Device struct {
	path     string
	file     *os.File
	readOnly bool
	capacity uint64 // bytes, a multiple of SectorSize
	id       [IDLen]byte

	server virtio.Server
	// reported: a malformed request of this activation was reported.
	reported bool
	// limit bounds the requests served per second (nil: no limit);
	// limitStop ends a wait for it when the device resets.
	limit     *ratelimit.Limiter
	limitStop chan struct{}

	// Scratch space, reused across requests (they are served one at a
	// time): the parts of a chain, and transfer's spans and iovecs.
	data, status, head, payload []virtio.Buffer
	spans                       []virtio.Buffer
	spanLen                     []uint64
	iovs                        [][]byte
}

// Open opens the image at path and locks it. The image's size is rounded
// down to whole sectors.
func Open(path string, readOnly bool) (*Device, error) {
	flag, how := os.O_RDWR, "read-write"
	if readOnly {
		flag, how = os.O_RDONLY, "read-only"
	}
	if err := checkKind(path); err != nil {
		return nil, err
	}
	// O_NONBLOCK: a FIFO swapped in after the check must not block the
	// open; the file's kind is checked again on what was opened.
	f, err := os.OpenFile(path, flag|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", path, patherr.Unwrap(err))
	}
	if err := checkOpened(path, f); err != nil {
		f.Close()
		return nil, err
	}
	if err := ofdlock.Lock(f, !readOnly); err != nil {
		f.Close()
		if errors.Is(err, ofdlock.ErrBusy) {
			return nil, fmt.Errorf("disk %s is in use: another process holds a lock on it, so it cannot be opened %s", path, how)
		}
		return nil, fmt.Errorf("disk %s: lock: %w", path, err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("disk %s: size: %w", path, err)
	}
	if size < SectorSize {
		f.Close()
		return nil, fmt.Errorf("disk %s: %d bytes, smaller than one %d-byte sector", path, size, SectorSize)
	}
	d := &Device{path: path, file: f, readOnly: readOnly, capacity: uint64(size) &^ (SectorSize - 1)}
	copy(d.id[:], filepath.Base(path))
	return d, nil
}

// checkKind refuses, before opening it, a path that is not a regular file
// or a block device.
func checkKind(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("disk %s: %w", path, patherr.Unwrap(err))
	}
	return kindError(path, fi.Mode())
}

// checkOpened checks the kind of the file actually opened, and clears
// O_NONBLOCK for regular I/O.
func checkOpened(path string, f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("disk %s: %w", path, patherr.Unwrap(err))
	}
	if err := kindError(path, fi.Mode()); err != nil {
		return err
	}
	if err := unix.SetNonblock(int(f.Fd()), false); err != nil {
		return fmt.Errorf("disk %s: %w", path, err)
	}
	return nil
}

func kindError(path string, m os.FileMode) error {
	what := ""
	switch {
	case m.IsRegular(), m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0:
		return nil
	case m.IsDir():
		return fmt.Errorf("disk %s: is a directory", path)
	case m&os.ModeNamedPipe != 0:
		what = "named pipe"
	case m&os.ModeSocket != 0:
		what = "socket"
	case m&os.ModeCharDevice != 0:
		what = "character device"
	default:
		what = m.Type().String()
	}
	return fmt.Errorf("disk %s: not a regular file or block device (%s)", path, what)
}

// Path is the image's path.
func (d *Device) Path() string { return d.path }

// ReadOnly reports whether the disk refuses writes.
func (d *Device) ReadOnly() bool { return d.readOnly }

// Capacity is the disk's size in bytes.
func (d *Device) Capacity() uint64 { return d.capacity }

// Close flushes a writable image to stable storage and closes it, which
// drops the lock. Reset the device first.
func (d *Device) Close() error {
	var err error
	if !d.readOnly {
		if e := unix.Fdatasync(int(d.file.Fd())); e != nil {
			err = fmt.Errorf("disk %s: flush: %w", d.path, e)
		}
	}
	if e := d.file.Close(); e != nil && err == nil {
		err = fmt.Errorf("disk %s: %w", d.path, e)
	}
	return err
}

// Type implements virtio.Device.
func (d *Device) Type() virtio.Type { return virtio.TypeBlock }

// Features implements virtio.Device.
func (d *Device) Features() uint64 {
	f := uint64(FeatureSegMax | FeatureFlush)
	if d.readOnly {
		f |= FeatureRO
	}
	return f
}

// QueueMaxSizes implements virtio.Device.
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize} }

// ReadConfig implements virtio.Device: capacity in sectors at 0, size_max
// at 8 (unused), seg_max at 12.
func (d *Device) ReadConfig(off uint64, p []byte) {
	var cfg [16]byte
	binary.LittleEndian.PutUint64(cfg[0:], d.capacity/SectorSize)
	binary.LittleEndian.PutUint32(cfg[12:], QueueSize-2)
	virtio.ReadConfigFrom(cfg[:], off, p)
}

// WriteConfig implements virtio.Device; the configuration is read-only.
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate implements virtio.Device.
func (d *Device) Activate(a virtio.Activation) error {
	if !a.Queues[0].Ready {
		return errors.New("request queue not enabled")
	}
	d.reported = false
	d.limitStop = make(chan struct{})
	stop := d.limitStop
	d.server.Start(a, 0, func(c virtio.Chain, chainErr error) uint32 {
		if chainErr == nil && !d.limit.Wait(virtio.Len(c.Readable)+virtio.Len(c.Writable), stop) {
			chainErr = errors.New("device reset while the request waited for its rate limit")
		}
		return d.Handle(a, c, chainErr)
	})
	return nil
}

// SetRateLimit bounds the requests the device serves: each takes its
// data length from l's bandwidth bucket and one operation. Call it before
// the guest runs; nil removes the limit.
func (d *Device) SetRateLimit(l *ratelimit.Limiter) { d.limit = l }

// Reset implements virtio.Device.
func (d *Device) Reset() {
	if d.limitStop != nil {
		close(d.limitStop) // a request waiting for its rate limit fails
		d.limitStop = nil
	}
	d.server.Stop()
}

// Handle serves one request and returns the bytes written into the chain:
// the data, plus 1 for the status byte; 0 for a chain with nowhere to put
// a status (see the package documentation).
func (d *Device) Handle(a virtio.Activation, c virtio.Chain, chainErr error) uint32 {
	if chainErr != nil {
		// The chain's buffers stop at its fault; its status byte, if it
		// has one, is the last byte of its last descriptor.
		if c.Status.Len == 0 || a.Mem.PutUint8(c.Status.Addr, StatusIOErr) != nil {
			d.report(a, fmt.Errorf("request %d: %w; completed with no status (no writable last byte)", c.Head, chainErr))
			return 0
		}
		d.report(a, fmt.Errorf("request %d: %w; failed with IOERR", c.Head, chainErr))
		return 1
	}
	// The status is the last byte the device writes.
	wlen := virtio.Len(c.Writable)
	if wlen == 0 || wlen > 1<<32-1 {
		d.report(a, fmt.Errorf("request %d: no device-writable byte for the status (%d writable bytes); completed with no status", c.Head, wlen))
		return 0
	}
	d.data, d.status = virtio.SplitAppend(c.Writable, wlen-1, d.data[:0], d.status[:0])
	status, n := d.serve(a, c, d.data, chainErr)
	if len(d.status) == 0 || a.Mem.PutUint8(d.status[0].Addr, status) != nil {
		return 0
	}
	return n + 1
}

// report tells the user of the first malformed request of an activation.
func (d *Device) report(a virtio.Activation, err error) {
	if d.reported || a.Report == nil {
		return
	}
	d.reported = true
	a.Report(fmt.Errorf("%w (later malformed requests are not reported)", err))
}

// serve performs the request; n is the number of data bytes written.
func (d *Device) serve(a virtio.Activation, c virtio.Chain, data []virtio.Buffer, chainErr error) (status byte, n uint32) {
	if chainErr != nil {
		return StatusIOErr, 0
	}
	var hdr [HeaderSize]byte
	if k, err := virtio.Gather(a.Mem, c.Readable, hdr[:]); err != nil || k < HeaderSize {
		return StatusIOErr, 0
	}
	typ := binary.LittleEndian.Uint32(hdr[0:])
	sector := binary.LittleEndian.Uint64(hdr[8:])
	switch typ {
	case TypeIn:
		length := virtio.Len(data)
		off, ok := d.span(sector, length)
		if !ok {
			return StatusIOErr, 0
		}
		if err := d.transfer(a, data, off, false); err != nil {
			return StatusIOErr, 0
		}
		return StatusOK, uint32(length)
	case TypeOut:
		d.head, d.payload = virtio.SplitAppend(c.Readable, HeaderSize, d.head[:0], d.payload[:0])
		payload := d.payload
		off, ok := d.span(sector, virtio.Len(payload))
		if !ok || d.readOnly {
			return StatusIOErr, 0
		}
		if err := d.transfer(a, payload, off, true); err != nil {
			return StatusIOErr, 0
		}
		return StatusOK, 0
	case TypeFlush:
		if d.readOnly {
			return StatusOK, 0
		}
		if err := unix.Fdatasync(int(d.file.Fd())); err != nil {
			return StatusIOErr, 0
		}
		return StatusOK, 0
	case TypeGetID:
		k, err := virtio.Scatter(a.Mem, data, d.id[:])
		if err != nil {
			return StatusIOErr, 0
		}
		return StatusOK, uint32(k)
	}
	return StatusUnsupp, 0
}

// span checks that length bytes from sector are whole sectors inside the
// disk and returns their byte offset.
func (d *Device) span(sector, length uint64) (uint64, bool) {
	if length%SectorSize != 0 || sector > d.capacity/SectorSize {
		return 0, false
	}
	off := sector * SectorSize
	return off, length <= d.capacity-off
}

// transfer reads the file into bufs (or writes bufs to it) from byte off,
// with one preadv/pwritev for the whole request where the kernel takes it
// all (a 1 MiB request is typically 256 guest pages).
func (d *Device) transfer(a virtio.Activation, bufs []virtio.Buffer, off uint64, write bool) error {
	// Guest-physically adjacent buffers become one iovec (when they lie
	// in one RAM region).
	spans, spanLen := d.spans[:0], d.spanLen[:0]
	for _, b := range bufs {
		if n := len(spans); n > 0 && spans[n-1].Addr+spanLen[n-1] == b.Addr && a.Mem.Contains(spans[n-1].Addr, spanLen[n-1]+uint64(b.Len)) {
			spanLen[n-1] += uint64(b.Len)
			continue
		}
		spans = append(spans, b)
		spanLen = append(spanLen, uint64(b.Len))
	}
	iovs := d.iovs[:0]
	for i, b := range spans {
		s, err := a.Mem.Slice(b.Addr, spanLen[i])
		if err != nil {
			return err
		}
		iovs = append(iovs, s)
	}
	d.spans, d.spanLen, d.iovs = spans, spanLen, iovs
	defer clear(d.iovs[:cap(d.iovs)]) // keep no reference to guest RAM
	fd := int(d.file.Fd())
	for len(iovs) > 0 {
		batch := iovs[:min(len(iovs), maxIOV)]
		var n int
		var err error
		if write {
			n, err = unix.Pwritev(fd, batch, int64(off))
		} else {
			n, err = unix.Preadv(fd, batch, int64(off))
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		off += uint64(n)
		iovs = advance(iovs, n)
	}
	return nil
}

// maxIOV is the most iovecs one preadv takes (IOV_MAX).
const maxIOV = 1024

// advance drops the first n bytes of iovs.
func advance(iovs [][]byte, n int) [][]byte {
	for n > 0 && len(iovs) > 0 {
		if n < len(iovs[0]) {
			iovs[0] = iovs[0][n:]
			return iovs
		}
		n -= len(iovs[0])
		iovs = iovs[1:]
	}
	return iovs
}
