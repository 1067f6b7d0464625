package rig

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/capsule-vm/capsule/internal/cpio"
)

// writeInitrd writes the initrd of one run to w: the cached archives (the
// base archive, then the QEMU one if any), each followed by zero padding to
// a multiple of 4 bytes (the kernel looks for an uncompressed archive only
// there, and skips zeros between archives), and the uncompressed per-run
// archive, with the extra files.
func writeInitrd(w io.Writer, archives []string, extra []baseInput, cfg Config, script string) error {
	var off int64
	for _, a := range archives {
		n, err := copyArchive(w, a)
		if err != nil {
			return err
		}
		off += n
		if pad := off % 4; pad != 0 {
			if _, err := w.Write(make([]byte, 4-pad)); err != nil {
				return fmt.Errorf("write initrd: %w", err)
			}
			off += 4 - pad
		}
	}
	return writeRunArchive(w, cfg, extra, script)
}

// copyArchive copies the cached archive name to w.
func copyArchive(w io.Writer, name string) (int64, error) {
	f, err := os.Open(name)
	if err != nil {
		return 0, fmt.Errorf("open cached archive: %w", err)
	}
	defer f.Close()
	n, err := io.Copy(w, f)
	if err != nil {
		return n, fmt.Errorf("copy %s: %w", name, err)
	}
	return n, nil
}

// writeRunArchive writes the per-run archive: the test binary, the run
// script, the working directory and the module files the test may need,
// all at their host paths, and the extra files at their guest paths. In the
// host-root mode, module trees found in the host's root are left out.
func writeRunArchive(w io.Writer, cfg Config, extra []baseInput, script string) error {
	a := &runArchive{cw: cpio.NewWriter(w), seen: map[string]bool{}}
	var binds []string
	if cfg.HostRoot {
		binds = append(hostRootBinds(cfg), "/tmp")
	}
	// In the host-root mode, a binary that the host's root has is run
	// from there; copied, /bin/sh, say, would replace the guest's own.
	if !cfg.HostRoot || coveredBy(cfg.Binary, binds) {
		if err := a.file(cfg.Binary, true); err != nil {
			return fmt.Errorf("add test binary: %w", err)
		}
	}
	if err := a.dirs(cfg.Dir); err != nil {
		return err
	}
	for _, tree := range guestTrees(cfg.Dir) {
		if cfg.HostRoot && !coveredBy(tree, binds) {
			continue // the test finds it in the host's root
		}
		if err := a.tree(tree); err != nil {
			return err
		}
	}
	for _, in := range extra {
		if err := a.dirs(filepath.Dir(in.guest)); err != nil {
			return err
		}
		if err := copyIntoArchive(a.cw, in.guest, in.host, in.mode); err != nil {
			return fmt.Errorf("add %s: %w", in.guest, err)
		}
	}
	if err := a.dirs(filepath.Dir(runScriptPath)); err != nil {
		return err
	}
	if err := a.cw.Bytes(runScriptPath, 0o644, []byte(script)); err != nil {
		return err
	}
	return a.cw.Close()
}

// runArchive writes host paths into a cpio archive once each, parents
// first.
type runArchive struct {
	cw   *cpio.Writer
	seen map[string]bool
}

// dirs writes dir and its missing ancestors, with their host permissions.
func (a *runArchive) dirs(dir string) error {
	dir = filepath.Clean(dir)
	if dir == "/" || a.seen[dir] {
		return nil
	}
	if err := a.dirs(filepath.Dir(dir)); err != nil {
		return err
	}
	perm := os.FileMode(0o755)
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		perm = fi.Mode() & (fs.ModePerm | fs.ModeSticky | fs.ModeSetgid | fs.ModeSetuid)
	}
	a.seen[dir] = true
	return a.cw.Dir(dir, perm)
}

// file writes a regular host file, read whole so that a file changing
// meanwhile cannot corrupt the archive. Unless required, a file that cannot
// be read is left out.
func (a *runArchive) file(name string, required bool) error {
	if a.seen[name] {
		return nil
	}
	fi, err := os.Stat(name)
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", name)
	}
	var data []byte
	if err == nil {
		data, err = os.ReadFile(name)
	}
	if err != nil {
		if required {
			return err
		}
		return nil
	}
	if err := a.dirs(filepath.Dir(name)); err != nil {
		return err
	}
	a.seen[name] = true
	return a.cw.File(name, fi.Mode(), int64(len(data)), fi.ModTime(), bytes.NewReader(data))
}

// tree writes the directories and small regular files under root.
func (a *runArchive) tree(root string) error {
	entries, err := walkTree(root)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.info.IsDir() {
			err = a.dirs(e.path)
		} else {
			err = a.file(e.path, false)
		}
		if err != nil {
			return fmt.Errorf("add %s: %w", e.path, err)
		}
	}
	return nil
}
