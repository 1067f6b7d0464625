package main

import (
	"reflect"
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
