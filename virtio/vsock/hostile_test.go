package vsock_test

import (
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/capsule-vm/capsule/virtio"

	"github.com/capsule-vm/capsule/virtio/virtiotest"
	"github.com/capsule-vm/capsule/virtio/vsock"
)

// heap returns the live heap after a collection.
func heap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// flood sends n packets made by mk, a queue's worth at a time, and waits
// until the device has used them all.
func (g *guest) flood(t *testing.T, n int, mk func(i int) vsock.Header) {
	t.Helper()
	buf := make([]byte, vsock.HeaderSize+1)
	for i := 0; i < n; {
		k := min(int(g.Size), n-i)
		used := g.UsedIdx(1)
		for j := range k {
			h := mk(i + j)
			h.Put(buf)
			head := g.txNext % g.Size
			g.txNext++
			addr := txBase + uint64(head)*0x10000
			if err := g.Mem.WriteAt(buf, addr); err != nil {
				t.Fatal(err)
			}
			g.WriteDesc(1, head, virtiotest.Desc{Addr: addr, Len: uint32(len(buf))})
			g.Publish(1, head)
		}
		g.Kick(1)
		if err := g.WaitUsed(1, used+uint16(k)); err != nil {
			t.Fatal(err)
		}
		i += k
	}
}

// streamFrom makes n guest connections (ports from port) to host
// services that write without end, with the given guest credit, and
// returns the total the services have written so far.
func streamFrom(t *testing.T, g *guest, port uint32, n int, credit uint32) func() int64 {
	t.Helper()
	var written atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range uint32(n) {
		ln, err := net.Listen("unix", g.path+"_"+strconv.Itoa(int(port+i)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		g.send(t, vsock.Header{SrcPort: 100 + port + i, DstPort: port + i, Op: vsock.OpRequest, BufAlloc: credit}, "")
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer s.Close()
			chunk := make([]byte, 64<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				s.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
				k, _ := s.Write(chunk)
				written.Add(int64(k))
			}
		})
	}
	t.Cleanup(func() { close(stop); wg.Wait() })
	return written.Load
}

// settle waits until f stops growing (checked every 200 ms, for at most
// 5 s) and returns its last value.
func settle(f func() int64) int64 {
	last := f()
	for range 25 {
		time.Sleep(200 * time.Millisecond)
		now := f()
		if now == last {
			return now
		}
		last = now
	}
	return last
}

func TestGuestThatNeverReads(t *testing.T) {
	t.Run("malformed packets leave a bounded number of resets", func(t *testing.T) {
		g := newGuestRx(t, 0)
		const n = 100000
		before := heap()
		g.flood(t, n, func(i int) vsock.Header {
			h := vsock.Header{SrcCID: guestCID, DstCID: vsock.HostCID, Type: vsock.TypeStream,
				SrcPort: uint32(i), DstPort: 2, Op: 99, Len: 1}
			switch i % 3 {
			case 1:
				h.Op = vsock.OpRW // no such connection
			case 2:
				h.Type = 2 // seqpacket, not offered
			}
			return h
		})
		after := heap()
		st := g.dev.Stats()
		t.Logf("%d malformed packets, no receive buffers: heap %+d KiB; %+v", n, (int64(after)-int64(before))>>10, st)
		if st.PendingResets > vsock.MaxPendingResets || st.DroppedResets < n-vsock.MaxPendingResets {
			t.Errorf("stats %+v: want at most %d resets queued and the rest dropped", st, vsock.MaxPendingResets)
		}
		if int64(after)-int64(before) > 4<<20 {
			t.Errorf("heap grew by %d KiB", (int64(after)-int64(before))>>10)
		}
		// Once the guest reads, it gets the queued resets and no more.
		for i := range uint16(rxBufs) {
			g.WriteDesc(0, i, virtiotest.Desc{Addr: rxBase + uint64(i)*0x2000, Len: rxLen, Flags: virtio.DescFlagWrite})
			g.Publish(0, i)
		}
		g.Kick(0)
		for range vsock.MaxPendingResets {
			if h, _ := g.recv(t); h.Op != vsock.OpRst {
				t.Fatalf("op %d, want RST", h.Op)
			}
		}
		g.none(t)
	})
	t.Run("resets for one port pair are coalesced", func(t *testing.T) {
		g := newGuestRx(t, 0)
		g.flood(t, 1000, func(int) vsock.Header {
			return vsock.Header{SrcCID: guestCID, DstCID: vsock.HostCID, Type: vsock.TypeStream,
				SrcPort: 5, DstPort: 6, Op: vsock.OpRW, Len: 1}
		})
		if st := g.dev.Stats(); st.PendingResets != 1 || st.DroppedResets != 0 {
			t.Errorf("stats %+v: want one reset queued", st)
		}
	})
	t.Run("connections opened and reset leave nothing queued", func(t *testing.T) {
		g := newGuestRx(t, 0)
		ln, err := net.Listen("unix", g.path+"_7050")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				s, err := ln.Accept()
				if err != nil {
					return
				}
				s.Close()
			}
		}()
		before := heap()
		const n = 4000
		g.flood(t, n, func(i int) vsock.Header {
			h := vsock.Header{SrcCID: guestCID, DstCID: vsock.HostCID, Type: vsock.TypeStream,
				SrcPort: uint32(i / 2), DstPort: 7050, Op: vsock.OpRequest, BufAlloc: 4096}
			if i%2 == 1 {
				h.Op = vsock.OpRst
			}
			return h
		})
		var st vsock.Stats
		for range 50 {
			if st = g.dev.Stats(); st.Conns == 0 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		after := heap()
		t.Logf("%d connections opened and reset, no receive buffers: heap %+d KiB; %+v", n/2, (int64(after)-int64(before))>>10, st)
		if st.Conns != 0 || st.Ready != 0 || st.PendingResets > vsock.MaxPendingResets {
			t.Errorf("stats %+v: want no connection left and nothing owed but resets", st)
		}
	})
	t.Run("a 4 GiB credit on 32 streams is held to the device bound", func(t *testing.T) {
		g := newGuestRx(t, 0)
		before := heap()
		written := streamFrom(t, g, 7000, 32, 0xffffffff)
		w := settle(written)
		after := heap()
		st := g.dev.Stats()
		t.Logf("32 streams, 4 GiB credit, no receive buffers: host wrote %d KiB before blocking, heap %+d KiB; %+v",
			w>>10, (int64(after)-int64(before))>>10, st)
		if st.Buffered > vsock.MaxDeviceBuffered || st.Buffered < vsock.MaxDeviceBuffered/2 {
			t.Errorf("buffered %d, want up to MaxDeviceBuffered (%d)", st.Buffered, vsock.MaxDeviceBuffered)
		}
		if w > 64<<20 {
			t.Errorf("host services wrote %d MiB: capsule did not push back", w>>20)
		}
		if int64(after)-int64(before) > 32<<20 {
			t.Errorf("heap grew by %d MiB", (int64(after)-int64(before))>>20)
		}
	})
	t.Run("a 4 GiB credit on one stream is held to the connection bound", func(t *testing.T) {
		g := newGuestRx(t, 0)
		w := settle(streamFrom(t, g, 7100, 1, 0xffffffff))
		if st := g.dev.Stats(); st.Buffered != vsock.MaxConnBuffered {
			t.Errorf("host wrote %d KiB, capsule holds %d: want MaxConnBuffered (%d)", w>>10, st.Buffered, vsock.MaxConnBuffered)
		}
	})
}

func TestStalledConnectionDoesNotStopAnother(t *testing.T) {
	g := newGuest(t)
	// Connection A: a host service streams, the guest gave 4 KiB of
	// credit and never gives more.
	streamFrom(t, g, 7200, 1, 4096)
	// Connection C: a host service streams with a 4 GiB credit, which
	// the guest reads and drops.
	streamFrom(t, g, 7300, 1, 0xffffffff)
	// Connection B: an echo service.
	ln, err := net.Listen("unix", g.path+"_7400")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		io.Copy(s, s)
	}()
	g.send(t, vsock.Header{SrcPort: 1, DstPort: 7400, Op: vsock.OpRequest}, "")
	deadline := time.Now().Add(5 * time.Second)
	responded, echoed, other := false, "", 0
	for echoed != "ping" {
		if time.Now().After(deadline) {
			t.Fatalf("no echo after 5 s (%d packets of other connections)", other)
		}
		h, data := g.recv(t)
		switch {
		case h.SrcPort != 7400:
			other++
		case h.Op == vsock.OpResponse:
			responded = true
			g.send(t, vsock.Header{SrcPort: 1, DstPort: 7400, Op: vsock.OpRW}, "ping")
		case h.Op == vsock.OpRW && responded:
			echoed += data
		default:
			t.Fatalf("echo connection: op %d", h.Op)
		}
	}
	t.Logf("echo after %d packets of other connections", other)
}

func itoa(v uint32) string {
	b := []byte{}
	for {
		b = append([]byte{byte('0' + v%10)}, b...)
		v /= 10
		if v == 0 {
			return string(b)
		}
	}
}

// guestStream is one connection of a guest that sends all the credit it
// is given to a host service that never reads.
type guestStream struct {
	port  uint32 // host port; the guest's is port+100
	limit uint32 // fwd_cnt + buf_alloc last told: how far it may send
	sent  uint32
}

func TestGuestDataHeldToTheDeviceBound(t *testing.T) {
	g := newGuest(t)
	const n = 40 // more than the shared credit can give BufAlloc to
	var mu sync.Mutex
	var held []net.Conn // accepted, never read
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range held {
			s.Close()
		}
	})
	streams := map[uint32]*guestStream{}
	for i := range uint32(n) {
		port := 8000 + i
		ln, err := net.Listen("unix", g.path+"_"+strconv.Itoa(int(port)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			s, err := ln.Accept()
			if err == nil {
				mu.Lock()
				held = append(held, s)
				mu.Unlock()
			}
		}()
		streams[port] = &guestStream{port: port}
		g.send(t, vsock.Header{SrcPort: port + 100, DstPort: port, Op: vsock.OpRequest}, "")
	}
	// The guest obeys its credit: it sends what it may, reads the
	// credit updates, and stops once none comes.
	chunk := strings.Repeat("g", 60000)
	for quiet := 0; quiet < 3; {
		for g.UsedIdx(0) != g.rxSeen {
			h, _ := g.recv(t)
			s := streams[h.SrcPort]
			if s == nil || h.Op == vsock.OpRst {
				t.Fatalf("op %d from port %d: a guest obeying its credit was reset", h.Op, h.SrcPort)
			}
			s.limit = h.FwdCnt + h.BufAlloc
		}
		progress := false
		for _, s := range streams {
			for s.limit-s.sent > 0 {
				k := min(s.limit-s.sent, uint32(len(chunk)))
				g.send(t, vsock.Header{SrcPort: s.port + 100, DstPort: s.port, Op: vsock.OpRW}, chunk[:k])
				s.sent += k
				progress = true
			}
		}
		if progress {
			quiet = 0
			continue
		}
		select {
		case <-g.IRQ.C:
		case <-time.After(100 * time.Millisecond):
			quiet++
		}
	}
	st := g.dev.Stats()
	var total int64
	for _, s := range streams {
		total += int64(s.sent)
	}
	t.Logf("%d connections to services that never read, the guest sent %d KiB within its credit: %+v", n, total>>10, st)
	bound := n*vsock.MinBufAlloc + vsock.MaxDeviceCredit - vsock.MaxConns*vsock.MinBufAlloc
	if st.GuestCredit > bound || st.GuestBuffered > st.GuestCredit {
		t.Errorf("guest data held %d, credit offered %d: want held ≤ offered ≤ %d (≤ MaxDeviceCredit %d)",
			st.GuestBuffered, st.GuestCredit, bound, vsock.MaxDeviceCredit)
	}
	if st.GuestBuffered < bound/4 {
		t.Errorf("guest data held %d: the guest did not fill its credit (want near %d)", st.GuestBuffered, bound)
	}

	t.Run("a connection that obeys its credit still works", func(t *testing.T) {
		ln, err := net.Listen("unix", g.path+"_8500")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			defer s.Close()
			io.Copy(s, s)
		}()
		g.send(t, vsock.Header{SrcPort: 1, DstPort: 8500, Op: vsock.OpRequest}, "")
		msg := strings.Repeat("0123456789abcdef", 2048) // 32 KiB: several times MinBufAlloc
		var limit, sent uint32
		echoed := ""
		deadline := time.Now().Add(10 * time.Second)
		for len(echoed) < len(msg) {
			if time.Now().After(deadline) {
				t.Fatalf("echoed %d of %d bytes after 10 s", len(echoed), len(msg))
			}
			for g.UsedIdx(0) != g.rxSeen {
				h, data := g.recv(t)
				if h.SrcPort != 8500 {
					continue // a late credit update of the others
				}
				switch h.Op {
				case vsock.OpResponse, vsock.OpCreditUpdate, vsock.OpRW:
				default:
					t.Fatalf("echo connection: op %d", h.Op)
				}
				limit = h.FwdCnt + h.BufAlloc
				echoed += data
			}
			if k := min(limit-sent, uint32(len(msg))-sent); k > 0 {
				g.send(t, vsock.Header{SrcPort: 1, DstPort: 8500, Op: vsock.OpRW, FwdCnt: uint32(len(echoed))}, msg[sent:sent+k])
				sent += k
				continue
			}
			select {
			case <-g.IRQ.C:
			case <-time.After(50 * time.Millisecond):
			}
		}
		if echoed != msg {
			t.Fatalf("echo differs")
		}
	})
	t.Run("a connection that overruns its credit is reset", func(t *testing.T) {
		// Past its credit by up to BufAlloc+1 bytes: capsule may have
		// written some since its last credit update, never BufAlloc.
		s := streams[8000]
		for extra := 0; extra <= vsock.BufAlloc; extra += len(chunk) {
			g.send(t, vsock.Header{SrcPort: s.port + 100, DstPort: s.port, Op: vsock.OpRW}, chunk)
			for g.UsedIdx(0) != g.rxSeen {
				if h, _ := g.recv(t); h.Op == vsock.OpRst && h.SrcPort == s.port {
					return
				}
			}
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
			if h, _ := g.recv(t); h.Op == vsock.OpRst && h.SrcPort == s.port {
				return
			}
		}
		t.Fatalf("no RST from port %d after %d bytes past its credit", s.port, vsock.BufAlloc)
	})
}
