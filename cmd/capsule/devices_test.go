package main

import (
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/capsule-vm/capsule/vmm"
)

func TestDeviceFlagsKeepCommandLineOrder(t *testing.T) {
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	var d deviceFlags
	d.add(fs)
	if err := fs.Parse([]string{"--net", "user", "--disk", "a.img,ro", "--rng", "--vsock", "3,/tmp/v.sock", "--disk", "b.img"}); err != nil {
		t.Fatal(err)
	}
	got, err := d.Devices()
	if err != nil {
		t.Fatal(err)
	}
	want := []vmm.Device{
		vmm.Net{User: true},
		vmm.Disk{Path: "a.img", ReadOnly: true},
		vmm.RNG{},
		vmm.Vsock{CID: 3, Path: "/tmp/v.sock"},
		vmm.Disk{Path: "b.img"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("devices %v, want %v", got, want)
	}
}

func TestBooleanDeviceFlagLastValueWins(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
		err  string
	}{
		{[]string{"--rng"}, 1, ""},
		{[]string{"--rng", "--rng"}, 1, ""},
		{[]string{"--rng", "--rng=false"}, 0, ""},
		{[]string{"--rng=false", "--rng"}, 1, ""},
		{[]string{"--rng=maybe"}, 0, "want true or false"},
	} {
		fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var d deviceFlags
		d.add(fs)
		err := fs.Parse(tc.args)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: error %v, want %q", tc.args, err, tc.err)
			}
			continue
		}
		got, err := d.Devices()
		if err != nil || len(got) != tc.want {
			t.Errorf("%v: %d devices (%v), want %d", tc.args, len(got), err, tc.want)
		}
	}
}

func TestHelpOfHelp(t *testing.T) {
	for _, args := range [][]string{{"help", "--help"}, {"help", "-h"}, {"help", "help"}} {
		status, stdout, stderr := runMain(args...)
		if status != 0 || !strings.Contains(stdout, "Commands:") || stderr != "" {
			t.Errorf("capsule %v: status %d, stdout %q, stderr %q; want the command list on stdout and 0", args, status, stdout, stderr)
		}
	}
}

func TestParseNetUserPolicy(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want vmm.Net
		err  string
	}{
		{in: "user", want: vmm.Net{User: true}},
		{in: "user,hostloopback=on", want: vmm.Net{User: true, HostLoopback: true}},
		{in: "user,hostloopback=on,hostloopback=off", want: vmm.Net{User: true}},
		{in: "user,restrict=on", want: vmm.Net{User: true, Restrict: true}},
		{in: "user,restrict=yes,allow=192.168.1.7/24,allow=203.0.113.9", want: vmm.Net{User: true, Restrict: true,
			Allow: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24"), netip.MustParsePrefix("203.0.113.9/32")}}},
		{in: "user,hostloopback=maybe", err: "want on or off"},
		{in: "user,allow=192.168.1.0/33", err: "want an address range"},
		{in: "user,allow=10.0.2.0/24", err: "the user network's own"},
		{in: "user,allow=10.0.2.3", err: "the user network's own"},
		{in: "tap:tap0,allow=1.2.3.0/24", err: `unknown option "allow"`},
		{in: "tap:tap0,hostloopback=on", err: `unknown option "hostloopback"`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseNet(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parseNet(%q) = %v, %v; want an error with %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("parseNet(%q) = %#v, %v; want %#v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestRateOptions(t *testing.T) {
	d, err := parseDisk("a.img,ro,bw=10M,iops=500")
	if err != nil || d != (vmm.Disk{Path: "a.img", ReadOnly: true, Rate: vmm.RateLimit{Bandwidth: 10 << 20, Ops: 500}}) {
		t.Errorf("disk rate: %+v, %v", d, err)
	}
	n, err := parseNet("user,bw=1M,pps=100")
	if err != nil || n.(vmm.Net).Rate != (vmm.RateLimit{Bandwidth: 1 << 20, Ops: 100}) {
		t.Errorf("net rate: %+v, %v", n, err)
	}
	for _, bad := range []string{"a.img,bw=0", "a.img,iops=fast", "a.img,bw="} {
		if _, err := parseDisk(bad); err == nil || !strings.Contains(err.Error(), "want a positive number") {
			t.Errorf("--disk %s: %v", bad, err)
		}
	}
}

// blockingWriter never returns from Write until released.
type blockingWriter struct{ release chan struct{} }

func (b blockingWriter) Write(p []byte) (int, error) { <-b.release; return len(p), nil }

func TestTimedWriterGivesUpOnAStalledReader(t *testing.T) {
	b := blockingWriter{make(chan struct{})}
	defer close(b.release)
	w := newTimedWriter(b, 20*time.Millisecond)
	start := time.Now()
	for range 3 {
		if n, err := w.Write([]byte("line\n")); n != 5 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	// The first write waits its limit; the ones after see the stall.
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("three writes to a stalled reader took %v", d)
	}
	if !w.stuck {
		t.Fatal("the writer did not notice the stall")
	}
}

func TestParseShare(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want vmm.Share
		err  string
	}{
		{in: "/srv/data:data", want: vmm.Share{HostDir: "/srv/data", Tag: "data"}},
		{in: "/srv/data:data,ro", want: vmm.Share{HostDir: "/srv/data", Tag: "data", ReadOnly: true}},
		{in: "/srv/a:b:tag,ro,rw", want: vmm.Share{HostDir: "/srv/a:b", Tag: "tag"}},
		{in: "rel/dir:t", want: vmm.Share{HostDir: "rel/dir", Tag: "t"}},
		{in: "/srv/data", err: "want HOSTDIR:TAG"},
		{in: ":tag", err: "want HOSTDIR:TAG"},
		{in: "/srv/data:", err: "tag is empty"},
		{in: "/srv/data:,ro", err: "tag is empty"},
		{in: "/srv/data:" + strings.Repeat("x", 37), err: "more than 36"},
		{in: "/srv/data:t,rx", err: `unknown option "rx"`},
	} {
		got, err := parseShare(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestShareFlagsInOrder(t *testing.T) {
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	var d deviceFlags
	d.add(fs)
	if err := fs.Parse([]string{"--share", "/a:one", "--rng", "--share", "/b:two,ro"}); err != nil {
		t.Fatal(err)
	}
	got, err := d.Devices()
	want := []vmm.Device{vmm.Share{HostDir: "/a", Tag: "one"}, vmm.RNG{}, vmm.Share{HostDir: "/b", Tag: "two", ReadOnly: true}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("devices %v, %v; want %v", got, err, want)
	}
}
