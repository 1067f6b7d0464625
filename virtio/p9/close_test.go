//go:build !race

package p9_test

import "testing"

// TestCloseEndsTheSession closes a device after its transport: the server
// session ends and the backend is closed. Not under the race detector:
// the p9 package's server reports a race of its own when a session ends
// (see the package documentation).
func TestCloseEndsTheSession(t *testing.T) {
	r := newRig(t, false, nil)
	r.attach()
	expect(t, "walk", r.call(twalk(2, 1, 2, "hello.txt"), 4096), rWalk, 2, 0)
	r.M.Close()
	if n := r.fs.OpenFDs(); n != 0 {
		t.Errorf("%d descriptors open after the transport closed", n)
	}
	if err := r.dev.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.fs.Attach(0); err == nil {
		t.Error("the backend still attaches after Close")
	}
}
