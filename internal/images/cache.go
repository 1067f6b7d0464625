package images

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"github.com/capsule-vm/capsule/internal/rig"
	"io"
	"os"
	"path/filepath"
)

// EnvCache overrides the cache directory.
const EnvCache = "CAPSULE_IMAGES_CACHE"

// DefaultCacheDir returns $CAPSULE_IMAGES_CACHE, or
// $XDG_CACHE_HOME/capsule/images (~/.cache/capsule/images).
func DefaultCacheDir() (string, error) {
	if d := os.Getenv(EnvCache); d != "" {
		return filepath.Abs(d)
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find cache directory (set %s): %w", EnvCache, err)
	}
	return filepath.Join(base, "capsule", "images"), nil
}

// Key hashes the parts of a target's inputs into a cache key. Each part is
// length-prefixed, so moving bytes from one part to the next changes the
// key.
func Key(parts ...[]byte) string {
	h := sha256.New()
	var n [8]byte
	for _, p := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))[:20]
}

// buildFunc fills out with a target's results; scratch is an empty
// directory on the same file system for everything else.
type buildFunc func(ctx context.Context, out, scratch string) error

// cached returns <cache>/<target>-<key>, which must hold files, building it
// first when missing. hit reports whether it was there already.
func (b *builder) cached(ctx context.Context, target, key string, files []string, build buildFunc) (dir string, hit bool, err error) {
	dir = filepath.Join(b.cache, target+"-"+key)
	if complete(dir, files) {
		return dir, true, nil
	}
	unlock, err := b.lock(ctx, target)
	if err != nil {
		return "", false, err
	}
	defer unlock()
	if complete(dir, files) {
		return dir, true, nil
	}
	// Holding the target's lock, any temporary directory of this target is
	// left over from a build that was killed: a kernel tree is over 1 GB.
	if stale, _ := filepath.Glob(filepath.Join(b.cache, ".tmp-"+target+"-*")); len(stale) > 0 {
		for _, d := range stale {
			os.RemoveAll(d)
		}
	}
	tmp, err := os.MkdirTemp(b.cache, ".tmp-"+target+"-")
	if err != nil {
		return "", false, fmt.Errorf("%s: %w", target, err)
	}
	defer os.RemoveAll(tmp)
	out, scratch := filepath.Join(tmp, "out"), filepath.Join(tmp, "scratch")
	for _, d := range []string{out, scratch} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", false, fmt.Errorf("%s: %w", target, err)
		}
	}
	if err := build(ctx, out, scratch); err != nil {
		return "", false, err
	}
	if !complete(out, files) {
		return "", false, fmt.Errorf("%s: the build did not write all of %v", target, files)
	}
	// An incomplete entry (only a crash between rename and nothing else
	// could leave one) is replaced.
	os.RemoveAll(dir)
	if err := os.Rename(out, dir); err != nil {
		return "", false, fmt.Errorf("%s: publish %s: %w", target, dir, err)
	}
	return dir, false, nil
}

// complete reports whether dir holds all files as regular files.
func complete(dir string, files []string) bool {
	for _, f := range files {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || !fi.Mode().IsRegular() {
			return false
		}
	}
	return true
}

// lock takes the exclusive flock on <cache>/<target>.lock and says so
// when it has to wait. The returned function releases it.
func (b *builder) lock(ctx context.Context, target string) (func(), error) {
	name := filepath.Join(b.cache, target+".lock")
	return rig.LockFile(ctx, name, func() {
		b.logf("%s: waiting for %s (another build of this target is running)", target, name)
	})
}

// install copies src to dst through a temporary file in dst's directory
// and a rename: readers of dst see the old file or the whole new one, and
// the cache is never shared with the output.
func install(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".tmp-"+filepath.Base(dst)+"-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return os.Rename(tmp.Name(), dst)
}
