package guest

import (
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// reaper reaps every child of the agent, the processes it started and
// the orphans the kernel hands to it (as PID 1, or as a child subreaper),
// in one loop: a process the agent started is registered before the
// loop can look its pid up, so its exit status always reaches its
// waiter, and nothing else calls wait.
type reaper struct {
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus
	// orphaned, when set (tests), receives the pid of each child reaped
	// that nobody waited for.
	orphaned chan<- int
}

var (
	reaperOnce sync.Once
	theReaper  *reaper
)

// processReaper returns the process's reaper, started on first use: two
// would reap each other's children.
func processReaper() *reaper {
	reaperOnce.Do(func() { theReaper = newReaper() })
	return theReaper
}

func newReaper() *reaper {
	r := &reaper{waiters: make(map[int]chan unix.WaitStatus)}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGCHLD)
	go func() {
		for {
			r.reap()
			<-sig
		}
	}()
	return r
}

// start runs fork, which starts a child and returns its pid, and
// registers the child; the returned channel receives its wait status.
// The loop cannot dispatch the child's status before it is registered:
// both hold r.mu.
func (r *reaper) start(fork func() (int, error)) (<-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := fork()
	if err != nil {
		return nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[pid] = ch
	return ch, nil
}

// reap collects every child that has exited (SIGCHLD signals coalesce).
func (r *reaper) reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		r.mu.Lock()
		ch := r.waiters[pid]
		delete(r.waiters, pid)
		orphaned := r.orphaned
		r.mu.Unlock()
		if ch != nil {
			ch <- ws
		} else if orphaned != nil {
			orphaned <- pid
		}
	}
}
