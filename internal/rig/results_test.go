package rig

import (
	"reflect"
	"testing"
)

func TestResultsSkipWhatEnded(t *testing.T) {
	r := newResults()
	for _, l := range []string{
		"=== RUN   TestA",
		"--- PASS: TestA (1.00s)",
		"    --- PASS: TestA/sub (0.50s)",
		"--- FAIL: TestB.x (0.20s)",
		"--- SKIP: TestC (0.00s)",
		"--- PASS: TestA (1.00s)", // again: kept once
		"PASS",
	} {
		r.add(l)
	}
	got := r.skipArgs([]string{"-test.v=true", "-test.run=^Test"})
	want := []string{"-test.v=true", "-test.run=^Test", `-test.skip=^(TestA|TestB\.x|TestC)$`}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("skipArgs = %q, want %q", got, want)
	}
	if !reflect.DeepEqual(r.failed, []string{"TestB.x"}) {
		t.Fatalf("failed = %q", r.failed)
	}
	// A run that already skips tests is left alone, and so is one with
	// nothing ended yet.
	if got := r.skipArgs([]string{"-test.skip=X"}); len(got) != 1 {
		t.Fatalf("skipArgs with a -test.skip: %q", got)
	}
	if got := newResults().skipArgs([]string{"-test.v=true"}); len(got) != 1 {
		t.Fatalf("skipArgs with nothing ended: %q", got)
	}
	var none *results
	none.add("--- PASS: TestA (0.00s)")
	if got := none.skipArgs([]string{"a"}); len(got) != 1 {
		t.Fatal("a nil results changed the arguments")
	}
	if !isVerboseTest([]string{"-test.paniconexit0", "-test.v=true"}) || isVerboseTest([]string{"-test.run=x"}) {
		t.Fatal("isVerboseTest")
	}
}
