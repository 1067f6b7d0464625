package p9

import (
	"encoding/binary"
	"fmt"
	"io"

	ninep "github.com/hugelgupf/p9/p9"

	"github.com/capsule-vm/capsule/machine"
	"github.com/capsule-vm/capsule/virtio"
)

// feed takes the queue's chains in order and passes their T-messages to
// the server, or answers them itself, until the device resets.
func (d *Device) feed(a virtio.Activation, pw *io.PipeWriter) {
	var c virtio.Chain
	var buf []byte // the message being passed on, reused
	for {
		chainErr, ok := virtio.NextChain(a, 0, &c)
		if !ok {
			return
		}
		msg, r := d.take(a.Mem, &c, chainErr, &buf)
		if r == nil {
			continue // answered, or the device stops
		}
		if _, err := pw.Write(msg); err != nil {
			a.Fail(errEnded) // the server session ended: a device bug
			return
		}
	}
}

// take checks the chain's T-message and either answers it (r is nil) or
// registers it as in flight and returns the message to pass to the server
// (in *buf, or a rewritten copy). It waits for a free slot first.
func (d *Device) take(mem *machine.GuestMemory, c *virtio.Chain, chainErr error, buf *[]byte) (msg []byte, r *request) {
	if chainErr != nil {
		d.mu.Lock()
		d.report(fmt.Errorf("request %d: %w; completed with nothing written", c.Head, chainErr))
		d.answer(c.Head, nil, nil)
		d.mu.Unlock()
		return nil, nil
	}
	var hdr [headerSize]byte
	if k, err := virtio.Gather(mem, c.Readable, hdr[:]); err != nil || k < headerSize {
		d.mu.Lock()
		d.report(fmt.Errorf("request %d: %d readable bytes, less than a 9P header; completed with nothing written", c.Head, virtio.Len(c.Readable)))
		d.answer(c.Head, nil, nil)
		d.mu.Unlock()
		return nil, nil
	}
	size := binary.LittleEndian.Uint32(hdr[:])
	typ, tag := hdr[4], binary.LittleEndian.Uint16(hdr[5:])
	refuse := func(ecode uint32, err error) ([]byte, *request) {
		d.mu.Lock()
		if err != nil {
			d.report(fmt.Errorf("request %d (9P type %d, tag %d): %w", c.Head, typ, tag, err))
		}
		d.answer(c.Head, c.Writable, rlerror(tag, ecode))
		d.mu.Unlock()
		return nil, nil
	}
	d.mu.Lock()
	msize := d.msize
	d.mu.Unlock()
	readable := virtio.Len(c.Readable)
	switch {
	case size < headerSize || uint64(size) > readable:
		return refuse(errEINVAL, fmt.Errorf("size field %d with %d readable bytes", size, readable))
	case size > msize:
		return refuse(errEMSGSIZE, fmt.Errorf("%d bytes, more than the msize %d", size, msize))
	}
	if cap(*buf) < int(size) {
		*buf = make([]byte, size)
	}
	msg = (*buf)[:size]
	if k, err := virtio.Gather(mem, c.Readable, msg); err != nil || k < int(size) {
		return refuse(errEINVAL, fmt.Errorf("reading the message: %v", err))
	}
	body := msg[headerSize:]
	if !wellFormed(typ, body) {
		if _, known := layouts[typ]; known || typ == msgTwrite {
			return refuse(errEINVAL, fmt.Errorf("%d-byte body too short for its fields", len(body)))
		}
		if typ == msgTxattrwalk || typ == msgTxattrcreat {
			return refuse(errEOPNOTSUPP, nil) // Linux asks; not misuse
		}
		return refuse(errEOPNOTSUPP, fmt.Errorf("message type not supported"))
	}
	switch typ {
	case msgTflush:
		d.flush(c, tag, binary.LittleEndian.Uint16(body))
		return nil, nil
	case msgTgetlock:
		d.mu.Lock()
		d.answer(c.Head, c.Writable, rgetlock(tag, body))
		d.mu.Unlock()
		return nil, nil
	case msgTversion:
		// An msize too small for a Tversion would leave the session
		// unable to take even the next one: refused here.
		if binary.LittleEndian.Uint32(body) < MinMessageSize {
			return refuse(errEINVAL, fmt.Errorf("Tversion msize %d, less than %d", binary.LittleEndian.Uint32(body), MinMessageSize))
		}
		msg = tversion(tag, body, MaxMessageSize)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	for !d.stopped && !d.ended() && !d.mayPass(typ) {
		d.cond.Wait()
	}
	if d.stopped || d.ended() {
		return nil, nil
	}
	if typ == msgTunlinkat {
		// fid[4] name[s] flags[4]: a name is one path component.
		if n := binary.LittleEndian.Uint16(body[4:]); n > maxNameLen {
			d.answer(c.Head, c.Writable, rlerror(tag, errENAMETOOLONG))
			return nil, nil
		}
		if d.failedUnlinks >= failedUnlinkLimit {
			d.report(fmt.Errorf("request %d: more than %d unlinks refused: refusing every unlink", c.Head, MaxFailedUnlinks))
			d.answer(c.Head, c.Writable, rlerror(tag, errEPERM))
			return nil, nil
		}
	}
	// A Tversion answered while this one waited may have lowered the
	// msize: the server ends a session on a message over it.
	if size > d.msize {
		d.report(fmt.Errorf("request %d (9P type %d, tag %d): %d bytes, more than the msize %d", c.Head, typ, tag, size, d.msize))
		d.answer(c.Head, c.Writable, rlerror(tag, errEMSGSIZE))
		return nil, nil
	}
	if typ == msgTread || typ == msgTreaddir {
		// fid[4] offset[8] count[4]: the answer must fit the chain and
		// the msize.
		room := min(virtio.Len(c.Writable), uint64(d.msize))
		limit := uint32(0)
		if room > ioHeaderSize {
			limit = uint32(room - ioHeaderSize)
		}
		if count := binary.LittleEndian.Uint32(body[12:]); count > limit {
			binary.LittleEndian.PutUint32(body[12:], limit)
		}
	}
	if _, busy := d.inflight[tag]; busy {
		d.report(fmt.Errorf("request %d (9P type %d): tag %d is already in flight", c.Head, typ, tag))
		d.answer(c.Head, c.Writable, rlerror(tag, errEINVAL))
		return nil, nil
	}
	r = d.newRequest(c, tag, typ)
	d.inflight[tag] = r
	switch typ {
	case msgTversion:
		d.versionBusy = true
	case msgTattach:
		d.attachBusy = true
		d.attachUID = attachUID(body)
		r.fid = binary.LittleEndian.Uint32(body)
	case msgTwalk:
		r.fid, r.newFid = binary.LittleEndian.Uint32(body), binary.LittleEndian.Uint32(body[4:])
	case msgTclunk, msgTremove:
		r.fid = binary.LittleEndian.Uint32(body)
	}
	return msg, r
}

// mayPass reports whether a request of type typ may go to the server now.
// Call with d.mu held.
func (d *Device) mayPass(typ uint8) bool {
	switch {
	case d.versionBusy, len(d.inflight) >= MaxInFlight:
		return false
	case typ == msgTversion:
		return len(d.inflight) == 0
	case typ == msgTattach:
		return !d.attachBusy
	}
	return true
}

// flush answers a Tflush: at once when oldTag is not in flight (or too
// many flushes wait already), else right after oldTag's answer.
func (d *Device) flush(c *virtio.Chain, tag, oldTag uint16) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.inflight[oldTag]; !ok || d.nflushes >= QueueSize {
		d.answer(c.Head, c.Writable, rflush(tag))
		return
	}
	d.flushes[oldTag] = append(d.flushes[oldTag], d.newRequest(c, tag, msgTflush))
	d.nflushes++
}

// attachUID is the n_uname of a well-formed Tattach body: fid[4] afid[4]
// uname[s] aname[s] n_uname[4].
func attachUID(body []byte) ninep.UID {
	off := 8
	for range 2 {
		off += 2 + int(binary.LittleEndian.Uint16(body[off:]))
	}
	return ninep.UID(binary.LittleEndian.Uint32(body[off:]))
}
