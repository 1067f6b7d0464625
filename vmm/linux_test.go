package vmm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capsule-vm/capsule/internal/kvmtest"
)

// image returns a guest image built by make images.
func image(t *testing.T, name string) string {
	return kvmtest.File(t, "../testdata/images/"+name, "images")
}

// watchedConsole records console output and signals when a line appears.
type watchedConsole struct {
	syncBuffer
	want    string
	reached chan struct{}
	once    sync.Once
}

func (w *watchedConsole) Write(p []byte) (int, error) {
	n, err := w.syncBuffer.Write(p)
	if w.want != "" && strings.Contains(w.syncBuffer.String(), w.want) {
		w.once.Do(func() { close(w.reached) })
	}
	return n, err
}

const linuxCmdline = "console=ttyS0 quiet reboot=k panic=-1"

func bootLinux(t *testing.T, ctx context.Context, cfg Config, waitFor string, then func()) (Result, string) {
	t.Helper()
	kvmtest.OpenHardware(t)
	con := &watchedConsole{want: waitFor, reached: make(chan struct{})}
	cfg.Console = con
	vm, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if waitFor != "" {
		go func() {
			select {
			case <-con.reached:
				then()
			case <-ctx.Done():
			}
		}()
	}
	start := time.Now()
	res, err := vm.Run(ctx)
	if err != nil {
		t.Fatalf("Run: %v\nconsole:\n%s", err, con.String())
	}
	t.Logf("%s on %s: %s in %v (first KVM_RUN %v, boot marker %v)", vm.Info().Format, kvmtest.Where(), res.Reason, time.Since(start).Round(time.Millisecond), res.FirstRun, res.Boot)
	// The kernel's serial console ends lines with CRLF.
	return res, strings.ReplaceAll(con.String(), "\r", "")
}

func TestLinuxBootsToInit(t *testing.T) {
	initrd := image(t, "initramfs.cpio.gz")
	for _, k := range []struct{ name, file string }{
		{"minimal bzImage", "minimal.bzImage"},
		{"minimal PVH vmlinux", "minimal.vmlinux"},
		{"stock Debian bzImage", "stock.bzImage"},
		{"default PVH vmlinux", "default.vmlinux"},
		// Entered as Firecracker enters a vmlinux: 64-bit, zero page in RSI.
		{"minimal vmlinux without its PVH note", "minimal.vmlinux no-pvh"},
	} {
		for _, cpus := range []int{1, 2} {
			t.Run(fmt.Sprintf("%s with %d vCPUs", k.name, cpus), func(t *testing.T) {
				kernel := image(t, strings.TrimSuffix(k.file, " no-pvh"))
				if strings.HasSuffix(k.file, " no-pvh") {
					kernel = withoutPVHNote(t, kernel)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				defer cancel()
				cmdline := linuxCmdline + " capsule.exit=" + strconv.Itoa(40+cpus)
				res, out := bootLinux(t, ctx, Config{Kernel: kernel, Initrd: initrd, Cmdline: cmdline, CPUs: cpus, MemoryMiB: 256}, "", nil)
				if res.Reason != ReasonExitPort || res.Status != 40+cpus {
					t.Fatalf("result %+v, want exit port status %d\nconsole:\n%s", res, 40+cpus, out)
				}
				for _, want := range []string{"capsule-init: up\n", "cmdline: " + cmdline + "\n", fmt.Sprintf("cpus: %d\n", cpus)} {
					if !strings.Contains(out, want) {
						t.Fatalf("console lacks %q:\n%s", want, out)
					}
				}
				var memKB int
				if i := strings.Index(out, "memtotal: "); i < 0 {
					t.Fatalf("no memtotal line:\n%s", out)
				} else if _, err := fmt.Sscanf(out[i:], "memtotal: %d kB", &memKB); err != nil || memKB < 180<<10 || memKB > 256<<10 {
					t.Fatalf("MemTotal %d kB (%v) for 256 MiB of RAM", memKB, err)
				}
				if res.Boot <= 0 {
					t.Fatal("the init's boot-time marker was not recorded")
				}
			})
		}
	}
}

// withoutPVHNote writes a copy of the vmlinux at path with its PVH entry
// note hidden and returns the copy's path.
func withoutPVHNote(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := kvmtest.HidePVHNote(data); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	out := filepath.Join(t.TempDir(), "vmlinux-no-pvh")
	if err := os.WriteFile(out, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestLinuxRebootExitsZero(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, out := bootLinux(t, ctx, Config{Kernel: image(t, "minimal.bzImage"), Initrd: image(t, "initramfs.cpio.gz"),
		Cmdline: linuxCmdline + " capsule.action=reboot"}, "", nil)
	if res.Reason != ReasonReset || res.Status != 0 {
		t.Fatalf("result %+v, want reset with status 0\nconsole:\n%s", res, out)
	}
}

func TestSpinningLinuxIsStopped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stop, stopIt := context.WithCancel(ctx)
	res, out := bootLinux(t, stop, Config{Kernel: image(t, "minimal.vmlinux"), Initrd: image(t, "initramfs.cpio.gz"),
		Cmdline: linuxCmdline + " capsule.action=spin", CPUs: 2}, "capsule-init: spinning", stopIt)
	if res.Reason != ReasonCanceled || ctx.Err() != nil {
		t.Fatalf("result %+v (outer context %v), want canceled after the spin line\nconsole:\n%s", res, ctx.Err(), out)
	}
}
