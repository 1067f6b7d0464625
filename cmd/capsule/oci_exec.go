package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/capsule-vm/capsule/agent"
	"github.com/capsule-vm/capsule/ocirt"
)

// ociExec is capsule oci exec: a further process in the container's VM,
// through its agent, with exec's stdio; exec exits with its status. With
// --detach, a process of capsule's own (started as create starts the
// monitor) stands for it, its pid goes to --pid-file, and its exit status
// is the process's.
func ociExec(g *ociGlobals, args []string, stdout, stderr io.Writer) error {
	fs := ociFlags("exec", stdout)
	processFile := fs.StringP("process", "p", "", "the process, as config.json's process in a file of its own (replaces the arguments and flags below)")
	detach := fs.BoolP("detach", "d", false, "leave the process running; its pid (capsule's stand-in) goes to --pid-file")
	pidFile := fs.String("pid-file", "", "with --detach: write the stand-in's pid to this file")
	fs.String("console-socket", "", "for a terminal (not supported yet)")
	tty := fs.BoolP("tty", "t", false, "a terminal (not supported yet)")
	cwd := fs.String("cwd", "", "the working directory (default: config.json's)")
	env := fs.StringArrayP("env", "e", nil, "set an environment variable, KEY=VALUE (repeatable)")
	user := fs.StringP("user", "u", "", "UID[:GID] (default: config.json's)")
	gids := fs.StringArrayP("additional-gids", "g", nil, "an additional gid (repeatable)")
	fs.Bool("no-new-privs", false, "accepted for runc's sake")
	fs.StringArrayP("cap", "c", nil, "accepted for runc's sake")
	fs.Int("preserve-fds", 0, "accepted for runc's sake")
	fs.String("process-label", "", "accepted for runc's sake")
	fs.String("apparmor", "", "accepted for runc's sake")
	fs.StringArray("cgroup", nil, "accepted for runc's sake")
	fs.SetInterspersed(false) // the command's own flags follow the ID
	if err := parseOCI(fs, args, 1, -1); err != nil {
		return err
	}
	c, st, err := g.containerState(fs)
	if err != nil {
		return err
	}
	if st.Status == specs.StateStopped {
		return errors.New("cannot exec in a stopped container")
	}
	var p specs.Process
	if *processFile != "" {
		b, err := os.ReadFile(*processFile)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &p); err != nil {
			return fmt.Errorf("--process %s: not valid: %v", *processFile, err)
		}
	} else {
		b, err := ocirt.LoadBundle(st.Bundle)
		if err != nil {
			return err
		}
		p = *b.Spec.Process
		p.Args, p.Terminal = fs.Args()[1:], *tty
		if len(p.Args) == 0 {
			return errors.New("exec args cannot be empty")
		}
		if *cwd != "" {
			p.Cwd = *cwd
		}
		p.Env = append(p.Env[:len(p.Env):len(p.Env)], *env...)
		if *user != "" {
			u, gid, hasGID := strings.Cut(*user, ":")
			uid, err := strconv.ParseUint(u, 10, 32)
			if err != nil {
				return fmt.Errorf("--user %q: want UID[:GID]", *user)
			}
			p.User = specs.User{UID: uint32(uid)}
			if hasGID {
				n, err := strconv.ParseUint(gid, 10, 32)
				if err != nil {
					return fmt.Errorf("--user %q: want UID[:GID]", *user)
				}
				p.User.GID = uint32(n)
			}
		}
		for _, s := range *gids {
			n, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return fmt.Errorf("--additional-gids %q: not a number", s)
			}
			p.User.AdditionalGids = append(p.User.AdditionalGids, uint32(n))
		}
	}
	id := make([]byte, 8)
	rand.Read(id)
	spec, err := ocirt.MapProcess(&p, st.Rootfs, "exec-"+hex.EncodeToString(id))
	if err != nil {
		return err
	}
	if !*detach {
		return runExec(g, c, spec, nil)
	}

	// Detached: a stand-in runs it (exec-monitor), given the spec in a
	// file of the state directory.
	specFile := c.Path(spec.ID + ".json")
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	if err := os.WriteFile(specFile, b, 0o600); err != nil {
		return err
	}
	defer os.Remove(specFile) // the stand-in removes it first when it runs
	self, err := os.Executable()
	if err != nil {
		return err
	}
	margs, err := g.childArgs()
	if err != nil {
		return err
	}
	cmd, readyR, err := startDetached(self, "the exec's stand-in", append(margs, "exec-monitor", "--spec", specFile, c.ID))
	if err != nil {
		return err
	}
	defer readyR.Close()
	line, _ := bufio.NewReader(readyR).ReadString('\n')
	if err := readyOrKill(cmd, strings.TrimSpace(line), func(status error) error {
		return fmt.Errorf("container %s: the exec's stand-in ended before the process started (%v)", c.ID, status)
	}); err != nil {
		return err
	}
	if *pidFile != "" {
		if err := writePidFile(*pidFile, cmd.Process.Pid); err != nil {
			return err
		}
	}
	cmd.Process.Release()
	return nil
}

// ociExecMonitor is the hidden stand-in of a detached exec: it runs the
// process of --spec (which it removes) and exits with its status;
// descriptor 3 is exec's pipe.
func ociExecMonitor(g *ociGlobals, args []string, stdout, stderr io.Writer) error {
	fs := ociFlags("exec-monitor", stdout)
	specFile := fs.String("spec", "", "the agent's process spec, JSON")
	if err := parseOCI(fs, args, 1, 1); err != nil {
		return err
	}
	c, err := g.container(fs)
	if err != nil {
		return err
	}
	ready := os.NewFile(3, "ready")
	b, err := os.ReadFile(*specFile)
	os.Remove(*specFile)
	var spec agent.ProcessSpec
	if err == nil {
		err = json.Unmarshal(b, &spec)
	}
	if err != nil {
		fmt.Fprintf(ready, "error: %v\n", err)
		return exitError{statusError}
	}
	if g.logFile == nil { // stderr is the process's
		g.log = nil
	}
	return runExec(g, c, spec, ready)
}

// execDialTimeout bounds exec's connection to the agent.
const execDialTimeout = 10 * time.Second

// runExec runs spec in c's VM with this process's stdio, passing on
// SIGTERM, SIGINT and SIGHUP, and is an exitError with its status. ready,
// when not nil, gets ReadyOK once the process has started or the error
// ("error: ...") and is closed.
func runExec(g *ociGlobals, c *ocirt.Container, spec agent.ProcessSpec, ready io.WriteCloser) error {
	fail := func(status int, err error) error {
		if ready != nil {
			fmt.Fprintf(ready, "error: %s\n", strings.Join(strings.Fields(err.Error()), " "))
			ready.Close()
			return exitError{status}
		}
		if status == statusError {
			return err
		}
		g.fail(os.Stderr, err)
		return exitError{status}
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	signal.Ignore(syscall.SIGPIPE)
	ctx, cancel := context.WithTimeout(context.Background(), execDialTimeout)
	client, err := c.Dial(ctx)
	cancel()
	if err != nil {
		return fail(statusError, err)
	}
	defer client.Close()
	ctx, cancel = context.WithTimeout(context.Background(), execDialTimeout)
	p, err := client.Start(ctx, spec, agent.Stdio{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
	cancel()
	if status, ok := agent.StartStatus(err); ok {
		return fail(status, err)
	}
	if err != nil {
		return fail(statusError, err)
	}
	if ready != nil {
		fmt.Fprintln(ready, ocirt.ReadyOK)
		ready.Close()
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case s := <-sigs:
				p.Signal(context.Background(), s.(syscall.Signal))
			case <-stop:
				return
			}
		}
	}()
	st, err := p.Wait(context.Background())
	if err != nil {
		g.log.Errorf("container %s: exec: %v", c.ID, err)
		return exitError{ocirt.StatusAgentLost}
	}
	return exitError{st.ShellCode()}
}
