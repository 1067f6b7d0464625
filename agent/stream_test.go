package agent

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestStreamHeader(t *testing.T) {
	var b bytes.Buffer
	h := StreamHeader{Version: Version, Kind: Stderr, ID: "exec-1"}
	if err := WriteStreamHeader(&b, h); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadStreamHeader(&b); err != nil || got != h {
		t.Errorf("round trip: %+v, %v", got, err)
	}
	for _, bad := range []string{"", "CPST", "XPST\x00\x01\x01\x01a", "CPST\x00\x01\x03\x01a", "CPST\x00\x01\x01\x00", "CPST\x00\x01\x01\x05ab"} {
		if _, err := ReadStreamHeader(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if err := WriteStreamHeader(&b, StreamHeader{ID: strings.Repeat("x", 256)}); err == nil {
		t.Error("a 256-byte id was written")
	}
}

func TestStreamAnswer(t *testing.T) {
	var b bytes.Buffer
	WriteStreamAnswer(&b, nil)
	WriteStreamAnswer(&b, errors.New(strings.Repeat("\x1bno", 100)))
	if err := ReadStreamAnswer(&b); err != nil {
		t.Errorf("attached: %v", err)
	}
	err := ReadStreamAnswer(&b)
	if err == nil || strings.ContainsRune(err.Error(), 0x1b) {
		t.Errorf("refusal: %q", err)
	}
	if err := ReadStreamAnswer(strings.NewReader("\x01\x05ab")); err == nil {
		t.Error("a short refusal was read")
	}
}

func FuzzReadStreamHeader(f *testing.F) {
	f.Add([]byte("CPST\x00\x01\x01\x01a"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ReadStreamHeader(bytes.NewReader(b))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := WriteStreamHeader(&out, h); err != nil || !bytes.HasPrefix(b, out.Bytes()) {
			t.Errorf("%q read as %+v, written back as %q (%v)", b, h, out.Bytes(), err)
		}
	})
}
