// Command capsule runs micro-VMs on Linux KVM.
//
//	capsule run --kernel PATH [flags]   boot a kernel in a micro-VM
//	capsule bench --kernel PATH [flags] boot-time benchmark, side by side with QEMU
//	capsule probe                       say what kind of KVM this host has
//	capsule version                     print the version (also capsule --version)
//	capsule help [COMMAND]              print the commands, or a command's flags
//
// Run "capsule COMMAND --help" for a command's flags. capsule exits 2 when
// it is invoked wrongly (an unknown command or flag, a bad flag value, a
// stray argument, a missing required flag); capsule run documents its other
// exit statuses.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	_ "github.com/capsule-vm/capsule/internal/proc" // start the process clock first
	"github.com/spf13/pflag"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// statusUsage is the exit status when capsule is invoked wrongly, as with
// Go's flag package; statusError (1) is for a command that could not do its
// work.
const statusUsage = 2

// exitError carries an exit status out of a command without a message.
type exitError struct{ status int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.status) }

// usageError is a mistake in how capsule was invoked, as opposed to a
// failure of what it was asked to do: an unknown flag, a flag value that
// cannot be used, a stray argument, a missing required flag. A command
// returns one (made with usageErrorf) and mainStatus prints it as one line
// with a pointer to the command's --help and exits with statusUsage (2);
// every other error exits with statusError (1). Errors from parsing flags
// are usage errors too, whether or not a command wraps them.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usageErrorf formats a usageError as fmt.Errorf does (%w included).
func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

type command struct {
	name, summary string
	run           func(args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	{"run", "boot a kernel in a micro-VM, or run a program in one (--rootfs, --image)", cmdRun},
	{"exec", "run a further program in a running VM (capsule run --name)", cmdExec},
	{"bench", "boot a kernel repeatedly and report boot times, side by side with QEMU", cmdBench},
	{"probe", "say what kind of KVM this host has and what will work", cmdProbe},
	{"version", "print capsule's version (also capsule --version)", cmdVersion},
	{"oci", "the OCI runtime: runc's command line, each container in a micro-VM (also capsule-oci)", cmdOCI},
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "capsule runs micro-VMs on Linux KVM.\n\nUsage:\n  capsule COMMAND [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "  %-8s %s\n", "help", "print this, or with a COMMAND, that command's flags")
	fmt.Fprintf(w, "\nRun 'capsule help COMMAND' or 'capsule COMMAND --help' for the flags of a command.\n"+
		"capsule exits 2 when it is invoked wrongly; 'capsule help run' lists run's other exit statuses.\n")
}

func main() {
	// capsule's own messages never hold up its exit: a stderr nobody
	// reads (a full pipe) gets a second, then loses what follows.
	stopProfile := startProfile()
	args := os.Args[1:]
	if filepath.Base(os.Args[0]) == ociName {
		args = append([]string{"oci"}, args...)
	}
	status := mainStatus(args, os.Stdout, newTimedWriter(os.Stderr, time.Second))
	stopProfile()
	os.Exit(status)
}

// timedWriter writes to w on a goroutine and waits at most limit for each
// write; once one has not finished in time, it drops everything after.
type timedWriter struct {
	w     io.Writer
	limit time.Duration
	mu    sync.Mutex
	stuck bool
}

func newTimedWriter(w io.Writer, limit time.Duration) *timedWriter {
	return &timedWriter{w: w, limit: limit}
}

func (t *timedWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stuck {
		return len(p), nil
	}
	done := make(chan struct{})
	buf := append([]byte(nil), p...) // the write may outlive this call
	go func() {
		t.w.Write(buf)
		close(done)
	}()
	timer := time.NewTimer(t.limit)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		t.stuck = true
	}
	return len(p), nil
}

// mainStatus runs the command line args and returns the process's exit
// status; errors are printed as one line.
func mainStatus(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return statusUsage
	}
	name, rest := args[0], args[1:]
	switch name {
	case "-h", "--help", "help":
		return help(rest, stdout, stderr)
	case "--version":
		name = "version"
	}
	c, err := lookup(name)
	if err != nil {
		fmt.Fprintf(stderr, "capsule: %v (run 'capsule help')\n", err)
		return statusUsage
	}
	return statusOf(c.name, c.run(rest, stdout, stderr), stderr)
}

// help prints the list of commands, or with a command's name runs that
// command with --help.
func help(args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) > 1:
		fmt.Fprintf(stderr, "capsule help: unexpected argument %q: help takes one command (run 'capsule help')\n", args[1])
		return statusUsage
	case len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help":
		usage(stdout)
		return 0
	}
	c, err := lookup(args[0])
	if err != nil {
		fmt.Fprintf(stderr, "capsule help: %v (run 'capsule help')\n", err)
		return statusUsage
	}
	return mainStatus([]string{c.name, "--help"}, stdout, stderr)
}

// lookup finds the command called name, or says which one was meant.
func lookup(name string) (command, error) {
	var names []string
	for _, c := range commands {
		if c.name == name {
			return c, nil
		}
		names = append(names, c.name)
	}
	if strings.HasPrefix(name, "-") {
		return command{}, fmt.Errorf("unknown flag %s: flags come after the command, as in capsule run --kernel PATH", name)
	}
	if s := suggest(name, append(names, "help")); s != "" {
		return command{}, fmt.Errorf("unknown command %q; did you mean %q?", name, s)
	}
	return command{}, fmt.Errorf("unknown command %q", name)
}

// statusOf prints the error command cmd returned, if any, and returns the
// exit status it stands for.
func statusOf(cmd string, err error, stderr io.Writer) int {
	var ee exitError
	switch {
	case err == nil, errors.Is(err, pflag.ErrHelp):
		return 0
	case errors.As(err, &ee):
		return ee.status
	}
	err = flagError(nil, err)
	if errors.As(err, new(usageError)) {
		fmt.Fprintf(stderr, "capsule %s: %v (run 'capsule %s --help')\n", cmd, err, cmd)
		return statusUsage
	}
	fmt.Fprintf(stderr, "capsule %s: %v\n", cmd, err)
	return statusError
}

// newFlags makes the flag set of a command; --help prints the synopsis,
// help and flags on stdout.
func newFlags(name, synopsis, help string, stdout, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: capsule %s\n\n%s", synopsis, help)
		if flags := fs.FlagUsages(); flags != "" {
			fmt.Fprintf(stdout, "\nFlags:\n%s", flags)
		}
	}
	return fs
}

// parseFlags parses the args of a command that takes flags only: every
// error, a stray argument included, is a usageError, and a mistyped flag
// comes with the name of the flag that was probably meant.
func parseFlags(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return flagError(fs, err)
	}
	if fs.NArg() > 0 {
		return usageErrorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// flagError turns an error of pflag's parser into a usageError; an unknown
// flag comes with the flag of fs that was probably meant (fs may be nil).
// Other errors are returned as they are.
func flagError(fs *pflag.FlagSet, err error) error {
	if errors.As(err, new(usageError)) {
		return err
	}
	var (
		notExist *pflag.NotExistError
		invalid  *pflag.InvalidValueError
		required *pflag.ValueRequiredError
		syntax   *pflag.InvalidSyntaxError
	)
	switch {
	case errors.As(err, &notExist):
		if s := suggestFlag(fs, notExist); s != "" {
			return usageErrorf("%v; did you mean --%s?", err, s)
		}
	case errors.As(err, &invalid):
		// As the commands' own checks say it: --runs "x": must be an integer.
		return usageErrorf("--%s %q: %w", invalid.GetFlag().Name, invalid.GetValue(), errors.Unwrap(invalid))
	case errors.As(err, &required), errors.As(err, &syntax):
	default:
		return err
	}
	return usageError{err}
}

// suggestFlag names the visible long flag of fs that an unknown one
// (--kernal, or -kernel typed with one dash) probably meant, or "".
func suggestFlag(fs *pflag.FlagSet, e *pflag.NotExistError) string {
	if fs == nil {
		return ""
	}
	var names []string
	fs.VisitAll(func(f *pflag.Flag) {
		if !f.Hidden {
			names = append(names, f.Name)
		}
	})
	if short := e.GetSpecifiedShortnames(); short != "" {
		return suggest(short, names)
	}
	return suggest(e.GetSpecifiedName(), names)
}

// suggest returns the candidate nearest to name, if it is at most two
// edits away (an insertion, deletion, substitution or swap of neighbours
// each) or starts with name; "" when none is.
func suggest(name string, candidates []string) string {
	best, bestD := "", 0
	for _, c := range candidates {
		d := editDistance(name, c)
		if d > 2 && (name == "" || !strings.HasPrefix(c, name)) {
			continue
		}
		if best == "" || d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance between a and b:
// the fewest insertions, deletions, substitutions and swaps of adjacent
// characters that turn a into b, no substring edited twice.
func editDistance(a, b string) int {
	x, y := []rune(a), []rune(b)
	d := make([][]int, len(x)+1)
	for i := range d {
		d[i] = make([]int, len(y)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(x); i++ {
		for j := 1; j <= len(y); j++ {
			cost := 1
			if x[i-1] == y[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && x[i-1] == y[j-2] && x[i-2] == y[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(x)][len(y)]
}

func cmdVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "version", "Prints capsule's version and the Go toolchain that built it\n(capsule --version prints the same).\n", stdout, stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "capsule %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}
