package rig

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

const testTag = "capsule-rig-0123456789ab"

func feed(c *console, lines ...string) {
	now := time.Unix(1000, 0)
	for _, l := range lines {
		now = now.Add(time.Second)
		c.line(l, now)
	}
}

func TestConsoleQuiet(t *testing.T) {
	var out strings.Builder
	c := newConsole(testTag, &out, false)
	feed(c,
		"[    1.0] some kernel line\r",
		testTag+": up\r",
		"insmod noise",
		testTag+": run\r",
		"=== RUN   TestX\r",
		"\r",
		"--- PASS: TestX (0.00s)",
		"PASS"+testTag+": exit=0\r",
		"[    3.0] reboot: Power down",
	)
	want := "=== RUN   TestX\n\n--- PASS: TestX (0.00s)\nPASS\n"
	if out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	if !c.exited() || c.exitCode != 0 {
		t.Errorf("exit %d (exited %v), want 0", c.exitCode, c.exited())
	}
	if got := c.runAt.Sub(c.upAt); got != 2*time.Second {
		t.Errorf("setup took %v, want 2s", got)
	}
}

func TestConsoleVerbose(t *testing.T) {
	var out strings.Builder
	c := newConsole(testTag, &out, true)
	feed(c, "kernel", testTag+": up", testTag+": run", "test", testTag+": exit=3", "Power down")
	if want := "kernel\ntest\nPower down\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	if c.exitCode != 3 {
		t.Errorf("exit %d, want 3", c.exitCode)
	}
}

func TestConsoleNoExit(t *testing.T) {
	var out strings.Builder
	c := newConsole(testTag, &out, false)
	feed(c, testTag+": up", testTag+": run", "capsule-rig-ffffffffffff: exit=0", "Kernel panic")
	if c.exited() {
		t.Error("exited after another tag's exit line")
	}
	if want := "capsule-rig-ffffffffffff: exit=0\nKernel panic\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
}

func TestConsoleSetupError(t *testing.T) {
	var out strings.Builder
	c := newConsole(testTag, &out, false)
	feed(c, testTag+": up", "insmod: can't insert", testTag+": error: insmod kvm.ko failed")
	if out.Len() != 0 {
		t.Errorf("printed %q during setup", out.String())
	}
	if c.exited() || c.setupErr != "insmod kvm.ko failed" {
		t.Errorf("exited %v, setupErr %q", c.exited(), c.setupErr)
	}
}

func TestConsoleTail(t *testing.T) {
	c := newConsole(testTag, &strings.Builder{}, false)
	for i := range 100 {
		c.line(fmt.Sprintf("line %d\r", i), time.Now())
	}
	if len(c.tail) != tailLines || c.tail[0] != "line 60" || c.tail[tailLines-1] != "line 99" {
		t.Errorf("tail has %d lines, %q ... %q", len(c.tail), c.tail[0], c.tail[len(c.tail)-1])
	}
}

func TestNewTag(t *testing.T) {
	a, err := newTag()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := newTag()
	if a == b || !strings.HasPrefix(a, "capsule-rig-") || shellQuote(a) != a {
		t.Errorf("tags %q, %q", a, b)
	}
}
