package ocirt

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/capsule-vm/capsule/agent"
	"github.com/capsule-vm/capsule/sandbox"
)

// Operations a command asks the monitor for.
const (
	OpStart = "start" // start the container's process
	OpKill  = "kill"  // deliver Signal to it
)

// Request is a command's request to the monitor: one JSON line.
type Request struct {
	Op     string `json:"op"`
	Signal int    `json:"signal,omitempty"`
	All    bool   `json:"all,omitempty"`
}

// Response is the monitor's answer: one JSON line; Error is empty on
// success, NotRunning set when the container has no process to signal.
type Response struct {
	Error      string `json:"error,omitempty"`
	NotRunning bool   `json:"notRunning,omitempty"`
}

// callTimeout bounds a call: start waits for the process to be started in
// the guest, which the agent does at once.
const callTimeout = 30 * time.Second

// Call sends req to the container's monitor and waits for its answer.
// A monitor that is not there (ended, or killed) is ErrNotRunning.
func (c *Container) Call(req Request) error {
	conn, err := net.DialTimeout("unix", c.Socket(), callTimeout)
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return ErrNotRunning
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(callTimeout))
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return fmt.Errorf("container %s: monitor: %w", c.ID, err)
	}
	var resp Response
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &resp)
	}
	switch {
	case err != nil && len(line) == 0:
		// The monitor ended before it answered (a kill that ended a
		// created container ends it at once).
		if req.Op == OpKill {
			return nil
		}
		return fmt.Errorf("container %s: the monitor ended without answering", c.ID)
	case err != nil:
		return fmt.Errorf("container %s: monitor: %w", c.ID, err)
	case resp.NotRunning:
		return ErrNotRunning
	case resp.Error != "":
		return errors.New(resp.Error)
	}
	return nil
}

// Dial connects to the container's guest agent, as exec does, until ctx
// ends.
func (c *Container) Dial(ctx context.Context) (*agent.Client, error) {
	cl, err := agent.Dial(ctx, agent.HybridDialer(sandbox.SocketIn(c.VMDir())))
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", c.ID, err)
	}
	return cl, nil
}
