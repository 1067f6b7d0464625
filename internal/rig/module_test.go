package rig

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// makeTree creates files (path -> content) under dir.
func makeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFindModuleRoot(t *testing.T) {
	root := t.TempDir()
	makeTree(t, root, map[string]string{
		"go.mod":                "module example.com/m\n",
		"pkg/sub/x.go":          "package sub\n",
		"nested/go.mod":         "module example.com/n\n",
		"nested/inner/y.go":     "package inner\n",
		"pkg/go.mod/not-a-file": "",
	})
	cases := []struct{ dir, want string }{
		{root, root},
		{filepath.Join(root, "pkg/sub"), root},
		{filepath.Join(root, "pkg"), root}, // pkg/go.mod is a directory
		{filepath.Join(root, "nested/inner"), filepath.Join(root, "nested")},
	}
	for _, c := range cases {
		got, ok := findModuleRoot(c.dir)
		if !ok || got != c.want {
			t.Errorf("findModuleRoot(%s) = %s, %v; want %s", c.dir, got, ok, c.want)
		}
	}
	if got, ok := findModuleRoot("/"); ok {
		t.Errorf("findModuleRoot(/) = %s, want none", got)
	}
}

func TestGuestTrees(t *testing.T) {
	root := t.TempDir()
	makeTree(t, root, map[string]string{
		"go.mod":               "module example.com/m\n",
		"testdata/a":           "a",
		"bin/tool":             "t",
		"pkg/testdata/b":       "b",
		"testdata/inner/x.go":  "package inner\n",
		"other/testdata/skip":  "",
		"nobin/testdata/.keep": "",
	})
	got := guestTrees(filepath.Join(root, "pkg"))
	want := []string{filepath.Join(root, "testdata"), filepath.Join(root, "bin"), filepath.Join(root, "pkg/testdata")}
	if !slices.Equal(got, want) {
		t.Errorf("guestTrees(pkg) = %q, want %q", got, want)
	}
	// A package inside <root>/testdata adds nothing of its own.
	got = guestTrees(filepath.Join(root, "testdata/inner"))
	want = want[:2]
	if !slices.Equal(got, want) {
		t.Errorf("guestTrees(testdata/inner) = %q, want %q", got, want)
	}
}

func TestWalkTreeSkipsLargeAndSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, map[string]string{"small": "x", "sub/f": "y"})
	big, err := os.Create(filepath.Join(dir, "big"))
	if err != nil {
		t.Fatal(err)
	}
	if err := big.Truncate(maxCopiedFile + 1); err != nil {
		t.Fatal(err)
	}
	big.Close()
	if err := os.Symlink("small", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	entries, err := walkTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		rel, _ := filepath.Rel(dir, e.path)
		names = append(names, rel)
	}
	if want := []string{".", "small", "sub", "sub/f"}; !slices.Equal(names, want) {
		t.Errorf("walkTree = %q, want %q", names, want)
	}
}
