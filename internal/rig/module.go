package rig

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// maxCopiedFile is the size above which module files are not copied into
// the guest.
const maxCopiedFile = 64 << 20

// findModuleRoot walks up from dir to the first directory holding a go.mod.
// It reports false when there is none.
func findModuleRoot(dir string) (string, bool) {
	dir = filepath.Clean(dir)
	for {
		if fi, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil && fi.Mode().IsRegular() {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// guestTrees returns the host directories whose files are copied into the
// guest for a test run in dir: <root>/testdata, <root>/bin and
// <dir>/testdata, those that exist, without one nested in another.
func guestTrees(dir string) []string {
	var cands []string
	if root, ok := findModuleRoot(dir); ok {
		cands = append(cands, filepath.Join(root, "testdata"), filepath.Join(root, "bin"))
	}
	cands = append(cands, filepath.Join(dir, "testdata"))
	var trees []string
	for _, c := range cands {
		if fi, err := os.Stat(c); err != nil || !fi.IsDir() || coveredBy(c, trees) {
			continue
		}
		trees = append(trees, c)
	}
	return trees
}

// coveredBy reports whether path is one of dirs or lies below one.
func coveredBy(path string, dirs []string) bool {
	for _, d := range dirs {
		if rel, err := filepath.Rel(d, path); err == nil && filepath.IsLocal(rel) {
			return true
		}
	}
	return false
}

// treeEntry is a directory or regular file found under a guest tree.
type treeEntry struct {
	path string
	info fs.FileInfo
}

// walkTree lists the directories and the regular files of at most
// maxCopiedFile bytes under root, parents first. Symbolic links and special
// files are left out, and so are unreadable directories.
func walkTree(root string) ([]treeEntry, error) {
	var out []treeEntry
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrPermission) && path != root {
				return fs.SkipDir
			}
			return err
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("stat %s: %w", path, err)
		}
		if info.Mode().IsRegular() && info.Size() > maxCopiedFile {
			return nil
		}
		out = append(out, treeEntry{path: path, info: info})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", root, err)
	}
	return out, nil
}
