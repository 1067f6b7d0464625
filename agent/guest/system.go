package guest

import (
	"os"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/capsule-vm/capsule/agent/agentpb"
)

// errProcessDone is os.Process.Signal's error for a process that has
// exited.
var errProcessDone = os.ErrProcessDone

// System is what the agent does to the machine: in a guest as PID 1
// (pid1), or nothing of it outside (hostSystem, for tests).
type System interface {
	// Setup mounts the sandbox and moves the agent into it; its error is
	// a status.
	Setup(req *agentpb.SetupSandboxRequest) error
	// KillAll kills every process but the agent.
	KillAll()
	// PowerOff syncs and powers off; outside a guest it returns.
	PowerOff()
}

// hostSystem is the agent's System outside a guest: it sets nothing up
// and leaves the machine alone.
type hostSystem struct{}

func (hostSystem) Setup(*agentpb.SetupSandboxRequest) error {
	return status.Error(codes.FailedPrecondition, "sandbox setup needs the agent to be the guest's init (PID 1)")
}

func (hostSystem) KillAll() {}

func (hostSystem) PowerOff() {}
