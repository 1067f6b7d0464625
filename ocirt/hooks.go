package ocirt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Hook points, as config.json's hooks name them. The runtime runs them on
// the host: prestart and createRuntime in create once the VM is up (a
// failure fails create), poststart in start once the process has started
// and poststop in delete (a failure of these is only logged).
// createContainer and startContainer hooks, which run inside the
// container, are refused: the guest cannot run the host's programs.
const (
	HookPrestart      = "prestart"
	HookCreateRuntime = "createRuntime"
	HookPoststart     = "poststart"
	HookPoststop      = "poststop"
)

// CheckHooks refuses the hooks a VM cannot run.
func CheckHooks(h *specs.Hooks) error {
	if h != nil && (len(h.CreateContainer) > 0 || len(h.StartContainer) > 0) {
		return errors.New("config.json: createContainer and startContainer hooks (run inside the container) are not supported")
	}
	return nil
}

// Hooks are the bundle's hooks of a point (none when it has none).
func (b *Bundle) Hooks(point string) []specs.Hook {
	h := b.Spec.Hooks
	if h == nil {
		return nil
	}
	switch point {
	case HookPrestart:
		return h.Prestart //nolint:staticcheck // deprecated, still sent
	case HookCreateRuntime:
		return h.CreateRuntime
	case HookPoststart:
		return h.Poststart
	case HookPoststop:
		return h.Poststop
	}
	return nil
}

// RunHooks runs hooks one after the other, each with the container's
// state (runtime-spec's, status as given) on its stdin, within its
// timeout; it stops at the first that fails.
func RunHooks(point string, hooks []specs.Hook, st State, status Status) error {
	state, err := json.Marshal(specs.State{
		Version: st.OCIVersion, ID: st.ID, Status: status, Pid: st.Pid, Bundle: st.Bundle, Annotations: st.Annotations,
	})
	if err != nil {
		return err
	}
	for i, h := range hooks {
		if err := runHook(h, state); err != nil {
			return fmt.Errorf("%s hook #%d: %w", point, i, err)
		}
	}
	return nil
}

func runHook(h specs.Hook, state []byte) error {
	ctx := context.Background()
	if h.Timeout != nil {
		if *h.Timeout <= 0 {
			return fmt.Errorf("%s: timeout %d: must be positive", h.Path, *h.Timeout)
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(*h.Timeout)*time.Second)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, h.Path)
	if len(h.Args) > 0 {
		cmd.Args = h.Args
	}
	cmd.Env = h.Env
	cmd.Stdin = bytes.NewReader(state)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second // a child of the hook's holding its output
	err := cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("%s: timed out after %ds", h.Path, *h.Timeout)
	}
	if err != nil {
		return fmt.Errorf("%s: %v, stdout: %s, stderr: %s", h.Path, err, oneLine(stdout.String()), strings.TrimSpace(oneLine(stderr.String())))
	}
	return nil
}
