package guest

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The reaper runs in the test process itself, made a child subreaper as
// the agent outside a guest is; nothing else in this package's tests
// starts processes.
func TestMain(m *testing.M) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// TestReaper starts processes that each leave an orphan behind while
// they exit with a status of their own: every status reaches its waiter
// and every orphan is reaped, not left a zombie.
func TestReaper(t *testing.T) {
	r := processReaper()
	const n = 20
	orphaned := make(chan int, 2*n)
	r.mu.Lock()
	r.orphaned = orphaned
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.orphaned = nil
		r.mu.Unlock()
	}()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var pid int
			exitc, err := r.start(func() (int, error) {
				// The subshell outlives sh or becomes its zombie: either
				// way the reaper inherits it.
				p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", "(exit 9) & exit " + strconv.Itoa(i)},
					&os.ProcAttr{Files: []*os.File{nil, nil, os.Stderr}})
				if err != nil {
					return 0, err
				}
				pid = p.Pid
				p.Release()
				return pid, nil
			})
			if err != nil {
				t.Error(err)
				return
			}
			if ws := <-exitc; !ws.Exited() || ws.ExitStatus() != i {
				t.Errorf("process %d (pid %d): wait status %#x, want exit status %d", i, pid, ws, i)
			}
		})
	}
	wg.Wait()
	timeout := time.After(30 * time.Second)
	for range n {
		select {
		case pid := <-orphaned:
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
				t.Errorf("orphan %d still in /proc after its reap", pid)
			}
		case <-timeout:
			t.Fatal("not every orphan was reaped")
		}
	}
}
