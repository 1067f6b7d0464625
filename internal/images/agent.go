package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// AgentPackage is the guest agent's main package, relative to the module
// root.
const AgentPackage = "cmd/capsule-agent"

// agentRecipe changes whenever the agent's build command or the archive's
// layout changes.
const agentRecipe = "capsule-images-agent-initramfs-1"

// haveAgent reports whether agent-initramfs has an agent to pack.
func (b *builder) haveAgent() bool {
	if b.Agent != "" {
		return true
	}
	fi, err := os.Stat(filepath.Join(b.Root, filepath.FromSlash(AgentPackage)))
	return err == nil && fi.IsDir()
}

// agentInitramfs packs the agent as /init. Its key is the agent binary's
// hash: go build runs every time (its own cache makes that quick), and
// with -trimpath and -buildvcs=false the binary changes exactly when the
// agent's sources, its dependencies or the Go toolchain do.
func (b *builder) agentInitramfs(ctx context.Context) (map[string]string, string, error) {
	agent, err := b.agentBinary(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", AgentInitramfs, err)
	}
	sum := sha256.Sum256(agent)
	key := Key([]byte(agentRecipe), sum[:])
	dir, hit, err := b.cached(ctx, AgentInitramfs, key, []string{AgentInitramfsFile}, func(ctx context.Context, out, scratch string) error {
		f, err := os.Create(filepath.Join(out, AgentInitramfsFile))
		if err != nil {
			return err
		}
		if err := writeArchive(f, agentEntries(agent)); err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", AgentInitramfs, err)
		}
		return f.Close()
	})
	if err != nil {
		return nil, "", err
	}
	return map[string]string{AgentInitramfsFile: filepath.Join(dir, AgentInitramfsFile)}, how(hit), nil
}

// agentBinary returns Options.Agent's file, or builds <Root>/cmd/capsule-agent
// as a static, stripped Linux x86-64 binary; either way it checks that the
// binary can run as /init.
func (b *builder) agentBinary(ctx context.Context) ([]byte, error) {
	if b.Agent != "" {
		data, err := os.ReadFile(b.Agent)
		if err != nil {
			return nil, err
		}
		if err := checkStaticELF(data); err != nil {
			return nil, fmt.Errorf("%s: %w", b.Agent, err)
		}
		return data, nil
	}
	if !b.haveAgent() {
		return nil, fmt.Errorf("no %s in %s (give a prebuilt agent with --agent)", AgentPackage, b.Root)
	}
	if _, err := exec.LookPath("go"); err != nil {
		return nil, fmt.Errorf("building %s needs the go command in PATH: %w", AgentPackage, err)
	}
	tmp, err := os.MkdirTemp("", "capsule-agent-build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "capsule-agent")
	env := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"}
	args := []string{"build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", bin, "./" + AgentPackage}
	if out, err := command(ctx, b.Root, env, "go", args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, tail(out, 20))
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	if err := checkStaticELF(data); err != nil {
		return nil, fmt.Errorf("go build %s: %w", AgentPackage, err)
	}
	return data, nil
}

// checkStaticELF fails unless data is an x86-64 ELF executable without a
// program interpreter: the kernel runs /init before any dynamic loader or
// library is there.
func checkStaticELF(data []byte) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || (f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN) {
		return fmt.Errorf("an ELF %v file for %v, not an x86-64 executable", f.Type, f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("dynamically linked (it has a program interpreter); /init must be static (CGO_ENABLED=0)")
		}
	}
	return nil
}

// agentEntries lists the agent initramfs, sorted by name: the agent as
// /init, /dev/console (the kernel opens it for /init's standard streams;
// with an initramfs it mounts no devtmpfs of its own), and the directories
// the agent mounts /proc, /sys and /tmp on. The agent makes the others.
func agentEntries(agent []byte) []entry {
	es := []entry{
		{name: "dev", mode: fs.ModeDir | 0o755},
		{name: "dev/console", mode: 0o600, rdev: [2]uint32{5, 1}, isChar: true},
		{name: "init", mode: 0o755, data: agent},
		{name: "proc", mode: fs.ModeDir | 0o555},
		{name: "sys", mode: fs.ModeDir | 0o555},
		{name: "tmp", mode: fs.ModeDir | fs.ModeSticky | 0o777},
	}
	sort.Slice(es, func(i, j int) bool { return es[i].name < es[j].name })
	return es
}
