package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/capsule-vm/capsule/agent"
	"github.com/capsule-vm/capsule/ociimage"
	"github.com/capsule-vm/capsule/sandbox"
)

// execDefaults are what a named VM's main program was given, which
// capsule exec starts from: kept beside the VM's agent socket.
type execDefaults struct {
	Root string   // the root on the host, for user and group names
	Env  []string // before -e
	Cwd  string
	User string
}

const execDefaultsFile = "exec.json"

func writeExecDefaults(socket string, d execDefaults) error {
	b, err := json.Marshal(d)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(filepath.Dir(socket), execDefaultsFile), b, 0o600)
}

func readExecDefaults(socket string) (execDefaults, error) {
	var d execDefaults
	b, err := os.ReadFile(filepath.Join(filepath.Dir(socket), execDefaultsFile))
	if err != nil {
		return d, err
	}
	return d, json.Unmarshal(b, &d)
}

func cmdExec(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("exec", "exec [flags] NAME [--] CMD [ARGS...]", `Runs a further program in the running VM started by capsule run --name NAME
(--rootfs or --image), as run starts its command: same root, environment,
working directory and user unless the flags say otherwise. Its stdio,
signals and exit status are as capsule run's; the VM keeps running when it
ends.
`, stdout, stderr)
	var sf sandboxFlags
	sf.addProcess(fs)
	fs.SetInterspersed(false)
	if err := fs.Parse(args); err != nil {
		return flagError(fs, err)
	}
	if fs.NArg() < 1 {
		return usageErrorf("no VM name (capsule exec NAME CMD [ARGS...])")
	}
	name, cmd := fs.Arg(0), fs.Args()[1:]
	if err := sandbox.CheckName(name); err != nil {
		return usageError{err}
	}
	if len(cmd) == 0 {
		return usageErrorf("no command to run in %s", name)
	}
	if err := sf.checkEnv(); err != nil {
		return err
	}
	socket := sandbox.AgentSocket(name)
	d, err := readExecDefaults(socket)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no VM named %s is running", name)
	}
	if err != nil {
		return fmt.Errorf("VM %s: %w", name, err)
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	spec := agent.ProcessSpec{ID: fmt.Sprintf("exec-%d-%x", os.Getpid(), rnd), Args: cmd, Cwd: d.Cwd}
	if sf.workdir != "" {
		spec.Cwd = sf.workdir
	}
	userSpec := d.User
	if sf.user != "" {
		userSpec = sf.user
	}
	u, err := ociimage.LookupUser(d.Root, userSpec)
	if err != nil {
		return err
	}
	spec.UID, spec.GID, spec.Groups = u.UID, u.GID, u.Groups
	spec.Env = mergeEnv(d.Env, sf.env, u.Home, sf.tty)

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := dialUntilSignal(ctx, cancel, sigs, stderr, func(ctx context.Context) (*agent.Client, error) { return sandbox.Dial(ctx, name) })
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := runProcess(ctx, c, spec, &sf, sigs, stdout, stderr)
	var notRun notRunError
	switch {
	case errors.As(err, &notRun):
		fmt.Fprintf(stderr, "capsule: %v\n", notRun.err)
		return exitError{notRun.status}
	case errors.Is(err, agent.ErrAgentLost):
		fmt.Fprintf(stderr, "capsule: VM %s: %v\n", name, err)
		return exitError{statusAgentLost}
	case err != nil:
		return err
	}
	if code := st.ShellCode(); code != 0 {
		return exitError{code}
	}
	return nil
}

// dialUntilSignal runs dial, which a SIGINT, SIGTERM or SIGHUP arriving on
// sigs meanwhile cancels (through cancel, which ends ctx): before the
// program runs, a signal stops capsule (128+N, said on stderr) instead of
// waiting for it.
func dialUntilSignal(ctx context.Context, cancel context.CancelFunc, sigs <-chan os.Signal, stderr io.Writer,
	dial func(context.Context) (*agent.Client, error)) (*agent.Client, error) {
	done := make(chan struct{})
	got := make(chan syscall.Signal, 1)
	go func() {
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGWINCH {
					continue
				}
				got <- s.(syscall.Signal)
				cancel()
				return
			case <-done:
				return
			}
		}
	}()
	c, err := dial(ctx)
	close(done)
	if err != nil {
		select {
		case s := <-got:
			fmt.Fprintf(stderr, "capsule: %v\n", signalError{s})
			return nil, exitError{128 + int(s)}
		default:
		}
	}
	return c, err
}
