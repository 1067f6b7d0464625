package rig

import (
	"os/exec"
	"strings"
	"testing"
)

var quoteCases = []struct{ in, want string }{
	{"", "''"},
	{"abc", "abc"},
	{"-test.v", "-test.v"},
	{"/tmp/go-build1/b001/kvm.test", "/tmp/go-build1/b001/kvm.test"},
	{"-test.run=TestX", "'-test.run=TestX'"},
	{"a b", "'a b'"},
	{"it's", `'it'\''s'`},
	{"'", `''\'''`},
	{"$(rm -rf /)", "'$(rm -rf /)'"},
	{"`x` \"y\" \\z", "'`x` \"y\" \\z'"},
	{"line\nbreak", "'line\nbreak'"},
	{"~root", "'~root'"},
	{"*?[", "'*?['"},
}

func TestShellQuote(t *testing.T) {
	for _, c := range quoteCases {
		if got := shellQuote(c.in); got != c.want {
			t.Errorf("shellQuote(%q) = %s, want %s", c.in, got, c.want)
		}
	}
}

// TestShellQuoteRoundTrip has real shells split the quoted words back.
func TestShellQuoteRoundTrip(t *testing.T) {
	var words []string
	for _, c := range quoteCases {
		words = append(words, c.in)
	}
	words = append(words, "tab\there", "semi;colon&amp|pipe", "ünïcödé", "#hash", "a=b", "\\")
	script := "set -- " + shellJoin(words) + `; for a; do printf '%s\0' "$a"; done`
	shells := [][]string{{"/bin/sh"}}
	if bb, err := staticBusybox(); err == nil {
		shells = append(shells, []string{bb, "sh"})
	}
	for _, sh := range shells {
		args := append(sh[1:], "-c", script)
		out, err := exec.Command(sh[0], args...).Output()
		if err != nil {
			t.Fatalf("%v: %v", sh, err)
		}
		got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
		if strings.Join(got, "|") != strings.Join(words, "|") || len(got) != len(words) {
			t.Errorf("%v split %q\nwant %q", sh, got, words)
		}
	}
}
