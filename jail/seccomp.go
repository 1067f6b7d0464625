package jail

import (
	"fmt"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"
)

// runSyscalls are the system calls a capsule VMM makes once its VM is set
// up: the Go runtime's (threads, memory, signals, timers, the network
// poller), KVM's (ioctl), the devices' (disk I/O, sockets for the
// user-mode network and vsock, eventfds) and the exit path's (flushing,
// closing, removing the sockets and TAPs capsule created, restoring the
// terminal). Everything else fails with EPERM: opening files, executing
// programs, mounting, tracing, loading modules or BPF, changing
// namespaces or credentials.
var runSyscalls = []string{
	// Go runtime: threads, memory, signals, scheduling, time.
	"futex", "mmap", "munmap", "mprotect", "madvise", "mincore", "brk",
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
	"gettid", "getpid", "getppid", "tgkill", "tkill", "exit", "exit_group",
	"sched_yield", "sched_getaffinity", "nanosleep", "clock_nanosleep",
	"clock_gettime", "gettimeofday", "restart_syscall", "getrlimit", "prlimit64",
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait",
	"pipe2", "eventfd2", "getrandom", "uname",
	// File descriptors already open: I/O and their state.
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
	"close", "fcntl", "dup", "dup3", "lseek", "fstat", "newfstatat", "statx", "fdatasync", "fsync",
	"ioctl", "poll", "ppoll", "pselect6", "select", "splice",
	// Sockets: the user-mode network's host connections, vsock's Unix
	// sockets, netlink to remove a TAP capsule created.
	"socket", "connect", "bind", "listen", "accept", "accept4", "shutdown",
	"getsockname", "getpeername", "getsockopt", "setsockopt",
	"sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
	// Removing the sockets capsule created, on exit.
	"unlinkat", "unlink",
}

// cloneThreadOnly admits clone(2) only for threads (CLONE_THREAD set): the
// Go runtime starts threads with it, and nothing may start a process.
var cloneThreadOnly = seccomp.NameWithConditions{
	Name:       "clone",
	Conditions: seccomp.ArgumentConditions{{Argument: 0, Operation: seccomp.BitsSet, Value: unix.CLONE_THREAD}},
}

// Policy is the filter's policy, with extra system calls allowed.
func Policy(extra ...string) seccomp.Policy {
	return seccomp.Policy{
		DefaultAction: seccomp.ActionErrno, // EPERM
		Syscalls: []seccomp.SyscallGroup{{
			Action:             seccomp.ActionAllow,
			Names:              append(append([]string(nil), runSyscalls...), extra...),
			NamesWithCondtions: []seccomp.NameWithConditions{cloneThreadOnly},
		}},
	}
}

// Seccomp installs the run-time filter on every thread of the process
// (SECCOMP_FILTER_FLAG_TSYNC; threads started later inherit it) and sets
// no_new_privs. It cannot be undone: call it once the VM is set up,
// every file opened and every device created.
func Seccomp(extra ...string) error {
	if !seccomp.Supported() {
		return fmt.Errorf("seccomp: this kernel has no seccomp filters")
	}
	err := seccomp.LoadFilter(seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy:     Policy(extra...),
	})
	if err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	return nil
}
