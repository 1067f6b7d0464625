package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/capsule-vm/capsule/agent"
	"github.com/capsule-vm/capsule/internal/guestimage"
	"github.com/capsule-vm/capsule/internal/proc"
	"github.com/capsule-vm/capsule/internal/tail"
	"github.com/capsule-vm/capsule/jail"
	"github.com/capsule-vm/capsule/ociimage"
	"github.com/capsule-vm/capsule/sandbox"
	"github.com/capsule-vm/capsule/vmm"
)

// Exit statuses of capsule run --rootfs/--image besides the program's own.
const (
	// statusAgentLost: the guest agent went away (the guest crashed, or
	// powered off) before it reported the program's exit.
	statusAgentLost = 123
	// A program that could not be run, or was not found, gives the
	// agent's statuses (agent.StartStatus: 126, 127).
)

// sandboxFlags are run's flags for running a program from a directory or
// an image.
type sandboxFlags struct {
	rootfs, image    string
	readOnly         bool
	interactive, tty bool
	env              []string
	workdir, user    string
	hostname         string
	volumes          []string
	bootTimeout      time.Duration
	name             string
}

func (s *sandboxFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&s.rootfs, "rootfs", "", "run the command given after the flags from this directory, in a micro-VM whose root it is\n"+
		"(capsule's default kernel and guest agent; see Running programs below)")
	fs.StringVar(&s.image, "image", "", "the same from a container image: a docker save/podman save archive or an OCI\n"+
		"layout (directory or archive); its Entrypoint, Cmd, Env, WorkingDir and User apply")
	fs.BoolVar(&s.readOnly, "read-only", false, "with --rootfs: the guest cannot change the directory (its writes go to a\n"+
		"tmpfs overlay, lost at exit); an --image root is always read-only so")
	s.addProcess(fs)
	fs.StringVar(&s.hostname, "hostname", "", "the guest's host name (default: capsule)")
	fs.StringArrayVar(&s.volumes, "volume", nil, "mount a host directory in the guest, HOSTDIR:PATH[:ro] (repeatable)")
	fs.StringVar(&s.name, "name", "", "name the VM, so that capsule exec NAME runs further programs in it")
	fs.DurationVar(&s.bootTimeout, "boot-timeout", sandbox.DefaultBootTimeout, "give up when the guest agent has not answered this long after start")
}

// addProcess adds the flags of the program's settings (run's and exec's).
func (s *sandboxFlags) addProcess(fs *pflag.FlagSet) {
	fs.BoolVarP(&s.interactive, "interactive", "i", false, "connect this stdin to the program (without it, the program reads end of file)")
	fs.BoolVarP(&s.tty, "tty", "t", false, "give the program a terminal (a pty in the guest) of this terminal's size")
	fs.StringArrayVarP(&s.env, "env", "e", nil, "set an environment variable of the program, KEY=VALUE (repeatable)")
	fs.StringVarP(&s.workdir, "workdir", "w", "", "the program's working directory (default: the image's, else /)")
	fs.StringVarP(&s.user, "user", "u", "", "run the program as USER[:GROUP], names or numbers from the root's /etc/passwd\n"+
		"and /etc/group (default: the image's user, else root)")
}

// checkEnv checks the -e values.
func (s *sandboxFlags) checkEnv() error {
	for _, e := range s.env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return usageErrorf("--env %q: want KEY=VALUE", e)
		}
	}
	return nil
}

func (s *sandboxFlags) active() bool { return s.rootfs != "" || s.image != "" }

// sandboxHelp is the part of run's help about --rootfs and --image.
const sandboxHelp = `
Running programs (--rootfs DIR or --image ARCHIVE, then the command):

  capsule run --rootfs ./rootfs -- sh -c 'echo hello; exit 7'
  capsule run --image app.tar -it -- sh

The command runs in a micro-VM of its own, with the directory (or the
image's unpacked root, cached under ~/.cache/capsule/rootfs) as its root,
shared over virtio-9p; no --kernel is needed: capsule boots its default
kernel and guest agent (installed by make install, or --kernel, --initrd,
$CAPSULE_KERNEL and $CAPSULE_INITRD). The program's stdout and stderr are
capsule's, its stdin with -i; SIGINT, SIGTERM and SIGHUP are passed to it;
capsule exits with its status (128+N if signal N killed it), 127 if it was
not found, 126 if it could not be run, 123 if the guest went away before
reporting it, 124 on --timeout, and 1 when capsule itself fails. The
guest's kernel messages are shown with -v, or after a failure.
`

// runSandbox is capsule run --rootfs/--image: cfg holds the VM flags
// (--kernel, --initrd, --cpus, --memory, devices), args the command.
func runSandbox(sf *sandboxFlags, cfg vmm.Config, args []string, timeout time.Duration, verbose, seccompOn bool, stdout, stderr io.Writer) error {
	if sf.rootfs != "" && sf.image != "" {
		return usageErrorf("--rootfs and --image: give one")
	}
	if sf.image != "" && sf.readOnly {
		return usageErrorf("--read-only: an --image root is always read-only")
	}
	if cfg.Cmdline != "" && verbose {
		fmt.Fprintf(stderr, "capsule: kernel command line: %s %s\n", sandbox.Cmdline, cfg.Cmdline)
	}
	volumes, err := parseVolumes(sf.volumes)
	if err != nil {
		return usageError{err}
	}
	if err := sf.checkEnv(); err != nil {
		return err
	}
	if sf.name != "" {
		if err := sandbox.CheckName(sf.name); err != nil {
			return usageErrorf("--name: %w", err)
		}
	}
	images, err := guestimage.Find(guestimage.Options{Kernel: cfg.Kernel, Initrd: cfg.Initrd})
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	if timeout > 0 {
		t := time.AfterFunc(timeout, func() { cancel(errTimeout) })
		defer t.Stop()
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	// Until the program runs, a signal stops capsule (the unpacking, the
	// boot); then it goes to the program.
	stopWatching := watchSignals(sigs, cancel)
	defer stopWatching()

	// The root and the process's settings.
	root, ro := sf.rootfs, sf.readOnly
	spec := agent.ProcessSpec{ID: "main", Args: args, Cwd: "/", ShutdownOnExit: true}
	env := []string{"PATH=" + ociimage.DefaultPath}
	userSpec := sf.user
	if sf.image != "" {
		img, err := ociimage.Unpack(ctx, sf.image, ociimage.Options{})
		if err != nil {
			return causeOr(ctx, err, stderr)
		}
		if verbose {
			fmt.Fprintf(stderr, "capsule: image %s: root %s (cached: %v)\n", img.Digest, img.RootFS, img.Cached)
		}
		root, ro = img.RootFS, true
		spec.Args = img.Config.Argv(args)
		env = img.Config.Env
		if img.Config.WorkingDir != "" {
			spec.Cwd = img.Config.WorkingDir
		}
		if userSpec == "" {
			userSpec = img.Config.User
		}
	}
	if len(spec.Args) == 0 {
		return usageErrorf("no command: give it after the flags (capsule run --rootfs DIR -- CMD [ARGS...])")
	}
	if sf.workdir != "" {
		spec.Cwd = sf.workdir
	}
	u, err := ociimage.LookupUser(root, userSpec)
	if err != nil {
		return err
	}
	spec.UID, spec.GID, spec.Groups = u.UID, u.GID, u.Groups
	spec.Env = mergeEnv(env, sf.env, u.Home, sf.tty)

	var console io.Writer
	consoleTail := &tail.Writer{Max: 16 << 10}
	console = consoleTail
	if verbose {
		console = stderr
	}
	hostname := sf.hostname
	if hostname == "" {
		hostname = "capsule"
	}
	sb, err := sandbox.New(sandbox.Config{
		Kernel: images.Kernel, Initrd: images.Initrd, Cmdline: cfg.Cmdline,
		CPUs: cfg.CPUs, MemoryMiB: cfg.MemoryMiB,
		Root: root, RootReadOnly: ro, Volumes: volumes, Hostname: hostname,
		Devices: cfg.Devices, Console: console, Log: stderr, Name: sf.name,
	})
	if errors.Is(err, vmm.ErrNoKVM) {
		return fmt.Errorf("%w (capsule probe says more)", err)
	}
	if err != nil {
		return err
	}
	defer sb.Close()
	vmCfg := cfg
	vmCfg.Devices = sb.Devices()
	if os.Geteuid() == 0 {
		if err := jail.DropCapabilities(shareCapabilities(vmCfg)...); err != nil {
			return err
		}
	}
	if seccompOn {
		if err := jail.Seccomp(seccompRules(vmCfg)); err != nil {
			return err
		}
	}
	if verbose {
		fmt.Fprintf(stderr, "capsule: kernel %s (%s), initramfs %s (%s)\n", images.Kernel, images.KernelFrom, images.Initrd, images.InitrdFrom)
	}

	// Boot, until the agent has the root ready.
	start := time.Now()
	bootCtx, bootCancel := context.WithTimeout(ctx, sf.bootTimeout)
	err = sb.Start(bootCtx)
	bootCancel()
	if err != nil {
		if ctx.Err() != nil {
			return causeOr(ctx, err, stderr)
		}
		showTail(stderr, consoleTail, verbose)
		return err
	}
	ready := proc.Since()
	if verbose {
		fmt.Fprintf(stderr, "capsule: guest agent ready after %s (%s)\n", ms(time.Since(start)), sb.Agent().Agent)
	}

	if sf.name != "" {
		if err := writeExecDefaults(sandbox.AgentSocket(sf.name), execDefaults{Root: root, Env: env, Cwd: spec.Cwd, User: userSpec}); err != nil {
			return err
		}
	}
	if !stopWatching() {
		return causeOr(ctx, context.Canceled, stderr)
	}
	st, err := runProcess(ctx, sb.Agent(), spec, sf, sigs, stdout, stderr)
	var notRun notRunError
	switch {
	case errors.As(err, &notRun):
		fmt.Fprintf(stderr, "capsule: %v\n", notRun.err)
		return exitError{notRun.status}
	case err != nil && context.Cause(ctx) == errTimeout:
		fmt.Fprintf(stderr, "capsule: --timeout %v expired\n", timeout)
		return exitError{statusTimeout}
	case err != nil:
		return sandboxEnd(sb, err, consoleTail, verbose, stderr)
	}
	exited := proc.Since()
	sb.Stop(2 * time.Second)
	if verbose {
		fmt.Fprintf(stderr, "capsule: %s after %s; the guest: %s\n", st, ms(time.Since(start)), sb.Ended())
		res, _ := sb.Result()
		fmt.Fprintf(stderr, "capsule: %s\n", breakdown{res.FirstRun, res.Boot, ready, exited, proc.Since()})
	}
	if code := st.ShellCode(); code != 0 {
		return exitError{code}
	}
	return nil
}

// watchSignals cancels ctx (through cancel) with a signalError when
// SIGINT, SIGTERM or SIGHUP arrives on sigs, until stop is called. stop
// reports whether no signal came: from then on sigs is the caller's.
func watchSignals(sigs <-chan os.Signal, cancel context.CancelCauseFunc) (stop func() bool) {
	done := make(chan struct{})
	fired := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGWINCH {
					continue
				}
				cancel(signalError{s.(syscall.Signal)})
				close(fired)
				return
			case <-done:
				return
			}
		}
	}()
	var once sync.Once
	return func() bool {
		once.Do(func() { close(done) })
		select {
		case <-fired:
			return false
		default:
			return true
		}
	}
}

// causeOr is the error to return when ctx may have ended: --timeout's
// status, or a signal's (128+N), said on stderr; else err.
func causeOr(ctx context.Context, err error, stderr io.Writer) error {
	var sig signalError
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errTimeout):
		fmt.Fprintf(stderr, "capsule: %v\n", cause)
		return exitError{statusTimeout}
	case errors.As(cause, &sig):
		fmt.Fprintf(stderr, "capsule: %v\n", sig)
		return exitError{128 + int(sig.sig)}
	}
	return err
}

// notRunError: the program could not be started, with the status to
// exit with.
type notRunError struct {
	status int
	err    error
}

func (e notRunError) Error() string { return e.err.Error() }

// runProcess starts spec through c with this process's stdio (stdin with
// -i; a raw terminal with -i -t), passes it the signals that arrive on
// sigs and this terminal's size changes, and waits for its end.
func runProcess(ctx context.Context, c *agent.Client, spec agent.ProcessSpec, sf *sandboxFlags, sigs <-chan os.Signal, stdout, stderr io.Writer) (agent.ExitStatus, error) {
	stdinFD := int(os.Stdin.Fd())
	if sf.tty {
		spec.Terminal = true
		if w, h, err := term.GetSize(stdinFD); err == nil {
			spec.Cols, spec.Rows = uint16(w), uint16(h)
		}
	}
	stdio := agent.Stdio{Stdout: stdout, Stderr: stderr}
	if sf.interactive {
		stdio.Stdin = os.Stdin
	}
	if sf.tty && sf.interactive && term.IsTerminal(stdinFD) {
		old, err := term.MakeRaw(stdinFD)
		if err != nil {
			return agent.ExitStatus{}, fmt.Errorf("terminal: %w", err)
		}
		defer term.Restore(stdinFD, old)
	}
	p, err := c.Start(ctx, spec, stdio)
	if status, ok := agent.StartStatus(err); ok {
		return agent.ExitStatus{}, notRunError{status, err}
	}
	if err != nil {
		return agent.ExitStatus{}, err
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGWINCH {
					if sf.tty {
						if w, h, err := term.GetSize(stdinFD); err == nil {
							p.Resize(ctx, uint16(h), uint16(w))
						}
					}
					continue
				}
				p.Signal(ctx, s.(syscall.Signal))
			case <-stop:
				return
			}
		}
	}()
	return p.Wait(ctx)
}

// sandboxEnd reports an agent error: when the guest has stopped, how it
// stopped (with its status when it was a crash or a panic), else err.
func sandboxEnd(sb *sandbox.VM, err error, kept *tail.Writer, verbose bool, stderr io.Writer) error {
	if errors.Is(err, agent.ErrAgentLost) {
		t := time.NewTimer(2 * time.Second)
		select {
		case <-sb.Done():
		case <-t.C:
		}
		t.Stop()
	}
	select {
	case <-sb.Done():
		showTail(stderr, kept, verbose)
		res, _ := sb.Result()
		fmt.Fprintf(stderr, "capsule: the guest stopped before the program's end was reported: %s\n", sb.Ended())
		switch res.Reason {
		case vmm.ReasonPanic, vmm.ReasonTripleFault, vmm.ReasonCrash:
			return exitError{res.Status}
		}
		return exitError{statusAgentLost}
	default:
	}
	if errors.Is(err, agent.ErrAgentLost) {
		showTail(stderr, kept, verbose)
		fmt.Fprintf(stderr, "capsule: %v\n", err)
		return exitError{statusAgentLost}
	}
	return err
}

// showTail prints the guest console's last lines after a failure (when -v
// has not shown them already).
func showTail(stderr io.Writer, kept *tail.Writer, verbose bool) {
	if verbose {
		return
	}
	if b := kept.Bytes(); len(b) > 0 {
		fmt.Fprintf(stderr, "capsule: the guest console's last output:\n%s", b)
		if b[len(b)-1] != '\n' {
			fmt.Fprintln(stderr)
		}
	}
}

// mergeEnv is the program's environment: the image's (or a default
// PATH), then -e settings replacing same-named ones, HOME from the user's
// passwd entry and TERM for a terminal when neither set them.
func mergeEnv(base, set []string, home string, tty bool) []string {
	var env []string
	index := map[string]int{}
	put := func(kv string) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := index[k]; ok {
			env[i] = kv
			return
		}
		index[k] = len(env)
		env = append(env, kv)
	}
	for _, kv := range base {
		put(kv)
	}
	for _, kv := range set {
		put(kv)
	}
	if _, ok := index["HOME"]; !ok {
		if home == "" {
			home = "/"
		}
		put("HOME=" + home)
	}
	if _, ok := index["TERM"]; !ok && tty {
		put("TERM=xterm")
	}
	return env
}

// parseVolumes parses --volume HOSTDIR:PATH[:ro] values.
func parseVolumes(vals []string) ([]sandbox.Volume, error) {
	var vols []sandbox.Volume
	for _, v := range vals {
		parts := strings.Split(v, ":")
		vol := sandbox.Volume{}
		switch {
		case len(parts) == 3 && parts[2] == "ro":
			vol.ReadOnly = true
		case len(parts) == 3 && parts[2] == "rw":
		case len(parts) != 2:
			return nil, fmt.Errorf("--volume %q: want HOSTDIR:PATH or HOSTDIR:PATH:ro", v)
		}
		vol.HostDir, vol.Path = parts[0], parts[1]
		if vol.HostDir == "" || !filepath.IsAbs(vol.Path) {
			return nil, fmt.Errorf("--volume %q: want a host directory and an absolute guest path", v)
		}
		vols = append(vols, vol)
	}
	return vols, nil
}

// breakdown is where the time of capsule run --rootfs/--image went, each
// a time since the capsule process started (zero when not reached): the
// VMM's set-up until the first KVM_RUN, the kernel's boot until the agent
// (PID 1) wrote the boot-time marker, the agent until it answered with
// the root ready, the program until its exit status came, and the VM's
// stop.
type breakdown struct {
	firstRun, marker, ready, exited, stopped time.Duration
}

// String is one line, "breakdown: vmm=… kernel=… agent=… program=…
// stop=… total=…" in milliseconds ("?" for a phase whose end or start
// was not reached), which capsule bench --workload run reads back.
func (b breakdown) String() string {
	marks := []time.Duration{0, b.firstRun, b.marker, b.ready, b.exited, b.stopped}
	phase := func(from, to int) string {
		if (from > 0 && marks[from] == 0) || marks[to] == 0 {
			return "?"
		}
		return fmt.Sprintf("%.1fms", float64((marks[to]-marks[from]).Microseconds())/1000)
	}
	return fmt.Sprintf("breakdown: vmm=%s kernel=%s agent=%s program=%s stop=%s total=%s",
		phase(0, 1), phase(1, 2), phase(2, 3), phase(3, 4), phase(4, 5), phase(0, 5))
}
