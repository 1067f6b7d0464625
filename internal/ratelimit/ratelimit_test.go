package ratelimit

import (
	"testing"
	"time"
)

// fakeClock is a clock that sleeping advances.
type fakeClock struct {
	t     time.Time
	slept time.Duration
}

func (c *fakeClock) now() time.Time { return c.t }
func (c *fakeClock) sleep(d time.Duration, stop <-chan struct{}) bool {
	select {
	case <-stop:
		return false
	default:
	}
	c.t = c.t.Add(d)
	c.slept += d
	return true
}

func newFake(bw, ops Bucket) (*Limiter, *fakeClock) {
	c := &fakeClock{t: time.Unix(1000, 0)}
	l := New(bw, ops)
	l.now, l.sleep = c.now, c.sleep
	l.bw.last, l.ops.last = c.t, c.t
	return l, c
}

func TestBandwidthHoldsTheRate(t *testing.T) {
	l, c := newFake(Bucket{Size: 1 << 20}, Bucket{})
	// 10 MiB in 64 KiB requests at 1 MiB/s: the first MiB is the burst,
	// the other 9 take 9 s.
	for range 160 {
		if !l.Wait(64<<10, nil) {
			t.Fatal("Wait returned false without a stop")
		}
	}
	if got := c.slept; got < 8900*time.Millisecond || got > 9100*time.Millisecond {
		t.Fatalf("10 MiB at 1 MiB/s with a 1 MiB burst took %v of waiting, want 9 s", got)
	}
}

func TestOperationsHoldTheRate(t *testing.T) {
	l, c := newFake(Bucket{}, Bucket{Size: 100})
	for range 600 {
		l.Wait(4096, nil)
	}
	if got := c.slept; got < 4900*time.Millisecond || got > 5100*time.Millisecond {
		t.Fatalf("600 operations at 100/s with a burst of 100 waited %v, want 5 s", got)
	}
}

func TestRequestLargerThanTheBucketIsSlowedNotRefused(t *testing.T) {
	l, c := newFake(Bucket{Size: 1000}, Bucket{})
	l.Wait(1000, nil) // empties it
	if !l.Wait(1<<30, nil) {
		t.Fatal("a request larger than the bucket was refused")
	}
	if c.slept != time.Second {
		t.Fatalf("waited %v, want one refill (1 s)", c.slept)
	}
}

func TestStopEndsAWait(t *testing.T) {
	l, _ := newFake(Bucket{Size: 10}, Bucket{})
	l.Wait(10, nil)
	stop := make(chan struct{})
	close(stop)
	if l.Wait(10, stop) {
		t.Fatal("Wait went on after stop")
	}
}

func TestNoLimits(t *testing.T) {
	var nilLimiter *Limiter
	if nilLimiter.Limits() || !nilLimiter.Wait(1<<40, nil) {
		t.Fatal("a nil limiter limits")
	}
	if l := New(Bucket{}, Bucket{}); l.Limits() || !l.Wait(1<<40, nil) {
		t.Fatal("zero buckets limit")
	}
}

func TestRealClockIsClose(t *testing.T) {
	l := New(Bucket{Size: 1 << 20, Refill: 100 * time.Millisecond}, Bucket{})
	start := time.Now()
	for range 3 {
		l.Wait(1<<20, nil)
	}
	// Two refills of 100 ms after the initial burst.
	if d := time.Since(start); d < 190*time.Millisecond || d > 2*time.Second {
		t.Fatalf("3 buckets at one per 100 ms took %v", d)
	}
}

func TestParseRate(t *testing.T) {
	for s, want := range map[string]uint64{"1000": 1000, "512K": 512 << 10, "10M": 10 << 20, "10MiB": 10 << 20, "1G": 1 << 30, "2KB": 2 << 10} {
		if got, err := ParseRate(s); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "0", "-1", "x", "10T", "99999999999999999999", "18446744073709551615G"} {
		if _, err := ParseRate(s); err == nil {
			t.Errorf("ParseRate(%q) accepted", s)
		}
	}
}
