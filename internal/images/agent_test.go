package images

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/capsule-vm/capsule/internal/cpio"
)

// fakeAgentRoot writes a module that looks like capsule's to the images
// builder: go.mod and a cmd/capsule-agent printing msg.
func fakeAgentRoot(t *testing.T, msg string) string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command in PATH")
	}
	r := t.TempDir()
	writeAgentSource(t, r, msg)
	if err := os.WriteFile(filepath.Join(r, "go.mod"), []byte("module github.com/capsule-vm/capsule\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return r
}

func writeAgentSource(t *testing.T, root, msg string) {
	t.Helper()
	dir := filepath.Join(root, filepath.FromSlash(AgentPackage))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"" + msg + "\") }\n"
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
}

// buildAgentArchive runs Build(agent-initramfs) and returns the archive and
// the build's log.
func buildAgentArchive(t *testing.T, opts Options) ([]byte, string) {
	t.Helper()
	var log bytes.Buffer
	opts.Stderr = &log
	out := filepath.Join(t.TempDir(), AgentInitramfsFile)
	written, err := Build(t.Context(), opts, AgentInitramfs, out)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if !slices.Equal(written, []string{out}) {
		t.Errorf("Build wrote %q, want %q", written, out)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return data, log.String()
}

// checkAgentArchive checks the archive's entries and returns /init.
func checkAgentArchive(t *testing.T, data []byte) []byte {
	t.Helper()
	entries, err := ListInitramfs(data)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	byName := map[string]cpio.Entry{}
	for _, e := range entries {
		names = append(names, e.Name)
		byName[e.Name] = e
	}
	if want := []string{"dev", "dev/console", "init", "proc", "sys", "tmp"}; !slices.Equal(names, want) {
		t.Fatalf("entries %q, want %q", names, want)
	}
	for name, mode := range map[string]uint32{
		"dev": cpio.TypeDir | 0o755, "dev/console": cpio.TypeChar | 0o600, "init": cpio.TypeReg | 0o755,
		"proc": cpio.TypeDir | 0o555, "sys": cpio.TypeDir | 0o555, "tmp": cpio.TypeDir | 0o1777,
	} {
		if e := byName[name]; e.Mode != mode || e.Mtime != 0 {
			t.Errorf("/%s: mode %o mtime %d, want mode %o mtime 0", name, e.Mode, e.Mtime, mode)
		}
	}
	if c := byName["dev/console"]; c.Major != 5 || c.Minor != 1 {
		t.Errorf("/dev/console is %d,%d, want 5,1", c.Major, c.Minor)
	}
	return byName["init"].Data
}

// runInit runs the packed /init on this host and returns its output.
func runInit(t *testing.T, init []byte) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(bin, init, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin).CombinedOutput()
	if err != nil {
		t.Fatalf("run the packed /init: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestAgentInitramfsBuildsTheAgent builds cmd/capsule-agent of a module
// from source: the archive holds it as /init, the same sources hit the
// cache, and changed sources give a new archive.
func TestAgentInitramfsBuildsTheAgent(t *testing.T) {
	r := fakeAgentRoot(t, "agent v1")
	cache := t.TempDir()
	opts := Options{Root: r, CacheDir: cache}
	first, log := buildAgentArchive(t, opts)
	if !strings.Contains(log, "agent-initramfs: built") {
		t.Errorf("first build: %s", log)
	}
	if got := runInit(t, checkAgentArchive(t, first)); got != "agent v1" {
		t.Errorf("/init printed %q, want %q", got, "agent v1")
	}
	again, log := buildAgentArchive(t, opts)
	if !strings.Contains(log, "agent-initramfs: cached") || !bytes.Equal(first, again) {
		t.Errorf("same sources: not the cached archive: %s", log)
	}
	// A fresh cache gives the same bytes.
	fresh, _ := buildAgentArchive(t, Options{Root: r, CacheDir: t.TempDir()})
	if !bytes.Equal(first, fresh) {
		t.Error("two builds of the same sources gave different archives")
	}
	writeAgentSource(t, r, "agent v2")
	changed, log := buildAgentArchive(t, opts)
	if !strings.Contains(log, "agent-initramfs: built") {
		t.Errorf("changed sources: %s", log)
	}
	if got := runInit(t, checkAgentArchive(t, changed)); got != "agent v2" {
		t.Errorf("/init printed %q after the change, want %q", got, "agent v2")
	}
}

// TestAgentInitramfsPacksAGivenAgent packs a prebuilt binary
// (Options.Agent) without looking for cmd/capsule-agent.
func TestAgentInitramfsPacksAGivenAgent(t *testing.T) {
	r := fakeAgentRoot(t, "prebuilt")
	bin := filepath.Join(t.TempDir(), "agent")
	cmd := exec.Command("go", "build", "-o", bin, "./"+AgentPackage)
	cmd.Dir = r
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	want, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := buildAgentArchive(t, Options{Root: t.TempDir(), CacheDir: t.TempDir(), Agent: bin})
	if init := checkAgentArchive(t, data); !bytes.Equal(init, want) {
		t.Error("/init is not the given binary")
	}
}

// TestAgentInitramfsRefusesBadAgents checks that a missing agent, a
// dynamically linked one and a file that is no program are clear errors
// that leave nothing in the cache or at the output.
func TestAgentInitramfsRefusesBadAgents(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "text")
	if err := os.WriteFile(text, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		agent string
		want  string
	}{
		{"no agent", "", "no cmd/capsule-agent in"},
		{"missing file", filepath.Join(dir, "missing"), "no such file"},
		{"not ELF", text, "not an ELF executable"},
	}
	if dyn, err := exec.LookPath("true"); err == nil {
		if data, err := os.ReadFile(dyn); err == nil && checkStaticELF(data) != nil &&
			strings.Contains(checkStaticELF(data).Error(), "dynamically linked") {
			cases = append(cases, struct{ name, agent, want string }{"dynamic", dyn, "dynamically linked"})
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cache, out := t.TempDir(), filepath.Join(t.TempDir(), AgentInitramfsFile)
			opts := Options{Root: t.TempDir(), CacheDir: cache, Agent: tc.agent, Stderr: &bytes.Buffer{}}
			_, err := Build(t.Context(), opts, AgentInitramfs, out)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %v, want one line with %q", err, tc.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Error("an output was written")
			}
			if entries, _ := os.ReadDir(cache); len(entries) != 0 {
				t.Errorf("the cache holds %v", entries)
			}
		})
	}
}
