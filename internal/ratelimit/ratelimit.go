// Package ratelimit holds the token buckets that bound what a guest can
// make a device do per second: bytes moved and operations performed, as
// Firecracker's rate limiter does for its disks and network interfaces.
//
// A bucket holds up to Size tokens and gains Size tokens every Refill,
// continuously. An operation of n bytes takes n tokens from the bandwidth
// bucket and one from the operations bucket; when a bucket lacks them the
// device goroutine waits (the guest sees latency, never an error), and a
// request larger than a whole bucket waits for a full bucket and then
// takes it all, so it is slowed, never refused.
package ratelimit

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Bucket is a token bucket. The zero Bucket (Size 0) never limits.
type Bucket struct {
	Size   uint64        // tokens the bucket holds when full, and the burst
	Refill time.Duration // time to refill Size tokens (default one second)
}

// Limiter bounds bandwidth (bytes) and operations. A nil *Limiter, or one
// whose buckets have Size 0, never waits.
type Limiter struct {
	bw, ops bucketState
	now     func() time.Time
	sleep   func(d time.Duration, stop <-chan struct{}) bool

	mu sync.Mutex
}

type bucketState struct {
	Bucket
	tokens float64
	last   time.Time
}

// New returns a limiter with the given bandwidth (bytes) and operations
// buckets; either may be the zero Bucket.
func New(bw, ops Bucket) *Limiter {
	l := &Limiter{now: time.Now, sleep: sleepOrStop}
	t := l.now()
	l.bw = newState(bw, t)
	l.ops = newState(ops, t)
	return l
}

// newState is a full bucket: a first burst passes at once.
func newState(b Bucket, now time.Time) bucketState {
	if b.Refill <= 0 {
		b.Refill = time.Second
	}
	return bucketState{Bucket: b, tokens: float64(b.Size), last: now}
}

// Limits reports whether the limiter limits anything.
func (l *Limiter) Limits() bool { return l != nil && (l.bw.Size > 0 || l.ops.Size > 0) }

// Wait takes n bytes and one operation, waiting until the buckets hold
// them. It returns false, without taking anything, if stop closes first.
func (l *Limiter) Wait(n uint64, stop <-chan struct{}) bool {
	if !l.Limits() {
		return true
	}
	for {
		l.mu.Lock()
		now := l.now()
		l.bw.fill(now)
		l.ops.fill(now)
		need := max(l.bw.wait(n), l.ops.wait(1))
		if need == 0 {
			l.bw.take(n)
			l.ops.take(1)
			l.mu.Unlock()
			return true
		}
		l.mu.Unlock()
		if !l.sleep(need, stop) {
			return false
		}
	}
}

// fill adds the tokens earned since the last fill.
func (b *bucketState) fill(now time.Time) {
	if b.Size == 0 {
		return
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(float64(b.Size), b.tokens+float64(b.Size)*float64(d)/float64(b.Refill))
	}
	b.last = now
}

// want is how many tokens an operation of n needs: n, or a full bucket
// when n is larger than the bucket.
func (b *bucketState) want(n uint64) float64 { return float64(min(n, b.Size)) }

// wait is how long until the bucket holds what n needs; 0 if it does.
func (b *bucketState) wait(n uint64) time.Duration {
	if b.Size == 0 || b.tokens >= b.want(n) {
		return 0
	}
	missing := b.want(n) - b.tokens
	return max(time.Duration(missing/float64(b.Size)*float64(b.Refill)), time.Microsecond)
}

func (b *bucketState) take(n uint64) {
	if b.Size > 0 {
		b.tokens -= b.want(n)
	}
}

func sleepOrStop(d time.Duration, stop <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}

// ParseRate parses a rate per second for a flag: a number with an
// optional binary suffix (K, M, G, with or without "iB"), such as 10M,
// 512KiB or 1000. It is the bucket size, refilled every second.
func ParseRate(s string) (uint64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(s, "B"), "i")
	mult := uint64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K', 'k':
			mult, t = 1<<10, t[:n-1]
		case 'M', 'm':
			mult, t = 1<<20, t[:n-1]
		case 'G', 'g':
			mult, t = 1<<30, t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil || v == 0 || v > ^uint64(0)/mult {
		return 0, fmt.Errorf("rate %q: want a positive number per second, such as 1000, 512K or 10M", s)
	}
	return v * mult, nil
}
