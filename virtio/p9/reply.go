package p9

import (
	"encoding/binary"
	"fmt"

	"github.com/capsule-vm/capsule/machine"
	"github.com/capsule-vm/capsule/virtio"
)

// replyWriter is the server's output: a stream of R-messages, which it
// writes one at a time, each in one or more Write calls. Each message goes
// straight into the device-writable buffers of the chain whose request has
// its tag, and completes that chain when its last byte is in.
type replyWriter struct {
	d   *Device
	mem *machine.GuestMemory // of the activation the message is for

	hdr  [headerSize]byte
	nhdr int
	// The message being written: its request (nil: nobody to give it
	// to), size, bytes of it still to come, and whether it fits the
	// chain (else it is dropped for an Rlerror ENOBUFS).
	r    *request
	size uint32
	left uint32
	fits bool
	// msize, of an Rversion: its first body bytes.
	msize  [4]byte
	nmsize int
}

// Write implements io.Writer; it never fails (a message nobody waits for
// is dropped).
func (w *replyWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if w.nhdr < headerSize {
			k := copy(w.hdr[w.nhdr:], p)
			w.nhdr += k
			p = p[k:]
			if w.nhdr == headerSize {
				w.start()
			}
		} else {
			k := min(uint32(len(p)), w.left)
			w.body(p[:k])
			p = p[k:]
			w.left -= k
		}
		if w.nhdr == headerSize && w.left == 0 {
			w.finish()
		}
	}
	return n, nil
}

// Close implements io.Closer.
func (w *replyWriter) Close() error { return nil }

// start looks up the request of the message whose header is in w.hdr.
func (w *replyWriter) start() {
	w.size = max(binary.LittleEndian.Uint32(w.hdr[:]), headerSize)
	w.left = w.size - headerSize
	tag := binary.LittleEndian.Uint16(w.hdr[5:])
	w.nmsize = 0
	d := w.d
	d.mu.Lock()
	w.r, w.mem = d.inflight[tag], d.a.Mem
	// Nothing goes into guest memory once the device stops (the driver
	// may have reused its buffers) or for the device's own messages.
	w.fits = w.r != nil && !w.r.internal && !d.stopped && uint64(w.size) <= w.r.room
	d.mu.Unlock()
	if w.fits {
		w.fits = writeAt(w.mem, w.r.writable, 0, w.hdr[:]) == nil
	}
}

// body takes the next bytes of the message's body.
func (w *replyWriter) body(p []byte) {
	if w.hdr[4] == msgRversion && w.nmsize < len(w.msize) {
		w.nmsize += copy(w.msize[w.nmsize:], p)
	}
	if w.fits {
		off := uint64(w.size - w.left) // bytes of the message already in
		w.fits = writeAt(w.mem, w.r.writable, off, p) == nil
	}
}

// finish completes the request of the message now all written.
func (w *replyWriter) finish() {
	d := w.d
	r, typ, size, fits := w.r, w.hdr[4], w.size, w.fits
	w.nhdr, w.r = 0, nil
	if typ == msgRversion && w.nmsize == len(w.msize) {
		// The server keeps the msize it answers with (0: the version
		// was refused and the msize is unchanged).
		if m := binary.LittleEndian.Uint32(w.msize[:]); m != 0 {
			d.mu.Lock()
			d.msize = min(m, MaxMessageSize)
			d.mu.Unlock()
		}
	}
	if r == nil {
		d.mu.Lock()
		if !d.stopped {
			d.report(fmt.Errorf("9P answer (type %d, tag %d) to no request in flight; dropped", typ, binary.LittleEndian.Uint16(w.hdr[5:])))
		}
		d.mu.Unlock()
		return
	}
	n := size
	if !fits {
		// Too large for the chain: an Rlerror instead, when that fits
		// (and the answer goes to the driver at all).
		n = 0
		d.mu.Lock()
		give := !r.internal && !d.stopped
		d.mu.Unlock()
		if msg := rlerror(r.tag, errENOBUFS); give && r.room >= uint64(len(msg)) && writeAt(w.mem, r.writable, 0, msg) == nil {
			n = uint32(len(msg))
		}
	}
	d.complete(r, typ, n)
}

// writeAt copies p into bufs from byte off of them on.
func writeAt(mem *machine.GuestMemory, bufs []virtio.Buffer, off uint64, p []byte) error {
	for _, b := range bufs {
		if len(p) == 0 {
			return nil
		}
		if off >= uint64(b.Len) {
			off -= uint64(b.Len)
			continue
		}
		k := min(uint64(len(p)), uint64(b.Len)-off)
		if err := mem.WriteAt(p[:k], b.Addr+off); err != nil {
			return err
		}
		p, off = p[k:], 0
	}
	if len(p) > 0 {
		return fmt.Errorf("%d bytes beyond the buffers", len(p))
	}
	return nil
}
