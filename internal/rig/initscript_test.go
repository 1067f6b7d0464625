package rig

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunScript sources the run script in a real shell, with /bin/sh as
// the "test binary", and checks the arguments and environment it gets.
func TestRunScript(t *testing.T) {
	dir := t.TempDir()
	args := []string{"-c", `printf '[%s]' "$@"; echo; env | sort`, "argv0", "a b", "it's", "", "-test.run=X$"}
	env := []string{"CAPSULE_X=1 2", "CAPSULE_RIG=0", "GODEBUG=a=b"}
	script := runScript("capsule-rig-tag", Config{Dir: dir, Binary: "/bin/sh", Args: args, Env: env}, "")
	cmd := exec.Command("/bin/sh", "-c", script+`cd "$RIG_DIR" && echo "tag=$RIG_TAG dir=$(pwd)" && rig_test`)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s\nscript:\n%s", err, out, script)
	}
	dir, _ = filepath.EvalSymlinks(dir)
	want := []string{
		"tag=capsule-rig-tag dir=" + dir,
		"[a b][it's][][-test.run=X$]",
		"CAPSULE_RIG=1", "CAPSULE_X=1 2", "GODEBUG=a=b", "HOME=/root", "PATH=" + guestPath, "TMPDIR=/tmp",
	}
	got := strings.Split(strings.TrimSpace(string(out)), "\n")
	var kept []string
	for _, l := range got {
		if !strings.HasPrefix(l, "PWD=") && !strings.HasPrefix(l, "SHLVL=") && !strings.HasPrefix(l, "_=") {
			kept = append(kept, l)
		}
	}
	if strings.Join(kept, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(kept, "\n"), strings.Join(want, "\n"))
	}
}

func TestInitScriptSyntax(t *testing.T) {
	out, err := exec.Command("/bin/sh", "-n", "-c", initScript).CombinedOutput()
	if err != nil {
		t.Fatalf("sh -n: %v\n%s", err, out)
	}
}
