package rig

import (
	"fmt"
	"regexp"
	"strings"
)

// results are the top-level tests of a go test binary that ended, from
// its -v output ("--- PASS: TestX (1.2s)"), kept across the attempts of
// one run: when the guest freezes, the next attempt skips what ended
// (-test.skip) instead of running it again, and a test that failed before
// a freeze still fails the run.
type results struct {
	ended  map[string]bool
	order  []string
	failed []string
}

func newResults() *results { return &results{ended: map[string]bool{}} }

// add notes the result a line of test output gives, if any. A nil
// results keeps nothing.
func (r *results) add(line string) {
	if r == nil {
		return
	}
	for _, p := range []string{"--- PASS: ", "--- FAIL: ", "--- SKIP: "} {
		rest, ok := strings.CutPrefix(line, p)
		if !ok {
			continue
		}
		name, _, _ := strings.Cut(rest, " ")
		if name == "" || strings.Contains(name, "/") || r.ended[name] {
			return
		}
		r.ended[name] = true
		r.order = append(r.order, name)
		if p == "--- FAIL: " {
			r.failed = append(r.failed, name)
		}
		return
	}
}

// skipArgs returns args with a -test.skip of the tests that ended, or
// args unchanged when none did or args already skip some.
func (r *results) skipArgs(args []string) []string {
	if r == nil || len(r.order) == 0 {
		return args
	}
	for _, a := range args {
		if strings.HasPrefix(a, "-test.skip") {
			return args
		}
	}
	quoted := make([]string, len(r.order))
	for i, n := range r.order {
		quoted[i] = regexp.QuoteMeta(n)
	}
	return append(append([]string(nil), args...), "-test.skip=^("+strings.Join(quoted, "|")+")$")
}

// skipping says which tests the next attempt skips, for the log line.
func (r *results) skipping() string {
	if r == nil || len(r.order) == 0 {
		return ""
	}
	return fmt.Sprintf(", skipping the %d tests that ended", len(r.order))
}
