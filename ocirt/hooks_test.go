package ocirt

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// shHook is a hook running script with busybox's sh.
func shHook(t *testing.T, script string) specs.Hook {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox for the hooks")
	}
	return specs.Hook{Path: "/bin/busybox", Args: []string{"busybox", "sh", "-c", script}, Env: []string{"HOOKVAR=set"}}
}

func TestRunHooks(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	st := State{OCIVersion: specs.Version, ID: "box", Pid: 12, Bundle: "/b", Annotations: map[string]string{"a": "b"}}
	hooks := []specs.Hook{shHook(t, "cat > "+out+"; echo $HOOKVAR >> "+out+".env")}
	if err := RunHooks(HookPoststop, hooks, st, specs.StateStopped); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	var got specs.State
	if err := json.Unmarshal(b, &got); err != nil || got.ID != "box" || got.Status != specs.StateStopped || got.Pid != 12 ||
		got.Bundle != "/b" || got.Annotations["a"] != "b" || got.Version != specs.Version {
		t.Fatalf("the hook's stdin: %s (%v)", b, err)
	}
	if env, _ := os.ReadFile(out + ".env"); string(env) != "set\n" {
		t.Fatalf("the hook's env: %q", env)
	}

	// The first failure stops the rest and says which and why.
	hooks = []specs.Hook{shHook(t, "true"), shHook(t, "echo bad >&2; exit 3"), shHook(t, "touch "+out+".never")}
	err := RunHooks(HookCreateRuntime, hooks, st, specs.StateCreating)
	if err == nil || !strings.Contains(err.Error(), "createRuntime hook #1") || !strings.Contains(err.Error(), "exit status 3") ||
		!strings.Contains(err.Error(), "stderr: bad") {
		t.Fatalf("failing hook: %v", err)
	}
	if _, err := os.Stat(out + ".never"); err == nil {
		t.Fatal("a hook after the failing one ran")
	}

	// A hook past its timeout is killed.
	one := 1
	slow := shHook(t, "sleep 30")
	slow.Timeout = &one
	start := time.Now()
	if err := RunHooks(HookPoststart, []specs.Hook{slow}, st, specs.StateRunning); err == nil || !strings.Contains(err.Error(), "timed out after 1s") {
		t.Fatalf("slow hook: %v", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("the slow hook took %v", d)
	}
}

func TestCheckHooksRefusesContainerHooks(t *testing.T) {
	if err := CheckHooks(&specs.Hooks{Poststop: []specs.Hook{{Path: "/x"}}}); err != nil {
		t.Fatal(err)
	}
	if err := CheckHooks(&specs.Hooks{StartContainer: []specs.Hook{{Path: "/x"}}}); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Fatalf("startContainer: %v", err)
	}
}
