package ociimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// Sentinel errors. Every error [Unpack] returns is one line that names
// the archive, and wraps one of these where it fits, for [errors.Is].
var (
	// ErrNotFound: the archive or directory does not exist.
	ErrNotFound = errors.New("no such file or directory")
	// ErrNotImage: the file is not an image archive or layout that
	// Unpack knows (no manifest.json or index.json, not a tar).
	ErrNotImage = errors.New("not a container image")
	// ErrCorrupt: the archive is truncated or damaged: a tar or
	// compression error, a missing blob, content whose digest is not
	// the one the manifest or configuration gives.
	ErrCorrupt = errors.New("corrupt image")
	// ErrPlatform: no linux/amd64 image, or several of them.
	ErrPlatform = errors.New("no single linux/amd64 image")
	// ErrUnsafe: an entry names a path with a ".." element.
	ErrUnsafe = errors.New("unsafe entry")
	// ErrLimit: a file, the total size or the entry count is over the
	// limit in [Options].
	ErrLimit = errors.New("over a limit")
)

// Default limits; see [Options].
const (
	DefaultMaxEntries   = 4 << 20
	DefaultMaxFileSize  = 256 << 30
	DefaultMaxTotalSize = 1 << 40
)

// DefaultPath is the PATH an image gets when its configuration sets none.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// EnvCache overrides the default cache directory.
const EnvCache = "CAPSULE_ROOTFS_CACHE"

// Options tunes [Unpack]; the zero value is the defaults.
type Options struct {
	// CacheDir holds the unpacked images; "" is [DefaultCacheDir].
	CacheDir string
	// MaxEntries is the most tar entries all layers together may hold;
	// 0 is DefaultMaxEntries.
	MaxEntries int64
	// MaxFileSize is the largest one file may be; 0 is DefaultMaxFileSize.
	MaxFileSize int64
	// MaxTotalSize is the most bytes all files together may hold (and
	// the most a gzip-compressed archive may expand to); 0 is
	// DefaultMaxTotalSize.
	MaxTotalSize int64
}

// Image is an unpacked image.
type Image struct {
	// Digest is the digest of the image configuration ("sha256:..."),
	// which names the cache entry.
	Digest string
	// RootFS is the directory holding the image's root file system.
	// It is shared by every run of the image: mount it read-only, or
	// put a writable layer over it.
	RootFS string
	// Config is what a run of the image needs.
	Config Config
	// Cached reports that RootFS was unpacked by an earlier call.
	Cached bool
	// Skipped lists the entries not created, one line each, such as
	// "dev/null (character device 1:3)"; empty when Cached.
	Skipped []string
}

// Config is the part of an image configuration a run needs.
type Config struct {
	Entrypoint []string
	Cmd        []string
	// Env always sets PATH: to [DefaultPath] when the image sets none.
	Env        []string
	WorkingDir string
	// User is the image's user, for [LookupUser]; "" is root.
	User string
}

// Argv is the command a run executes: the entrypoint followed by args,
// or by the image's Cmd when args is empty, as `docker run IMAGE args`.
func (c Config) Argv(args []string) []string {
	if len(args) == 0 {
		args = c.Cmd
	}
	return append(append([]string(nil), c.Entrypoint...), args...)
}

// DefaultCacheDir returns $CAPSULE_ROOTFS_CACHE, or
// $XDG_CACHE_HOME/capsule/rootfs (~/.cache/capsule/rootfs).
func DefaultCacheDir() (string, error) {
	if d := os.Getenv(EnvCache); d != "" {
		return filepath.Abs(d)
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find the rootfs cache directory (set %s): %w", EnvCache, err)
	}
	return filepath.Join(base, "capsule", "rootfs"), nil
}

func (o Options) withDefaults() (Options, error) {
	if o.CacheDir == "" {
		d, err := DefaultCacheDir()
		if err != nil {
			return o, err
		}
		o.CacheDir = d
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if o.MaxFileSize <= 0 {
		o.MaxFileSize = DefaultMaxFileSize
	}
	if o.MaxTotalSize <= 0 {
		o.MaxTotalSize = DefaultMaxTotalSize
	}
	return o, nil
}

// Unpack unpacks the image archive (or OCI layout directory) into the
// cache, unless it is there already, and returns it. Concurrent calls
// for one image, in one process or several, unpack it once; the others
// wait and use it. An unpack that fails or is cancelled through ctx
// leaves no rootfs behind; one that is killed leaves a temporary
// directory beside it, which the next unpack of the image removes.
func Unpack(ctx context.Context, archive string, opts Options) (*Image, error) {
	img, err := unpack(ctx, archive, opts)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", archive, err)
	}
	return img, nil
}

func unpack(ctx context.Context, archive string, opts Options) (*Image, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.CacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("create the cache directory: %w", err)
	}
	src, err := openSource(archive, opts)
	if err != nil {
		return nil, err
	}
	defer src.close()
	configName, err := src.img.ConfigName()
	if err != nil {
		return nil, corrupt(err)
	}
	cfg, err := src.img.ConfigFile()
	if err != nil {
		return nil, corrupt(fmt.Errorf("configuration: %w", err))
	}
	if p := cfg.Platform(); p != nil && !isTarget(*p) && !(p.OS == "" && p.Architecture == "") {
		return nil, fmt.Errorf("%w: the image is %s", ErrPlatform, p)
	}
	out := &Image{Digest: configName.String(), Config: configOf(cfg)}
	entry := filepath.Join(opts.CacheDir, configName.Hex)
	out.RootFS = filepath.Join(entry, "rootfs")
	if isDir(out.RootFS) {
		out.Cached = true
		return out, nil
	}
	// 0700: the rootfs has the image's world-writable directories
	// (/tmp); no other host user may reach them.
	if err := os.MkdirAll(entry, 0o700); err != nil {
		return nil, fmt.Errorf("create the cache entry: %w", err)
	}
	unlock, err := lock(filepath.Join(entry, "lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if isDir(out.RootFS) {
		out.Cached = true
		return out, nil
	}
	// Holding the lock, any temporary directory is a killed unpack's.
	removeStale(entry)
	tmp, err := os.MkdirTemp(entry, tmpPrefix)
	if err != nil {
		return nil, fmt.Errorf("create a temporary directory: %w", err)
	}
	skipped, err := unpackInto(ctx, src.img, cfg, tmp, opts)
	if err != nil {
		removeTree(tmp)
		return nil, err
	}
	if err := publish(tmp, out.RootFS); err != nil {
		return nil, err
	}
	out.Skipped = skipped
	return out, nil
}

// corrupt reports err, met reading the image, as ErrCorrupt, unless it
// already is one of the sentinel errors (or a cancellation); an early
// end of the data reads "truncated".
func corrupt(err error) error {
	for _, s := range []error{ErrCorrupt, ErrNotImage, ErrPlatform, ErrUnsafe, ErrLimit, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, s) {
			return err
		}
	}
	msg := err.Error()
	if errors.Is(err, io.ErrUnexpectedEOF) {
		msg = strings.Replace(msg, io.ErrUnexpectedEOF.Error(), "truncated", 1)
	}
	return fmt.Errorf("%w: %s", ErrCorrupt, msg)
}

func isTarget(p v1.Platform) bool { return p.OS == "linux" && p.Architecture == "amd64" }

func isDir(name string) bool {
	fi, err := os.Lstat(name)
	return err == nil && fi.IsDir()
}

func configOf(cf *v1.ConfigFile) Config {
	c := cf.Config
	out := Config{
		Entrypoint: c.Entrypoint,
		Cmd:        c.Cmd,
		Env:        append([]string(nil), c.Env...),
		WorkingDir: c.WorkingDir,
		User:       c.User,
	}
	hasPath := false
	for _, e := range out.Env {
		if strings.HasPrefix(e, "PATH=") {
			hasPath = true
		}
	}
	if !hasPath {
		out.Env = append(out.Env, DefaultPath)
	}
	return out
}

// unpackInto applies the image's layers to dir, checking each against
// its diff ID, and returns the entries it skipped.
func unpackInto(ctx context.Context, img v1.Image, cfg *v1.ConfigFile, dir string, opts Options) ([]string, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, corrupt(err)
	}
	diffIDs := cfg.RootFS.DiffIDs
	if len(diffIDs) != len(layers) {
		return nil, fmt.Errorf("%w: the manifest has %d layers and the configuration %d diff IDs", ErrCorrupt, len(layers), len(diffIDs))
	}
	rootFD, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(rootFD)
	u := newUnpacker(ctx, rootFD, os.Geteuid() == 0, limits{opts.MaxEntries, opts.MaxFileSize, opts.MaxTotalSize})
	for i, l := range layers {
		if err := applyLayer(u, l, diffIDs[i]); err != nil {
			return nil, fmt.Errorf("layer %d of %d: %w", i+1, len(layers), err)
		}
	}
	if err := u.finish(); err != nil {
		return nil, err
	}
	return u.skipped, nil
}

func applyLayer(u *unpacker, l v1.Layer, diffID v1.Hash) error {
	if diffID.Algorithm != "sha256" {
		return fmt.Errorf("%w: diff ID %s is not sha256", ErrCorrupt, diffID)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return corrupt(err)
	}
	defer rc.Close()
	h := sha256.New()
	r := io.TeeReader(rc, h)
	if err := u.applyLayer(r); err != nil {
		return err
	}
	// The rest (the end-of-archive blocks, padding) counts for the digest.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return corrupt(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != diffID.Hex {
		return fmt.Errorf("%w: its content is sha256:%s, not the diff ID %s", ErrCorrupt, got, diffID)
	}
	return nil
}
