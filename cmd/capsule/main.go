// Command capsule runs micro-VMs on Linux KVM.
//
//	capsule run --kernel PATH [flags]   boot a kernel in a micro-VM
//	capsule bench --kernel PATH [flags] boot-time benchmark, side by side with QEMU
//	capsule probe                       say what kind of KVM this host has
//	capsule version                     print the version
//
// Run "capsule COMMAND --help" for a command's flags.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	_ "github.com/capsule-vm/capsule/internal/proc" // start the process clock first
	"github.com/spf13/pflag"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries an exit status out of a command without a message.
type exitError struct{ status int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.status) }

type command struct {
	name, summary string
	run           func(args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	{"run", "boot a kernel in a micro-VM", cmdRun},
	{"bench", "boot a kernel repeatedly and report boot times, side by side with QEMU", cmdBench},
	{"probe", "say what kind of KVM this host has and what will work", cmdProbe},
	{"version", "print capsule's version", cmdVersion},
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "capsule runs micro-VMs on Linux KVM.\n\nUsage:\n  capsule COMMAND [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'capsule COMMAND --help' for the flags of a command.\n")
}

func main() {
	os.Exit(mainStatus(os.Args[1:], os.Stdout, os.Stderr))
}

// mainStatus runs the command line args and returns the process's exit
// status; errors are printed as one line.
func mainStatus(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "--help", "help":
		usage(stdout)
		return 0
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(args[1:], stdout, stderr)
		var ee exitError
		switch {
		case err == nil:
			return 0
		case errors.As(err, &ee):
			return ee.status
		case errors.Is(err, pflag.ErrHelp):
			return 0
		}
		fmt.Fprintf(stderr, "capsule %s: %v\n", c.name, err)
		return 1
	}
	fmt.Fprintf(stderr, "capsule: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func newFlags(name, synopsis, help string, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: capsule %s\n\n%s\nFlags:\n%s", synopsis, help, fs.FlagUsages())
	}
	return fs
}

func cmdVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "version", "Prints capsule's version and the Go toolchain that built it.\n", stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "capsule %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}
