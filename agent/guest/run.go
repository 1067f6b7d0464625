package guest

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/capsule-vm/capsule/agent"
)

// Options configure Run.
type Options struct {
	// Name is what the agent calls itself in Hello (name and build).
	Name string
	// Listen, when set, is a Unix socket path the agent listens on
	// instead of vsock, speaking the hybrid vsock handshake (tests).
	Listen string
}

// Run runs the agent until it powers off (as the guest's init, powering
// off does not return) or its listeners fail. As PID 1 it first mounts
// the kernel's file systems; otherwise it becomes a child subreaper, so
// that it reaps orphans as init would.
func Run(o Options) error {
	var sys System
	if os.Getpid() == 1 {
		sys = pid1{}
		markBoot()
		if err := earlyInit(); err != nil {
			fmt.Fprintf(os.Stderr, "capsule-agent: %v\n", err)
		}
	} else {
		sys = hostSystem{}
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("child subreaper: %w", err)
		}
	}
	var control, streams net.Listener
	if o.Listen != "" {
		lns, _, err := listenHybrid(o.Listen, agent.ControlPort, agent.StreamPort)
		if err != nil {
			return err
		}
		control, streams = lns[agent.ControlPort], lns[agent.StreamPort]
	} else {
		var err error
		if control, err = listenVsock(agent.ControlPort); err != nil {
			return err
		}
		if streams, err = listenVsock(agent.StreamPort); err != nil {
			control.Close()
			return err
		}
	}
	defer control.Close()
	defer streams.Close()
	s := NewServer(sys, o.Name)
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(control, streams) }()
	select {
	case err := <-errc:
		if err == nil {
			err = errors.New("listener closed")
		}
		return err
	case <-s.Off():
		return nil
	}
}

// PowerOff powers the guest off when the agent is its init (after Run
// failed); otherwise it does nothing.
func PowerOff() {
	if os.Getpid() == 1 {
		pid1{}.PowerOff()
	}
}
