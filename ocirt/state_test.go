package ocirt

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestCheckID(t *testing.T) {
	for _, id := range []string{"a", "abc-1.2_3+x", strings.Repeat("f", 64)} {
		if err := CheckID(id); err != nil {
			t.Errorf("%q: %v", id, err)
		}
	}
	for _, id := range []string{"", ".", "..", "a/b", "../x", "a b", "é"} {
		if err := CheckID(id); err == nil {
			t.Errorf("%q accepted", id)
		}
	}
}

func TestStateDirectory(t *testing.T) {
	root := t.TempDir()
	c, err := Open(root, "box")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.State(); !errors.Is(err, ErrNotExist) {
		t.Fatalf("state of nothing: %v", err)
	}
	if err := c.Make(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(c.Dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state directory: %v %v", fi, err)
	}
	if err := c.Make(); !errors.Is(err, ErrExist) {
		t.Fatalf("second Make: %v, want ErrExist", err)
	}
	st := State{OCIVersion: specs.Version, ID: "box", Pid: 42, MonitorPid: 42, Status: specs.StateCreated,
		Bundle: "/b", Rootfs: "/b/rootfs", Created: time.Date(2026, 12, 7, 1, 2, 3, 4, time.UTC), ExitStatus: -1}
	if err := c.Write(st); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Read(); err != nil || !reflect.DeepEqual(got, st) {
		t.Fatalf("read back %+v, %v", got, err)
	}

	// No monitor holds the lock: stopped, pid 0.
	if got, _ := c.State(); got.Status != specs.StateStopped || got.Pid != 0 {
		t.Fatalf("without a monitor: %+v", got)
	}
	// With it held: as written. WaitMonitor returns once it is let go.
	lock, err := c.Lock()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := c.State(); got.Status != specs.StateCreated || got.Pid != 42 {
		t.Fatalf("with the monitor's lock held: %+v", got)
	}
	if _, err := c.Lock(); err == nil {
		t.Fatal("a second monitor took the lock")
	}
	waited := make(chan error)
	go func() { waited <- c.WaitMonitor() }()
	select {
	case err := <-waited:
		t.Fatalf("WaitMonitor returned (%v) while the lock is held", err)
	case <-time.After(50 * time.Millisecond):
	}
	lock.Close()
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	if got, _ := c.State(); got.Status != specs.StateStopped {
		t.Fatalf("after the monitor: %+v", got)
	}
	if err := c.Call(Request{Op: OpKill, Signal: 15}); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("a call with no monitor: %v, want ErrNotRunning", err)
	}
	if err := c.Remove(); err != nil || c.Exists() {
		t.Fatalf("remove: %v", err)
	}
}

func TestPublicStateIsRuncs(t *testing.T) {
	st := State{OCIVersion: "1.2.1", ID: "x", Pid: 7, MonitorPid: 7, Status: specs.StateRunning, Bundle: "/b", Rootfs: "/b/r",
		Created: time.Unix(0, 0).UTC(), Annotations: map[string]string{"k": "v"}, ExitStatus: -1}
	b, err := json.Marshal(st.Public())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"annotations", "bundle", "created", "id", "ociVersion", "owner", "pid", "rootfs", "status"}; !slices.Equal(keys, want) {
		t.Fatalf("keys %q, want %q", keys, want)
	}
	if m["status"] != "running" || m["pid"] != 7.0 || m["created"] != "1970-01-01T00:00:00Z" {
		t.Fatalf("state %s", b)
	}
}

func TestLogFormats(t *testing.T) {
	var buf bytes.Buffer
	l := NewLogger(&buf, true, false)
	l.now = func() time.Time { return time.Date(2026, 12, 7, 1, 2, 3, 0, time.UTC) }
	l.Errorf("container %s: %s", "x", `say "hi"`)
	l.Debugf("not without debug")
	if got, want := buf.String(), `{"level":"error","msg":"container x: say \"hi\"","time":"2026-12-07T01:02:03Z"}`+"\n"; got != want {
		t.Fatalf("json log %q, want %q", got, want)
	}
	buf.Reset()
	l = NewLogger(&buf, false, true)
	l.now = func() time.Time { return time.Date(2026, 12, 7, 1, 2, 3, 0, time.UTC) }
	l.Debugf("a b")
	if got, want := buf.String(), `time="2026-12-07T01:02:03Z" level=debug msg="a b"`+"\n"; got != want {
		t.Fatalf("text log %q, want %q", got, want)
	}
	var nilLog *Logger
	nilLog.Errorf("nothing") // no panic
}
