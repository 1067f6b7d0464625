package main

import (
	"io"
	"reflect"
	"strings"
	"testing"

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
