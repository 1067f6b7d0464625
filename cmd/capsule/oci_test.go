package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/capsule-vm/capsule/ocirt"
)

// ociRoot is a fresh --root, short enough for the Unix sockets under it.
func ociRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "oci")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "root")
}

// writeOCIBundle writes config.json for spec in a new bundle directory
// whose root.path is rootfs (made empty when "").
func writeOCIBundle(t *testing.T, spec *specs.Spec, rootfs string) string {
	t.Helper()
	dir := t.TempDir()
	if rootfs == "" {
		rootfs = filepath.Join(dir, "rootfs")
		os.Mkdir(rootfs, 0o755)
	}
	if spec.Root == nil {
		spec.Root = &specs.Root{}
	}
	spec.Root.Path = rootfs
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ociSpec is a config.json running args.
func ociSpecOf(args ...string) *specs.Spec {
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{Args: args, Cwd: "/", Env: []string{"PATH=/bin"}},
		Root:    &specs.Root{},
	}
}

// lastLogLine is the last line of a json --log, decoded.
func lastLogLine(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var m map[string]string
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &m); err != nil {
		t.Fatalf("log line %q: %v", lines[len(lines)-1], err)
	}
	return m
}

// rootEntries lists --root (nothing when it does not exist).
func rootEntries(t *testing.T, root string) []string {
	t.Helper()
	entries, err := os.ReadDir(root)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestOCIGarbageInIsAClearError(t *testing.T) {
	good := writeOCIBundle(t, ociSpecOf("true"), "")
	missingRoot := writeOCIBundle(t, ociSpecOf("true"), "/nonexistent/rootfs")
	noArgs := writeOCIBundle(t, ociSpecOf(), "")
	terminal := ociSpecOf("sh")
	terminal.Process.Terminal = true
	tty := writeOCIBundle(t, terminal, "")
	inContainer := ociSpecOf("true")
	inContainer.Hooks = &specs.Hooks{StartContainer: []specs.Hook{{Path: "/bin/true"}}}
	containerHook := writeOCIBundle(t, inContainer, "")
	invalid := t.TempDir()
	os.WriteFile(filepath.Join(invalid, "config.json"), []byte("{not json"), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing rootfs", []string{"create", "--bundle", missingRoot, "c1"}, "root.path /nonexistent/rootfs: no such file or directory"},
		{"invalid config.json", []string{"create", "--bundle", invalid, "c1"}, "config.json is not valid"},
		{"no config.json", []string{"create", "--bundle", t.TempDir(), "c1"}, "no config.json"},
		{"no process args", []string{"create", "--bundle", noArgs, "c1"}, "no process.args"},
		{"a terminal", []string{"create", "--bundle", tty, "c1"}, "process.terminal"},
		{"a hook inside the container", []string{"create", "--bundle", containerHook, "c1"}, "startContainer hooks"},
		{"bad id", []string{"create", "--bundle", good, "../x"}, `invalid container id "../x"`},
		{"no id", []string{"create", "--bundle", good}, `"create" requires exactly 1 argument(s)`},
		{"unknown command", []string{"crate", "c1"}, `unknown command "crate"; did you mean "create"?`},
		{"unknown flag", []string{"create", "--bundel", good, "c1"}, "unknown flag: --bundel"},
		{"unknown global flag", []string{"--rot", "x", "state", "c1"}, "unknown flag: --rot"},
		{"bad signal name", []string{"kill", "c1", "SIGBOGUS"}, `unknown signal "SIGBOGUS"`},
		{"bad signal number", []string{"kill", "c1", "99"}, `unknown signal "99"`},
		{"state of nothing", []string{"state", "c1"}, "container does not exist"},
		{"start of nothing", []string{"start", "c1"}, "container does not exist"},
		{"kill of nothing", []string{"kill", "c1"}, "container does not exist"},
		{"delete of nothing", []string{"delete", "c1"}, "container does not exist"},
		{"no command", nil, "no command given"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := ociRoot(t)
			log := filepath.Join(t.TempDir(), "log.json")
			args := append([]string{"oci", "--root", root, "--log", log, "--log-format", "json"}, tc.args...)
			status, stdout, stderr := runMain(args...)
			if status != 1 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("status %d, stdout %q, stderr %q; want 1 and one line with %q", status, stdout, stderr, tc.want)
			}
			// A global flag that does not parse leaves no --log to
			// write to.
			if tc.name != "unknown global flag" {
				if m := lastLogLine(t, log); m["level"] != "error" || m["msg"] != strings.TrimSpace(stderr) || m["time"] == "" {
					t.Fatalf("log %v; want the error, %q", m, stderr)
				}
			}
			if left := rootEntries(t, root); len(left) != 0 {
				t.Fatalf("left in --root: %q", left)
			}
		})
	}
	// delete --force of nothing is no error, as with runc.
	if status, _, stderr := runMain("oci", "--root", ociRoot(t), "delete", "--force", "c1"); status != 0 {
		t.Fatalf("delete --force of nothing: %d %q", status, stderr)
	}
}

func TestOCISecondCreateOfAnIDIsRefused(t *testing.T) {
	root := ociRoot(t)
	c, err := ocirt.Open(root, "taken")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Make(); err != nil {
		t.Fatal(err)
	}
	st := ocirt.State{OCIVersion: specs.Version, ID: "taken", Status: specs.StateStopped, Bundle: "/b", ExitStatus: 3}
	if err := c.Write(st); err != nil {
		t.Fatal(err)
	}
	bundle := writeOCIBundle(t, ociSpecOf("true"), "")
	status, _, stderr := runMain("oci", "--root", root, "create", "--bundle", bundle, "taken")
	if status != 1 || strings.TrimSpace(stderr) != "container with given ID already exists" {
		t.Fatalf("status %d stderr %q", status, stderr)
	}
	if got, err := c.Read(); err != nil || got.Bundle != "/b" || got.ExitStatus != 3 {
		t.Fatalf("the first container's state changed: %+v %v", got, err)
	}
}

func TestOCIStateAndListPrintRuncsJSON(t *testing.T) {
	root := ociRoot(t)
	c, _ := ocirt.Open(root, "box")
	c.Make()
	created := time.Date(2026, 12, 7, 1, 2, 3, 0, time.UTC)
	// Written as running by a monitor that is gone: stopped, pid 0.
	c.Write(ocirt.State{OCIVersion: specs.Version, ID: "box", Pid: 99999, MonitorPid: 99999, Status: specs.StateRunning,
		Bundle: "/b", Rootfs: "/b/rootfs", Created: created, Annotations: map[string]string{"a": "b"}, ExitStatus: -1})
	status, stdout, stderr := runMain("oci", "--root", root, "state", "box")
	if status != 0 {
		t.Fatalf("state: %d %q", status, stderr)
	}
	want := `{
  "ociVersion": "1.2.1",
  "id": "box",
  "pid": 0,
  "status": "stopped",
  "bundle": "/b",
  "rootfs": "/b/rootfs",
  "created": "2026-12-07T01:02:03Z",
  "annotations": {
    "a": "b"
  },
  "owner": ""
}
`
	if stdout != want {
		t.Fatalf("state printed\n%s\nwant\n%s", stdout, want)
	}
	status, stdout, _ = runMain("oci", "--root", root, "list", "--format", "json")
	var list []map[string]any
	if err := json.Unmarshal([]byte(stdout), &list); status != 0 || err != nil || len(list) != 1 || list[0]["id"] != "box" {
		t.Fatalf("list: %d %q %v", status, stdout, err)
	}
	if status, stdout, _ = runMain("oci", "--root", root, "list", "-q"); status != 0 || stdout != "box\n" {
		t.Fatalf("list -q: %d %q", status, stdout)
	}
	// kill and start of a stopped container: runc's errors.
	if status, _, stderr = runMain("oci", "--root", root, "kill", "box", "KILL"); status != 1 || strings.TrimSpace(stderr) != "container not running" {
		t.Fatalf("kill: %d %q", status, stderr)
	}
	if status, _, stderr = runMain("oci", "--root", root, "start", "box"); status != 1 || !strings.Contains(stderr, "cannot start a container that has stopped") {
		t.Fatalf("start: %d %q", status, stderr)
	}
	if status, stdout, _ = runMain("oci", "--root", root, "ps", "--format", "json", "box"); status != 0 || stdout != "[]\n" {
		t.Fatalf("ps of a stopped container: %d %q", status, stdout)
	}
	if status, _, stderr = runMain("oci", "--root", root, "exec", "box", "true"); status != 1 || strings.TrimSpace(stderr) != "cannot exec in a stopped container" {
		t.Fatalf("exec: %d %q", status, stderr)
	}
	if status, _, stderr = runMain("oci", "--root", root, "delete", "box"); status != 0 || len(rootEntries(t, root)) != 0 {
		t.Fatalf("delete: %d %q, left %q", status, stderr, rootEntries(t, root))
	}
}

func TestOCIDeleteRunsPoststopHooks(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox for the hook")
	}
	out := filepath.Join(t.TempDir(), "poststop")
	spec := ociSpecOf("true")
	spec.Hooks = &specs.Hooks{Poststop: []specs.Hook{{Path: "/bin/busybox", Args: []string{"busybox", "sh", "-c", "cat > " + out}}}}
	bundle := writeOCIBundle(t, spec, "")
	root := ociRoot(t)
	c, _ := ocirt.Open(root, "hooked")
	c.Make()
	c.Write(ocirt.State{OCIVersion: specs.Version, ID: "hooked", Status: specs.StateStopped, Bundle: bundle, ExitStatus: 0})
	if status, _, stderr := runMain("oci", "--root", root, "delete", "hooked"); status != 0 {
		t.Fatalf("delete: %d %q", status, stderr)
	}
	var st specs.State
	b, err := os.ReadFile(out)
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil || st.ID != "hooked" || st.Status != specs.StateStopped || st.Bundle != bundle {
		t.Fatalf("poststop hook's stdin: %s (%v)", b, err)
	}
	if c.Exists() {
		t.Fatal("the state directory is left")
	}
}

func TestOCISpecAndFeatures(t *testing.T) {
	dir := t.TempDir()
	if status, _, stderr := runMain("oci", "spec", "--bundle", dir); status != 0 {
		t.Fatalf("spec: %d %q", status, stderr)
	}
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	var spec specs.Spec
	if err == nil {
		err = json.Unmarshal(b, &spec)
	}
	if err != nil || spec.Version != specs.Version || spec.Root.Path != "rootfs" || len(spec.Process.Args) == 0 {
		t.Fatalf("config.json: %v\n%s", err, b)
	}
	if status, _, stderr := runMain("oci", "spec", "--bundle", dir); status != 1 || !strings.Contains(stderr, "exists") {
		t.Fatalf("spec over config.json: %d %q", status, stderr)
	}
	status, stdout, _ := runMain("oci", "features")
	var f map[string]any
	if err := json.Unmarshal([]byte(stdout), &f); status != 0 || err != nil || f["ociVersionMax"] != specs.Version {
		t.Fatalf("features: %d %v\n%s", status, err, stdout)
	}
}

// TestOCIFailedBootLeavesNothing runs create with bin/capsule and a
// kernel that is none: the monitor fails, create says why, and nothing is
// left in --root, no pid file either.
func TestOCIFailedBootLeavesNothing(t *testing.T) {
	bin := binary(t)
	notKernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(notKernel, []byte("not a kernel"), 0o644)
	t.Setenv("CAPSULE_KERNEL", notKernel)
	t.Setenv("CAPSULE_INITRD", notKernel)
	root := ociRoot(t)
	dir := t.TempDir()
	log, pidFile := filepath.Join(dir, "log.json"), filepath.Join(dir, "pid")
	bundle := writeOCIBundle(t, ociSpecOf("true"), "")
	cmd := capsuleCmd(t, bin, "oci", "--root", root, "--log", log, "--log-format", "json", "create", "--bundle", bundle, "--pid-file", pidFile, "c1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	status := exitStatus(t, cmd.Run())
	if status != 1 || !strings.Contains(stderr.String(), "not a Linux bzImage") || strings.Count(stderr.String(), "\n") != 1 {
		t.Fatalf("status %d stderr %q", status, stderr.String())
	}
	if m := lastLogLine(t, log); m["msg"] != strings.TrimSpace(stderr.String()) {
		t.Fatalf("log %v", m)
	}
	if left := rootEntries(t, root); len(left) != 0 {
		t.Fatalf("left in --root: %q", left)
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Fatalf("pid file: %v", err)
	}
}

// TestOCIAsCapsuleOCI calls bin/capsule through a link named capsule-oci:
// runc's command line without the oci word.
func TestOCIAsCapsuleOCI(t *testing.T) {
	link := filepath.Join(t.TempDir(), ociName)
	if err := os.Symlink(binary(t), link); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(link, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "capsule-oci version ") || !strings.Contains(string(out), "spec: "+specs.Version) {
		t.Fatalf("capsule-oci --version: %q %v", out, err)
	}
	cmd := exec.Command(link, "--root", ociRoot(t), "state", "nosuch")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); exitStatus(t, err) != 1 || strings.TrimSpace(stderr.String()) != "container does not exist" {
		t.Fatalf("capsule-oci state nosuch: %v %q", err, stderr.String())
	}
}
