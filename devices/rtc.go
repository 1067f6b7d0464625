package devices

import (
	"sync"
	"time"
)

// The CMOS real-time clock: an index port and a data port.
const (
	RTCPort  = 0x70 // index (bit 7 masks NMIs and is ignored)
	RTCPorts = 2

	rtcSeconds  = 0x00
	rtcMinutes  = 0x02
	rtcHours    = 0x04
	rtcWeekday  = 0x06
	rtcDay      = 0x07
	rtcMonth    = 0x08
	rtcYear     = 0x09
	rtcStatusA  = 0x0a
	rtcStatusB  = 0x0b
	rtcStatusC  = 0x0c
	rtcStatusD  = 0x0d
	rtcCentury  = 0x32
	rtcBinary   = 0x04 // status B: data mode binary (else BCD)
	rtc24Hour   = 0x02 // status B: 24-hour mode
	rtcValidRAM = 0x80 // status D: the clock has power
)

// RTC is a minimal MC146818 CMOS clock reporting the host's time (UTC). A
// guest kernel reads the wall clock from it at boot; without one, Linux
// waits seconds probing before it gives up. Writes to the time registers
// are ignored; the other CMOS bytes are plain storage.
type RTC struct {
	mu    sync.Mutex
	index byte
	cmos  [128]byte
	now   func() time.Time
}

// NewRTC returns a clock that reads now (time.Now when nil).
func NewRTC(now func() time.Time) *RTC {
	if now == nil {
		now = time.Now
	}
	r := &RTC{now: now}
	r.cmos[rtcStatusA] = 0x26 // 32.768 kHz time base, 1024 Hz rate, no update in progress
	r.cmos[rtcStatusB] = rtc24Hour
	r.cmos[rtcStatusD] = rtcValidRAM
	return r
}

func (r *RTC) Read(offset uint64, data []byte) {
	clear(data)
	if len(data) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if offset == 0 {
		data[0] = r.index
		return
	}
	data[0] = r.read(r.index)
}

func (r *RTC) Write(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if offset == 0 {
		r.index = data[0] & 0x7f
		return
	}
	switch r.index {
	case rtcSeconds, rtcMinutes, rtcHours, rtcWeekday, rtcDay, rtcMonth, rtcYear, rtcCentury,
		rtcStatusA, rtcStatusC, rtcStatusD:
		// The time follows the host; status A, C, D are read-only here.
	default:
		r.cmos[r.index] = data[0]
	}
}

func (r *RTC) read(index byte) byte {
	t := r.now().UTC()
	enc := func(v int) byte {
		if r.cmos[rtcStatusB]&rtcBinary != 0 {
			return byte(v)
		}
		return byte(v/10<<4 | v%10)
	}
	switch index {
	case rtcSeconds:
		return enc(t.Second())
	case rtcMinutes:
		return enc(t.Minute())
	case rtcHours:
		if r.cmos[rtcStatusB]&rtc24Hour != 0 {
			return enc(t.Hour())
		}
		h := t.Hour() % 12
		if h == 0 {
			h = 12
		}
		b := enc(h)
		if t.Hour() >= 12 {
			b |= 0x80
		}
		return b
	case rtcWeekday:
		return enc(int(t.Weekday()) + 1)
	case rtcDay:
		return enc(t.Day())
	case rtcMonth:
		return enc(int(t.Month()))
	case rtcYear:
		return enc(t.Year() % 100)
	case rtcCentury:
		return enc(t.Year() / 100)
	case rtcStatusC:
		return 0 // no interrupt flags: the clock raises none
	}
	return r.cmos[index]
}
