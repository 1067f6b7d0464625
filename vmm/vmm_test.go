package vmm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capsule-vm/capsule/bootloader"
	"github.com/capsule-vm/capsule/internal/kvmtest"
)

// guest returns a test guest built by make.
func guest(t *testing.T, name string) string {
	return kvmtest.File(t, "../testdata/guests/"+name+".elf", "all")
}

// syncBuffer is a console that tests can read while the VM writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func runGuest(t *testing.T, ctx context.Context, cfg Config) (Result, string) {
	t.Helper()
	kvmtest.Open(t)
	var out syncBuffer
	cfg.Console = &out
	vm, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	res, err := vm.Run(ctx)
	if err != nil {
		t.Fatalf("Run: %v (console: %q)", err, out.String())
	}
	t.Logf("on %s: %s, status %d, first KVM_RUN %v, boot %v", kvmtest.Where(), res.Reason, res.Status, res.FirstRun, res.Boot)
	return res, out.String()
}

func TestHelloUnikernel(t *testing.T) {
	hello := guest(t, "hello")
	for _, tc := range []struct {
		name    string
		cpus    int
		cmdline string
		status  int
	}{
		{"exits 0 by default", 1, "greeting=yes", 0},
		{"exit status comes from the cmdline", 1, "a=b exit=3 c", 3},
		{"two vCPUs", 2, "exit=7", 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, out := runGuest(t, context.Background(), Config{Kernel: hello, Cmdline: tc.cmdline, CPUs: tc.cpus})
			if res.Reason != ReasonExitPort || res.Status != tc.status {
				t.Fatalf("result %+v, want exit port status %d", res, tc.status)
			}
			if !strings.Contains(out, "Hello from a capsule unikernel\n") {
				t.Fatalf("console %q lacks the hello line", out)
			}
			if !strings.Contains(out, "cmdline: "+tc.cmdline+"\n") {
				t.Fatalf("console %q lacks the command line %q", out, tc.cmdline)
			}
			if res.Boot <= 0 || res.FirstRun <= 0 || res.Boot < res.FirstRun {
				t.Fatalf("boot marker %v, first run %v: want both set, marker after first run", res.Boot, res.FirstRun)
			}
		})
	}
}

func TestTripleFaultIsReported(t *testing.T) {
	res, _ := runGuest(t, context.Background(), Config{Kernel: guest(t, "fault")})
	if res.Reason != ReasonTripleFault || res.Status != StatusTripleFault {
		t.Fatalf("result %+v, want a triple fault", res)
	}
	if !strings.Contains(res.Detail, "triple-faulted") || !strings.Contains(res.Detail, "RIP=") {
		t.Fatalf("detail %q should name the triple fault and dump registers", res.Detail)
	}
}

func TestI8042ResetStopsWithStatusZero(t *testing.T) {
	res, _ := runGuest(t, context.Background(), Config{Kernel: guest(t, "reboot")})
	if res.Reason != ReasonReset || res.Status != 0 {
		t.Fatalf("result %+v, want reset with status 0", res)
	}
}

func TestCancelStopsASpinningGuest(t *testing.T) {
	spin := guest(t, "spin")
	for _, cpus := range []int{1, 2} {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		res, out := runGuest(t, ctx, Config{Kernel: spin, CPUs: cpus})
		cancel()
		if res.Reason != ReasonCanceled {
			t.Fatalf("%d vCPUs: result %+v, want canceled", cpus, res)
		}
		if !strings.Contains(out, "spinning") {
			t.Fatalf("%d vCPUs: guest never ran: %q", cpus, out)
		}
	}
}

func TestNewRejectsBadInputBeforeKVM(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
		is   error
	}{
		{"no kernel", Config{}, "no kernel given", nil},
		{"missing kernel file", Config{Kernel: "/nonexistent/kernel"}, "/nonexistent/kernel", bootloader.ErrNotFound},
		{"not an ELF", Config{Kernel: "../testdata/guests/hello.S"}, "hello.S", bootloader.ErrNotKernel},
		{"negative vCPUs", Config{Kernel: "x", CPUs: -1}, "-1 vCPUs: must be between 1 and 254", nil},
		{"more vCPUs than the tables describe", Config{Kernel: "x", CPUs: 255}, "255 vCPUs", nil},
		{"too little memory", Config{Kernel: "x", MemoryMiB: 1}, "1 MiB of memory", nil},
		{"memory whose byte count overflows", Config{Kernel: "x", MemoryMiB: 1 << 45}, "must be between", nil},
		{"a disk given twice", Config{Kernel: "x", Devices: []Device{Disk{Path: "a.img"}, Disk{Path: "./a.img", ReadOnly: true}}}, "a VM can use disk image a.img only once", nil},
		{"too many devices", Config{Kernel: "x", Devices: []Device{RNG{}, RNG{}, RNG{}, RNG{}, RNG{}, RNG{}, RNG{}, RNG{}, RNG{}, RNG{}}}, "at most 9", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm, err := New(tc.cfg)
			if err == nil {
				vm.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q should be one line naming %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("error %v is not %v", err, tc.is)
			}
		})
	}
}

// stalledWriter is a console reader that never reads: Write blocks until
// the test ends.
type stalledWriter struct{ release chan struct{} }

func (w stalledWriter) Write(p []byte) (int, error) { <-w.release; return len(p), nil }

func TestAStalledConsoleDelaysNeitherTheGuestNorTheStop(t *testing.T) {
	kvmtest.Open(t)
	stalled := stalledWriter{make(chan struct{})}
	defer close(stalled.release) // ends the abandoned writer goroutine
	var log syncBuffer
	vm, err := New(Config{Kernel: guest(t, "flood"), Console: stalled, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := vm.Run(ctx)
	took := time.Since(start)
	if err != nil || res.Reason != ReasonCanceled {
		t.Fatalf("Run = %+v, %v; want canceled", res, err)
	}
	if took > 300*time.Millisecond+consoleFlush+logFlush+500*time.Millisecond {
		t.Fatalf("Run took %v to stop with the console stalled (timeout 300ms, flush bound %v)", took, consoleFlush)
	}
	if !strings.Contains(log.String(), "bytes of console output dropped: the reader did not keep up") {
		t.Fatalf("log %q does not report the lost output", log.String())
	}
	t.Logf("on %s: stopped %v after start; log %q", kvmtest.Where(), took, log.String())
}

func TestExitStatsCountTheGuestsPortWrites(t *testing.T) {
	kvmtest.Open(t)
	var out syncBuffer
	vm, err := New(Config{Kernel: guest(t, "hello"), Cmdline: "exit=3", Console: &out})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if _, err := vm.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := vm.ExitStats()
	// hello writes each console byte with one OUT, then 123 to the boot
	// marker and its status to the exit port.
	if got, want := s.IO[0x3f8], uint64(len(out.String())); got != want {
		t.Errorf("%d exits on COM1 for %d console bytes", got, want)
	}
	if s.IO[0xf5] != 1 || s.IO[0xf4] != 1 {
		t.Errorf("boot marker %d, exit port %d exits; want 1 each", s.IO[0xf5], s.IO[0xf4])
	}
	if str := s.String(); !strings.HasPrefix(str, fmt.Sprintf("%d exits, port 0x3f8 %d", s.Total(), s.IO[0x3f8])) {
		t.Errorf("summary %q", str)
	}
}
