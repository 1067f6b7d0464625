package images

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/capsule-vm/capsule/internal/cpio"
	"github.com/capsule-vm/capsule/internal/rig"
)

// stockKernel fetches the rig's kernel package into the rig's cache, where
// it is keyed by package and version, and returns its bzImage.
func (b *builder) stockKernel(ctx context.Context) (map[string]string, string, error) {
	cfg, err := rig.ConfigFromEnv(b.Environ)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", StockKernel, err)
	}
	cfg.Stderr = b.Stderr
	dir, id, err := rig.FetchKernel(ctx, cfg)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", StockKernel, err)
	}
	b.logf("%s: %s, from %s", StockKernel, id, dir)
	mods := filepath.Join(dir, StockModulesFile)
	if _, err := os.Stat(mods); err != nil {
		if err := writeModulesArchive(dir, mods); err != nil {
			return nil, "", fmt.Errorf("%s: %w", StockKernel, err)
		}
	}
	return map[string]string{StockKernelFile: filepath.Join(dir, "vmlinuz"), StockModulesFile: mods}, "ready", nil
}

// writeModulesArchive writes, atomically, a cpio archive of the stock
// kernel's modules for capsule's test guests (rig.StockGuestModules) as
// /lib/modules/NAME.ko. Appended to the test initramfs (Linux unpacks
// concatenated archives), it lets the guest's /init load them.
func writeModulesArchive(dir, dst string) error {
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	w.Dir("lib", 0o755)
	w.Dir("lib/modules", 0o755)
	for _, m := range rig.StockGuestModules {
		data, err := os.ReadFile(filepath.Join(dir, m.Name+".ko"))
		if err != nil {
			return err
		}
		w.Bytes("lib/modules/"+m.Name+".ko", 0o644, data)
	}
	if err := w.Close(); err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
