package jail

import (
	"fmt"
	"slices"

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
	"poll", "ppoll", "pselect6", "select", "splice",
	// Sockets already open (the user-mode network's, vsock's); new ones
	// only of the families Rules allow.
	"connect", "bind", "listen", "accept", "accept4", "shutdown",
	"getsockname", "getpeername", "getsockopt", "setsockopt",
	"sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
}

// Rules are what the filter allows beyond runSyscalls, as the VM's
// devices need: the ioctl requests (only these: KVM's running ones, the
// terminal's, a TAP's offload setting), the socket families new sockets
// may have (the user-mode network opens AF_INET/AF_INET6 connections,
// vsock AF_UNIX ones; none without such devices), whether files may be
// unlinked (vsock removes its sockets on exit), and whether the VM shares
// host directories (Files: shareSyscalls).
type Rules struct {
	Ioctls         []uint64
	SocketFamilies []int
	Unlink         bool
	Files          bool
}

// shareSyscalls are the system calls of a shared host directory (package
// virtio/p9/hostfs): opening below the directory's descriptors (openat2)
// and again through /proc/self/fd (openat), and reading and changing what
// is there. Which files they reach is the share's own confinement.
var shareSyscalls = []string{
	"openat", "openat2", "mkdirat", "mknodat", "symlinkat", "linkat", "renameat", "renameat2",
	"unlinkat", "fchmodat", "fchownat", "utimensat", "ftruncate", "getdents64", "readlinkat", "fstatfs",
}

// TerminalIoctls are the terminal requests capsule makes once running:
// reading and restoring the console's mode.
var TerminalIoctls = []uint64{unix.TCGETS, unix.TCSETS, unix.TCSETSW, unix.TCSETSF, unix.TIOCGWINSZ}

// TAPIoctls is the TAP request a running VM makes: setting the offloads
// the guest accepted.
var TAPIoctls = []uint64{unix.TUNSETOFFLOAD}

// cloneThreadOnly admits clone(2) only for threads (CLONE_THREAD set): the
// Go runtime starts threads with it, and nothing may start a process.
var cloneThreadOnly = seccomp.NameWithConditions{
	Name:       "clone",
	Conditions: seccomp.ArgumentConditions{{Argument: 0, Operation: seccomp.BitsSet, Value: unix.CLONE_THREAD}},
}

// Policy is the filter's policy for r.
func Policy(r Rules) seccomp.Policy {
	names := append([]string(nil), runSyscalls...)
	if r.Unlink {
		names = append(names, "unlinkat", "unlink")
	}
	if r.Files {
		for _, n := range shareSyscalls {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	conds := []seccomp.NameWithConditions{cloneThreadOnly}
	for _, req := range r.Ioctls {
		conds = append(conds, seccomp.NameWithConditions{Name: "ioctl",
			Conditions: seccomp.ArgumentConditions{{Argument: 1, Operation: seccomp.Equal, Value: req}}})
	}
	for _, f := range r.SocketFamilies {
		conds = append(conds, seccomp.NameWithConditions{Name: "socket",
			Conditions: seccomp.ArgumentConditions{{Argument: 0, Operation: seccomp.Equal, Value: uint64(f)}}})
	}
	return seccomp.Policy{
		DefaultAction: seccomp.ActionErrno, // EPERM
		Syscalls: []seccomp.SyscallGroup{{
			Action:             seccomp.ActionAllow,
			Names:              names,
			NamesWithCondtions: conds,
		}},
	}
}

// Seccomp installs the run-time filter on every thread of the process
// (SECCOMP_FILTER_FLAG_TSYNC; threads started later inherit it) and sets
// no_new_privs. It cannot be undone: call it once the VM is set up,
// every file opened and every device created.
func Seccomp(r Rules) error {
	if !seccomp.Supported() {
		return fmt.Errorf("seccomp: this kernel has no seccomp filters")
	}
	err := seccomp.LoadFilter(seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy:     Policy(r),
	})
	if err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	return nil
}
