package images

import (
	"context"
	"fmt"
	"path/filepath"

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
	return map[string]string{StockKernelFile: filepath.Join(dir, "vmlinuz")}, "ready", nil
}
