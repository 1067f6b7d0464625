package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/pflag"

	"github.com/capsule-vm/capsule/ocirt"
)

// ociName is the name under which capsule is runc's command line without
// the oci word (make install links it next to capsule): podman's
// --runtime and containerd's runc shim (BinaryName) call it as they call
// runc.
const ociName = "capsule-oci"

// ociGlobals are the global flags of capsule oci, those runc takes and
// podman, conmon and containerd pass.
type ociGlobals struct {
	root      string
	logPath   string
	logFormat string
	debug     bool
	log       *ocirt.Logger
	logFile   *os.File
}

// ociCommand is a command of capsule oci.
type ociCommand struct {
	name, synopsis, summary string
	run                     func(g *ociGlobals, args []string, stdout, stderr io.Writer) error
	hidden                  bool
}

var ociCommands []ociCommand

func init() {
	ociCommands = []ociCommand{
		{"create", "create [--bundle DIR] [--pid-file FILE] [--console-socket SOCK] [--preserve-fds N] ID",
			"boot the container's VM; its process waits for start", ociCreate, false},
		{"start", "start ID", "start the process of a created container", ociStart, false},
		{"state", "state ID", "print the container's state as JSON", ociState, false},
		{"kill", "kill [--all] ID [SIGNAL]", "send a signal (default SIGTERM) to the container's process", ociKill, false},
		{"delete", "delete [--force] ID", "delete a stopped container (--force: any)", ociDelete, false},
		{"exec", "exec [--process FILE] [--detach [--pid-file FILE]] [--cwd DIR] [--env K=V]... [--user UID[:GID]] ID [COMMAND [ARGS...]]",
			"run a further process in the container's VM", ociExec, false},
		{"ps", "ps [--format table|json] ID", "list the container's host processes (its monitor)", ociPs, false},
		{"list", "list [--format table|json] [--quiet]", "list the containers", ociList, false},
		{"spec", "spec [--bundle DIR]", "write a default config.json", ociSpec, false},
		{"features", "features", "print what this runtime supports, as JSON", ociFeatures, false},
		{"monitor", "monitor --kernel K --initrd I ID", "(internal) a container's monitor, started by create", ociMonitor, true},
		{"exec-monitor", "exec-monitor --spec FILE ID", "(internal) a detached exec's stand-in", ociExecMonitor, true},
	}
}

const ociHelp = `capsule oci is an OCI runtime with runc's command line: each container runs
in a micro-VM of its own (capsule's default kernel and guest agent), its
root file system shared into it. Installed as capsule-oci (make install),
the same without the oci word, for podman --runtime and containerd's runc
shim (BinaryName).

Commands:
%s
Errors are one line on stderr and, with --log, in the log as runc writes
them; every failure exits 1. A container's monitor is the pid that create
writes to --pid-file: it exits with the container's status (128+N for
signal N) once the process has ended and the VM has stopped.
`

func ociUsage(w io.Writer, fs *pflag.FlagSet) {
	var cmds strings.Builder
	for _, c := range ociCommands {
		if !c.hidden {
			fmt.Fprintf(&cmds, "  %-9s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprintf(w, "Usage: capsule oci [global flags] COMMAND [flags] [ARGS]\n\n"+ociHelp, cmds.String())
	fmt.Fprintf(w, "\nGlobal flags:\n%s", fs.FlagUsages())
}

// cmdOCI is capsule oci. It reports its errors itself, as runc does (one
// line on stderr and in --log), and returns an exitError.
func cmdOCI(args []string, stdout, stderr io.Writer) error {
	g := &ociGlobals{}
	fs := pflag.NewFlagSet("oci", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	fs.SetInterspersed(false)
	fs.StringVar(&g.root, "root", ocirt.DefaultRoot(), "where containers' state is kept")
	fs.StringVar(&g.logPath, "log", "", "append the log (errors, and debug lines with --debug) to this file")
	fs.StringVar(&g.logFormat, "log-format", "text", "the log's format: text or json")
	fs.BoolVar(&g.debug, "debug", false, "log debug lines")
	fs.String("log-level", "", "accepted for runc's sake (--debug sets debug)")
	fs.Bool("systemd-cgroup", false, "accepted for runc's sake (the VM is the container's bound)")
	fs.String("rootless", "auto", "accepted for runc's sake")
	fs.String("criu", "", "accepted for runc's sake (no checkpointing)")
	fs.Lookup("rootless").NoOptDefVal = "true"
	help := fs.BoolP("help", "h", false, "print this")
	ver := fs.BoolP("version", "v", false, "print the version")
	if err := fs.Parse(args); err != nil {
		return g.fail(stderr, err)
	}
	if *help {
		ociUsage(stdout, fs)
		return nil
	}
	if *ver {
		fmt.Fprintf(stdout, "%s version %s\nspec: %s\n", ociName, version, specs.Version)
		return nil
	}
	if root, err := filepath.Abs(g.root); err != nil {
		return g.fail(stderr, err)
	} else {
		g.root = root
	}
	switch g.logFormat {
	case "text", "json":
	default:
		return g.fail(stderr, fmt.Errorf("--log-format %q: want text or json", g.logFormat))
	}
	if g.logPath != "" {
		f, err := os.OpenFile(g.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return g.fail(stderr, fmt.Errorf("--log: %w", err))
		}
		g.logFile = f
		defer f.Close()
		g.log = ocirt.NewLogger(f, g.logFormat == "json", g.debug)
	} else if g.debug {
		g.log = ocirt.NewLogger(stderr, false, true)
	}
	if fs.NArg() == 0 {
		return g.fail(stderr, errors.New("no command given (run 'capsule oci --help')"))
	}
	name, rest := fs.Arg(0), fs.Args()[1:]
	var names []string
	for _, c := range ociCommands {
		if c.name == name {
			g.log.Debugf("%s %s", name, strings.Join(rest, " "))
			if err := c.run(g, rest, stdout, stderr); err != nil {
				var ee exitError
				if errors.As(err, &ee) {
					return err
				}
				return g.fail(stderr, err)
			}
			return nil
		}
		if !c.hidden {
			names = append(names, c.name)
		}
	}
	if s := suggest(name, names); s != "" {
		return g.fail(stderr, fmt.Errorf("unknown command %q; did you mean %q?", name, s))
	}
	return g.fail(stderr, fmt.Errorf("unknown command %q (run 'capsule oci --help')", name))
}

// fail reports err as runc does, on stderr and in the log, and is exit
// status 1.
func (g *ociGlobals) fail(stderr io.Writer, err error) error {
	msg := err.Error()
	if errors.Is(err, pflag.ErrHelp) {
		return nil
	}
	if g.logFile != nil {
		g.log.Errorf("%s", msg)
	}
	fmt.Fprintln(stderr, msg)
	return exitError{statusError}
}

// warn reports a warning: in the log, else on stderr.
func (g *ociGlobals) warn(stderr io.Writer, err error) {
	if g.logFile != nil {
		g.log.Warnf("%v", err)
		return
	}
	fmt.Fprintf(stderr, "warning: %v\n", err)
}

// ociFlags is the flag set of a command of capsule oci; --help prints
// its synopsis and flags on stdout.
func ociFlags(name string, stdout io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	var c ociCommand
	for _, c = range ociCommands {
		if c.name == name {
			break
		}
	}
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: capsule oci %s\n\n%s.\n", c.synopsis, c.summary)
		if f := fs.FlagUsages(); f != "" {
			fmt.Fprintf(stdout, "\nFlags:\n%s", f)
		}
	}
	return fs
}

// parseOCI parses a command's args into fs and checks that it has between
// min and max arguments (max < 0: any number).
func parseOCI(fs *pflag.FlagSet, args []string, min, max int) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitError{0}
		}
		return fmt.Errorf("%s: %w", fs.Name(), err)
	}
	switch n := fs.NArg(); {
	case n < min && min == 1:
		return fmt.Errorf("%s: %q requires exactly 1 argument(s)", fs.Name(), fs.Name())
	case n < min:
		return fmt.Errorf("%s: %d arguments needed, %d given", fs.Name(), min, n)
	case max >= 0 && n > max:
		return fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(max))
	}
	return nil
}

// container opens the container named by fs's first argument.
func (g *ociGlobals) container(fs *pflag.FlagSet) (*ocirt.Container, error) {
	return ocirt.Open(g.root, fs.Arg(0))
}

// childArgs are the global flags of a capsule oci process this one
// starts (the monitor, exec's stand-in): the same state root and log
// format, and the log by its absolute path (the child runs in /).
func (g *ociGlobals) childArgs() ([]string, error) {
	args := []string{"oci", "--root", g.root, "--log-format", g.logFormat}
	if g.logPath != "" {
		logPath, err := filepath.Abs(g.logPath)
		if err != nil {
			return nil, err
		}
		args = append(args, "--log", logPath)
	}
	return args, nil
}

// containerState opens the container fs names and reads its state.
func (g *ociGlobals) containerState(fs *pflag.FlagSet) (*ocirt.Container, ocirt.State, error) {
	c, err := g.container(fs)
	if err != nil {
		return nil, ocirt.State{}, err
	}
	st, err := c.State()
	return c, st, err
}
