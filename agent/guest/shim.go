package guest

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Go's os.StartProcess sets no resource limits, and setting the agent's
// own around a fork would limit the agent too. A process with rlimits is
// therefore started through the shim: the agent's own binary again
// (/proc/self/exe), run as shimArg0, which sets the limits, then the
// groups, gid and uid (after the limits, which may need root), and execs
// the program.

const (
	shimArg0 = "capsule-agent-shim"
	// shimEnv carries the shim's instructions: "UID GID GROUPS LIMITS",
	// GROUPS a comma-separated list ("-" for none), LIMITS
	// "RESOURCE:SOFT:HARD" joined by commas ("-" for none).
	shimEnv = "CAPSULE_AGENT_SHIM"
)

// MaybeShim runs the shim and does not return when this process was
// started as one; otherwise it returns at once. The agent's main, and a
// test binary that runs the agent, call it first.
func MaybeShim() {
	if len(os.Args) < 3 || os.Args[0] != shimArg0 {
		return
	}
	spec, ok := os.LookupEnv(shimEnv)
	if !ok {
		return
	}
	os.Unsetenv(shimEnv)
	err := shim(spec, os.Args[1], os.Args[2:])
	fmt.Fprintf(os.Stderr, "capsule-agent: %s: %v\n", os.Args[1], err)
	os.Exit(127)
}

func shim(spec, path string, args []string) error {
	f := strings.Fields(spec)
	if len(f) != 4 {
		return fmt.Errorf("bad shim spec %q", spec)
	}
	uid, err1 := strconv.ParseUint(f[0], 10, 32)
	gid, err2 := strconv.ParseUint(f[1], 10, 32)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("bad shim spec %q", spec)
	}
	groups := []int{}
	if f[2] != "-" {
		for g := range strings.SplitSeq(f[2], ",") {
			n, err := strconv.ParseUint(g, 10, 32)
			if err != nil {
				return fmt.Errorf("bad shim spec %q", spec)
			}
			groups = append(groups, int(n))
		}
	}
	if f[3] != "-" {
		for l := range strings.SplitSeq(f[3], ",") {
			p := strings.Split(l, ":")
			if len(p) != 3 {
				return fmt.Errorf("bad shim spec %q", spec)
			}
			res, err1 := strconv.Atoi(p[0])
			soft, err2 := strconv.ParseUint(p[1], 10, 64)
			hard, err3 := strconv.ParseUint(p[2], 10, 64)
			if err1 != nil || err2 != nil || err3 != nil {
				return fmt.Errorf("bad shim spec %q", spec)
			}
			// syscall's Setrlimit, not unix's: it also stops the runtime
			// from restoring its saved RLIMIT_NOFILE at exec.
			if err := syscall.Setrlimit(res, &syscall.Rlimit{Cur: soft, Max: hard}); err != nil {
				return fmt.Errorf("setrlimit %s: %w", rlimitName(res), err)
			}
		}
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(int(gid)); err != nil {
		return fmt.Errorf("setgid: %w", err)
	}
	if err := syscall.Setuid(int(uid)); err != nil {
		return fmt.Errorf("setuid: %w", err)
	}
	return syscall.Exec(path, args, os.Environ())
}

// shimSpec encodes the shim's instructions.
func shimSpec(uid, gid uint32, groups []uint32, limits []rlimit) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %d ", uid, gid)
	if len(groups) == 0 {
		b.WriteString("-")
	}
	for i, g := range groups {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(uint64(g), 10))
	}
	b.WriteByte(' ')
	if len(limits) == 0 {
		b.WriteString("-")
	}
	for i, l := range limits {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d:%d:%d", l.res, l.soft, l.hard)
	}
	return b.String()
}

// rlimit is a resource limit to set.
type rlimit struct {
	res        int
	soft, hard uint64
}

// rlimits maps setrlimit(2)'s names to resources.
var rlimits = map[string]int{
	"RLIMIT_AS":         unix.RLIMIT_AS,
	"RLIMIT_CORE":       unix.RLIMIT_CORE,
	"RLIMIT_CPU":        unix.RLIMIT_CPU,
	"RLIMIT_DATA":       unix.RLIMIT_DATA,
	"RLIMIT_FSIZE":      unix.RLIMIT_FSIZE,
	"RLIMIT_LOCKS":      unix.RLIMIT_LOCKS,
	"RLIMIT_MEMLOCK":    unix.RLIMIT_MEMLOCK,
	"RLIMIT_MSGQUEUE":   unix.RLIMIT_MSGQUEUE,
	"RLIMIT_NICE":       unix.RLIMIT_NICE,
	"RLIMIT_NOFILE":     unix.RLIMIT_NOFILE,
	"RLIMIT_NPROC":      unix.RLIMIT_NPROC,
	"RLIMIT_RSS":        unix.RLIMIT_RSS,
	"RLIMIT_RTPRIO":     unix.RLIMIT_RTPRIO,
	"RLIMIT_RTTIME":     unix.RLIMIT_RTTIME,
	"RLIMIT_SIGPENDING": unix.RLIMIT_SIGPENDING,
	"RLIMIT_STACK":      unix.RLIMIT_STACK,
}

func rlimitName(res int) string {
	for name, r := range rlimits {
		if r == res {
			return name
		}
	}
	return strconv.Itoa(res)
}
