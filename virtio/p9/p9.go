// Package p9 is capsule's virtio-9p device: a file system the guest mounts
// with
//
//	mount -t 9p -o trans=virtio,version=9p2000.L TAG /mnt
//
// The device carries 9P2000.L messages between its one request queue and a
// github.com/hugelgupf/p9 server, which serves a [Backend] (package hostfs
// serves a host directory). Each descriptor chain holds one T-message in
// its device-readable part, which may span descriptors (Linux puts the data
// of a large Twrite in descriptors of its own), and room for the R-message
// in its device-writable part (Linux puts the data of a large Rread in the
// user's pages, after an 11-byte header buffer).
//
// # Hostile requests
//
// The device checks every T-message before the server sees it and answers
// the ones it refuses itself, with an Rlerror in the chain when the chain
// has room for one (11 bytes) and a used length of 0 otherwise, so every
// chain completes and none waits on another:
//
//   - a chain with fewer than 7 readable bytes, a size field below 7 or
//     beyond the chain's readable bytes: EINVAL (used length 0 when the
//     header cannot be read);
//   - a message larger than the negotiated msize: EMSGSIZE;
//   - a body shorter than its type's fields (the server would answer such
//     a message without its tag, and no chain could be matched to it):
//     EINVAL;
//   - a tag that a request in flight already uses: EINVAL;
//   - a type the device does not pass on: EOPNOTSUPP. It passes the
//     9P2000.L requests Linux's v9fs makes, except the extended-attribute
//     ones: Txattrwalk and Txattrcreate get EOPNOTSUPP (the guest sees
//     ENOTSUP), which also keeps the server's buffering of attribute
//     values, as large as a guest asks, out of reach.
//
// Tflush is the device's own: it is answered at once when the tag it names
// is not in flight, and otherwise right after that request's answer, so a
// flush never waits on another flush, or on itself. Tgetlock is answered
// "unlocked" (no host locks are taken; see hostfs). Tversion asks the
// server for at most MaxMessageSize, and for plain 9P2000.L when the guest
// asks for a dialect of it. An R-message larger than its chain's
// device-writable part is replaced by an Rlerror ENOBUFS (a Tread or
// Treaddir count is first cut to fit the chain). The first refused request
// of an activation is reported (virtio.Activation.Report).
//
// # Bounds
//
// At most MaxInFlight requests are with the server at once; the device
// takes no further chain from the queue until one completes, so a guest
// that fills the queue holds at most MaxInFlight messages of at most
// MaxMessageSize in capsule (and the server a read buffer of that size for
// each). Tflush chains waiting for their request are at most QueueSize.
// Tversion waits until nothing is in flight and nothing else goes to the
// server until it is answered; Tattach messages go one at a time, so the
// backend learns the uid each one names.
//
// # Reset
//
// The device keeps one server session for its whole life and tracks the
// fids the guest holds (those Tattach and Twalk created, less those Tclunk
// and Tremove ended). A reset waits for the requests in flight to finish
// (their answers are dropped) and then clunks every fid the guest held, which
// closes the backend's files: the next activation starts with no fid, and
// with the msize the server has (the guest negotiates again with Tversion).
// Ending the session itself waits for Close: the p9 package's server may
// start a receiving goroutine that runs only after the session ended (a
// WaitGroup misuse the race detector reports), which the device avoids on
// every reset by never ending the session there.
package p9

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"

	ninep "github.com/hugelgupf/p9/p9"

	"github.com/capsule-vm/capsule/virtio"
)

const (
	// QueueSize is the size of the device's one request queue.
	QueueSize = 128
	// MaxTagLen is the longest mount tag (the guest's limit is the
	// configuration space; 36 bytes is QEMU's and the usual limit).
	MaxTagLen = 36
	// MaxMessageSize is the largest msize the device agrees to; Linux's
	// virtio transport uses at most 500 KiB.
	MaxMessageSize = 512 << 10
	// MinMessageSize is the smallest msize a Tversion may ask for (Linux
	// never asks for less than 4096).
	MinMessageSize = 4096
	// MaxInFlight bounds the requests with the server at once.
	MaxInFlight = 16
	// MaxFailedUnlinks bounds the refused Tunlinkat the server sees (see
	// Device.failedUnlinks): at most a few tens of MiB of its path tree.
	MaxFailedUnlinks = 1 << 16
	// FeatureMountTag is VIRTIO_9P_MOUNT_TAG: the configuration space
	// holds the tag.
	FeatureMountTag = 1 << 0
)

// Backend is the file system a device serves.
type Backend interface {
	// Attach returns the root of the file system for a Tattach by user
	// uid (ninep.NoUID when the guest named none): files created through
	// it and the fids walked from it are created on that user's behalf.
	Attach(uid ninep.UID) (ninep.File, error)
}

// Device is a virtio-9p device.
type Device struct {
	tag string
	fs  Backend

	mu   sync.Mutex
	cond sync.Cond // on mu: a request completed, or the device stops

	// The server session, started by the first activation: its input,
	// and done, closed when it ended (it ends only on Close, unless it
	// fails).
	pw    *io.PipeWriter
	done  chan struct{}
	srvWG sync.WaitGroup

	// Between Activate and Reset:
	a        virtio.Activation
	active   bool
	stopped  bool           // Reset began: answers are dropped
	feedWG   sync.WaitGroup // the feeder
	inflight map[uint16]*request
	flushes  map[uint16][]*request // Tflush chains by the tag they wait for
	nflushes int
	free     []*request
	// versionBusy: a Tversion is with the server; attachBusy: a Tattach
	// is, for user attachUID.
	versionBusy bool
	attachBusy  bool
	// failedUnlinks counts the Tunlinkat the server refused: the p9
	// library keeps a node of its path tree for each name, even when the
	// unlink fails, for the device's life. Linux looks a name up before
	// it unlinks it, so only a hostile driver makes many; past
	// MaxFailedUnlinks the device refuses Tunlinkat itself (EPERM).
	failedUnlinks int
	attachUID     ninep.UID
	reported      bool

	// Of the session: the negotiated msize (MaxMessageSize until
	// Tversion), and the fids the guest holds.
	msize uint32
	fids  map[uint32]struct{}
}

// failedUnlinkLimit is MaxFailedUnlinks; tests lower it.
var failedUnlinkLimit = MaxFailedUnlinks

// request is a chain the device owes the driver an answer on, or (when
// internal) a message of the device's own, whose answer nobody reads.
type request struct {
	head     uint16
	tag      uint16
	typ      uint8
	internal bool
	fid      uint32 // Tattach, Twalk, Tclunk, Tremove: the fid named
	newFid   uint32 // Twalk
	writable []virtio.Buffer
	room     uint64 // bytes in writable
}

// New returns a device serving fs under tag, which must be 1 to MaxTagLen
// bytes.
func New(tag string, fs Backend) (*Device, error) {
	if err := ValidateTag(tag); err != nil {
		return nil, err
	}
	d := &Device{tag: tag, fs: fs, msize: MaxMessageSize,
		inflight: map[uint16]*request{}, flushes: map[uint16][]*request{}, fids: map[uint32]struct{}{}}
	d.cond.L = &d.mu
	return d, nil
}

// ValidateTag checks a mount tag: 1 to MaxTagLen bytes, no NUL.
func ValidateTag(tag string) error {
	switch {
	case tag == "":
		return errors.New("9p mount tag is empty")
	case len(tag) > MaxTagLen:
		return fmt.Errorf("9p mount tag %q is %d bytes, more than %d", tag, len(tag), MaxTagLen)
	}
	for _, c := range []byte(tag) {
		if c == 0 {
			return fmt.Errorf("9p mount tag %q holds a NUL byte", tag)
		}
	}
	return nil
}

// Tag is the device's mount tag.
func (d *Device) Tag() string { return d.tag }

// Type implements virtio.Device.
func (d *Device) Type() virtio.Type { return virtio.TypeP9 }

// Features implements virtio.Device.
func (d *Device) Features() uint64 { return FeatureMountTag }

// QueueMaxSizes implements virtio.Device.
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize} }

// ReadConfig implements virtio.Device: tag_len (le16) at 0, the tag's
// bytes at 2.
func (d *Device) ReadConfig(off uint64, p []byte) {
	cfg := make([]byte, 2+len(d.tag))
	binary.LittleEndian.PutUint16(cfg, uint16(len(d.tag)))
	copy(cfg[2:], d.tag)
	virtio.ReadConfigFrom(cfg, off, p)
}

// WriteConfig implements virtio.Device; the configuration is read-only.
func (d *Device) WriteConfig(uint64, []byte) {}

// errEnded is the error of a device whose server session ended.
var errEnded = errors.New("9p server session ended")

// Activate implements virtio.Device: it starts the goroutine that feeds
// the queue's requests to the server (and the server, the first time).
func (d *Device) Activate(a virtio.Activation) error {
	if !a.Queues[0].Ready {
		return errors.New("request queue not enabled")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pw == nil {
		pr, pw := io.Pipe()
		d.pw, d.done = pw, make(chan struct{})
		srv := ninep.NewServer(attacher{d})
		out := &replyWriter{d: d}
		done := d.done
		d.srvWG.Go(func() {
			srv.Handle(pr, out)
			d.mu.Lock()
			close(done)
			d.cond.Broadcast()
			d.mu.Unlock()
		})
	}
	if d.ended() {
		return errEnded
	}
	d.a, d.active, d.stopped = a, true, false
	d.versionBusy, d.attachBusy, d.reported = false, false, false
	pw := d.pw
	d.feedWG.Go(func() { d.feed(a, pw) })
	return nil
}

// ended reports whether the server session ended. Call with d.mu held.
func (d *Device) ended() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// Reset implements virtio.Device: the feeder stops, the requests in
// flight finish (their answers are dropped), and every fid the guest held
// is clunked before Reset returns.
func (d *Device) Reset() {
	d.mu.Lock()
	if !d.active {
		d.mu.Unlock()
		return
	}
	d.stopped = true
	d.cond.Broadcast()
	d.mu.Unlock()
	d.feedWG.Wait()

	d.mu.Lock()
	d.drain()
	fids := slices.Sorted(maps.Keys(d.fids))
	for i, fid := range fids {
		tag := uint16(i)
		for !d.ended() && (len(d.inflight) >= MaxInFlight || d.inflight[tag] != nil) {
			d.cond.Wait()
		}
		if d.ended() {
			break
		}
		d.inflight[tag] = &request{tag: tag, typ: msgTclunk, internal: true, fid: fid}
		pw := d.pw
		d.mu.Unlock()
		_, err := pw.Write(tclunk(tag, fid))
		d.mu.Lock()
		if err != nil {
			break
		}
	}
	d.drain()
	clear(d.inflight)
	clear(d.flushes)
	clear(d.fids)
	d.nflushes = 0
	d.a, d.active = virtio.Activation{}, false
	d.mu.Unlock()
}

// drain waits until no request is in flight, or the session ended. Call
// with d.mu held.
func (d *Device) drain() {
	for len(d.inflight) > 0 && !d.ended() {
		d.cond.Wait()
	}
}

// Close ends the server session and closes the backend when it is an
// io.Closer. Reset the device (close its transport) first.
func (d *Device) Close() error {
	d.mu.Lock()
	pw := d.pw
	d.mu.Unlock()
	if pw != nil {
		pw.Close()
		d.srvWG.Wait()
	}
	if c, ok := d.fs.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// attacher is the server's view of the backend: each Tattach attaches as
// the user it names (Tattach messages reach the server one at a time).
type attacher struct{ d *Device }

func (at attacher) Attach() (ninep.File, error) {
	at.d.mu.Lock()
	uid := at.d.attachUID
	at.d.mu.Unlock()
	return at.d.fs.Attach(uid)
}

// report tells the user of the first refused request of an activation.
// Call with d.mu held.
func (d *Device) report(err error) {
	if d.reported || d.a.Report == nil {
		return
	}
	d.reported = true
	d.a.Report(fmt.Errorf("%w (later refused requests are not reported)", err))
}

// push returns a chain to the driver with n bytes written and interrupts
// it. Call with d.mu held, while the device is not stopped.
func (d *Device) push(head uint16, n uint32) {
	q := d.a.Queues[0]
	if err := q.Push(d.a.Mem, head, n); err != nil {
		d.a.Fail(fmt.Errorf("queue 0: %w", err))
		return
	}
	d.a.Interrupt(q)
}

// answer writes msg into writable (when it fits) and completes the chain.
// Call with d.mu held.
func (d *Device) answer(head uint16, writable []virtio.Buffer, msg []byte) {
	if d.stopped {
		return
	}
	n := uint32(0)
	if virtio.Len(writable) >= uint64(len(msg)) {
		if k, err := virtio.Scatter(d.a.Mem, writable, msg); err == nil && k == len(msg) {
			n = uint32(k)
		}
	}
	d.push(head, n)
}

// complete finishes request r, answered with an R-message of type rtyp
// whose n bytes are in its chain: it notes the fids made or ended,
// completes the chain, answers the flushes that waited for it and frees a
// slot.
func (d *Device) complete(r *request, rtyp uint8, n uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.inflight[r.tag] == r {
		delete(d.inflight, r.tag)
	}
	switch r.typ {
	case msgTversion:
		d.versionBusy = false
	case msgTattach:
		d.attachBusy = false
		if rtyp == msgRattach {
			d.fids[r.fid] = struct{}{}
		}
	case msgTwalk:
		if rtyp == msgRwalk {
			d.fids[r.newFid] = struct{}{}
		}
	case msgTclunk, msgTremove:
		delete(d.fids, r.fid) // ended even when the answer is an error
	case msgTunlinkat:
		if rtyp == msgRlerror {
			d.failedUnlinks++
		}
	}
	if !d.stopped && !r.internal {
		d.push(r.head, n)
		for _, f := range d.flushes[r.tag] {
			d.answer(f.head, f.writable, rflush(f.tag))
			d.recycle(f)
		}
	}
	d.nflushes -= len(d.flushes[r.tag])
	delete(d.flushes, r.tag)
	if !r.internal {
		d.recycle(r)
	}
	d.cond.Broadcast()
}

// newRequest takes a request from the free list. Call with d.mu held.
func (d *Device) newRequest(c *virtio.Chain, tag uint16, typ uint8) *request {
	var r *request
	if n := len(d.free); n > 0 {
		r, d.free = d.free[n-1], d.free[:n-1]
	} else {
		r = &request{}
	}
	r.head, r.tag, r.typ, r.internal = c.Head, tag, typ, false
	r.writable = append(r.writable[:0], c.Writable...)
	r.room = virtio.Len(c.Writable)
	return r
}

// recycle returns r to the free list, which holds at most MaxInFlight.
// Call with d.mu held.
func (d *Device) recycle(r *request) {
	if len(d.free) < MaxInFlight {
		d.free = append(d.free, r)
	}
}
