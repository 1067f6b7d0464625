package devices

import (
	"testing"
	"time"
)

func TestRTCReportsTheHostTimeInBCD(t *testing.T) {
	now := time.Date(2026, time.December, 2, 21, 7, 59, 0, time.UTC)
	r := NewRTC(func() time.Time { return now })
	get := func(idx byte) byte {
		r.Write(0, []byte{idx | 0x80}) // NMI-mask bit set, as Linux does
		b := []byte{0}
		r.Read(1, b)
		return b[0]
	}
	for _, tc := range []struct {
		name string
		idx  byte
		want byte
	}{
		{"seconds", rtcSeconds, 0x59}, {"minutes", rtcMinutes, 0x07}, {"hours", rtcHours, 0x21},
		{"day", rtcDay, 0x02}, {"month", rtcMonth, 0x12}, {"year", rtcYear, 0x26},
		{"century", rtcCentury, 0x20}, {"weekday (Wednesday)", rtcWeekday, 0x04},
		{"status A: no update in progress", rtcStatusA, 0x26}, {"status D: valid", rtcStatusD, 0x80},
	} {
		if got := get(tc.idx); got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, got, tc.want)
		}
	}
	// Binary mode through status B.
	r.Write(0, []byte{rtcStatusB})
	r.Write(1, []byte{rtc24Hour | rtcBinary})
	if got := get(rtcMinutes); got != 7 {
		t.Errorf("binary minutes = %d", got)
	}
	if got := get(rtcSeconds); got != 59 {
		t.Errorf("binary seconds = %d", got)
	}
	// CMOS RAM keeps what is written; time registers ignore writes.
	r.Write(0, []byte{0x40})
	r.Write(1, []byte{0xab})
	if got := get(0x40); got != 0xab {
		t.Errorf("CMOS byte 0x40 = %#x", got)
	}
	r.Write(0, []byte{rtcSeconds})
	r.Write(1, []byte{0})
	if got := get(rtcSeconds); got != 59 {
		t.Errorf("seconds after a write = %d, want the host's", got)
	}
}

func TestPowerControlPowersOffOnSleepEnable(t *testing.T) {
	off := 0
	d := &PowerControl{OnPowerOff: func() { off++ }}
	ctl := uint64(PM1aControlPort - PMBase)
	d.Write(ctl, []byte{0x00, 0x00})
	d.Write(ctl, []byte{0x00})     // byte writes are not an S5 request
	d.Write(0, []byte{0x00, 0x20}) // the event block is not control
	if off != 0 {
		t.Fatal("powered off without SLP_EN in PM1a control")
	}
	b := []byte{0, 0}
	d.Read(ctl, b)
	if b[0]&pm1SCIEnable == 0 {
		t.Fatal("PM1a control does not report SCI_EN")
	}
	d.Write(ctl, []byte{0x00, 0x20})
	if off != 1 {
		t.Fatal("SLP_EN did not power off")
	}
	d.Write(pm1EnableOffset, []byte{0x21, 0x01}) // GBL_EN, PWRBTN_EN, RTC_EN
	d.Read(pm1EnableOffset, b)
	if b[0] != 0x21 || b[1] != 0x01 {
		t.Fatalf("PM1 enable reads back % x", b)
	}
}
