package vmm

import (
	"bytes"
	"strings"
	"testing"
)

func TestDeviceLogIsRateLimited(t *testing.T) {
	var out bytes.Buffer
	l := &deviceLog{out: &out, prefix: "capsule: disk d at 0xd0000000: "}
	for range 25 {
		l.printf("bad chain %d", 7)
	}
	if n := strings.Count(out.String(), "bad chain 7\n"); n != logLinesPerSecond {
		t.Fatalf("%d lines printed in a burst of 25, want %d:\n%s", n, logLinesPerSecond, out.String())
	}
	l.flush()
	if !strings.HasSuffix(out.String(), "capsule: disk d at 0xd0000000: 15 more messages suppressed\n") {
		t.Fatalf("no count of the suppressed lines:\n%s", out.String())
	}
	out.Reset()
	l.flush()
	if out.Len() != 0 {
		t.Fatalf("the suppressed count was reported twice: %q", out.String())
	}
}
