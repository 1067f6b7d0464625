package tail

import "testing"

func TestWriterKeepsTheLastBytes(t *testing.T) {
	w := &Writer{Max: 8}
	for _, s := range []string{"hello ", "capsule ", "world"} {
		if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if got := string(w.Bytes()); got != "le world" {
		t.Fatalf("kept %q, want %q", got, "le world")
	}
}
