package vmm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capsule-vm/capsule/virtio"
)

// A spec of a kind vmm does not know: a new device needs only this.
type fakeSpec struct{ name string }

func (f fakeSpec) String() string               { return "fake " + f.name }
func (f fakeSpec) Exclusive() string            { return "" }
func (f fakeSpec) Open() (virtio.Device, error) { return RNG{}.Open() }

func TestDevicesTakeSlotsInTheOrderGiven(t *testing.T) {
	img := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	specs := []Device{fakeSpec{"a"}, Disk{Path: img, ReadOnly: true}, RNG{}, fakeSpec{"b"}}
	slots, err := openDevices(specs)
	if err != nil {
		t.Fatal(err)
	}
	defer closeDevices(slots)
	var want strings.Builder
	for i, s := range slots {
		if s.spec != specs[i] || s.base != VirtioBase+uint64(i)*0x1000 || s.irq != VirtioIRQs[i] {
			t.Errorf("slot %d: %v at %#x irq %d", i, s.spec, s.base, s.irq)
		}
		fmt.Fprintf(&want, " virtio_mmio.device=4K@%#x:%d", s.base, s.irq)
	}
	if slots[1].dev.Type() != virtio.TypeBlock {
		t.Errorf("slot 1 is a %v, want the disk", slots[1].dev.Type())
	}
	if got := virtioCmdline(slots); got != want.String() {
		t.Errorf("command line %q, want %q", got, want.String())
	}
}

func TestDeviceOpenFailureClosesTheOthers(t *testing.T) {
	img := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := openDevices([]Device{Disk{Path: img}, Disk{Path: img + ".missing"}})
	if err == nil || !strings.Contains(err.Error(), "d.img.missing") {
		t.Fatalf("error %v, want the missing disk named", err)
	}
	// The first disk's write lock was dropped: it opens again.
	slots, err := openDevices([]Device{Disk{Path: img}})
	if err != nil {
		t.Fatalf("disk still locked after a failed New: %v", err)
	}
	closeDevices(slots)
}

func TestShareSpecs(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	slots, err := openDevices([]Device{Share{HostDir: dir, Tag: "a"}, Share{HostDir: dir, Tag: "b", ReadOnly: true}})
	if err != nil {
		t.Fatal(err)
	}
	if slots[0].dev.Type() != virtio.TypeP9 {
		t.Errorf("a share is a %v", slots[0].dev.Type())
	}
	if err := closeDevices(slots); err != nil {
		t.Error(err)
	}
	for _, tc := range []struct {
		specs []Device
		want  string
	}{
		{[]Device{Share{HostDir: dir, Tag: "a"}, Share{HostDir: t.TempDir(), Tag: "a"}}, "a VM can use 9p mount tag a only once"},
		{[]Device{Share{HostDir: dir + "/missing", Tag: "a"}}, "share " + dir + "/missing: no such file or directory"},
		{[]Device{Share{HostDir: file, Tag: "a"}}, "share " + file + ": not a directory"},
		{[]Device{Share{HostDir: dir, Tag: strings.Repeat("t", 37)}}, "more than 36"},
		{[]Device{Share{HostDir: dir, Tag: ""}}, "tag is empty"},
	} {
		_, err := openDevices(tc.specs)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error %v, want one line with %q", tc.specs, err, tc.want)
		}
	}
}
