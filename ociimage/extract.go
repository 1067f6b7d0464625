package ociimage

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// unpacker applies layer archives, lowest first, to the directory rootFD.
// Every name an entry gives is resolved with openat2 and RESOLVE_IN_ROOT,
// and its last element is created with O_EXCL and never followed, so no
// archive can write, link or remove anything outside the root: not with
// absolute names, not through a symbolic link an earlier entry made (a
// link is followed as the guest would follow it, inside the root), not
// with a hard link to a file outside.
type unpacker struct {
	ctx    context.Context
	rootFD int
	// chown gives entries the archive's owners (only root may); without
	// it they belong to the user unpacking.
	chown  bool
	limits limits

	entries, bytes int64
	// dirs holds each directory's final mode and times, applied after
	// the last layer: until then directories stay 0700 so that an
	// unprivileged unpacker can fill a directory the image makes 0555.
	dirs map[string]dirMeta
	// layer holds the names the current layer wrote, and their parents:
	// an opaque marker or whiteout hides only what lower layers wrote.
	layer   map[string]struct{}
	skipped []string
	buf     []byte
}

type dirMeta struct {
	mode         uint32
	atime, mtime time.Time
	hasTime      bool
}

type limits struct {
	entries, fileSize, totalSize int64
}

func newUnpacker(ctx context.Context, rootFD int, chown bool, l limits) *unpacker {
	return &unpacker{
		ctx:    ctx,
		rootFD: rootFD,
		chown:  chown,
		limits: l,
		dirs:   map[string]dirMeta{".": {mode: 0o755}},
		buf:    make([]byte, 1<<20),
	}
}

// applyLayer applies one uncompressed layer archive.
func (u *unpacker) applyLayer(r io.Reader) error {
	u.layer = map[string]struct{}{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return corrupt(err)
		}
		u.entries++
		if u.entries > u.limits.entries {
			return fmt.Errorf("%w: more than %d entries", ErrLimit, u.limits.entries)
		}
		if u.entries%1024 == 0 {
			if err := u.ctx.Err(); err != nil {
				return err
			}
		}
		if err := u.entry(hdr, tr); err != nil {
			return fmt.Errorf("%s: %w", quoteName(hdr.Name), err)
		}
	}
}

// quoteName quotes an archive name for an error when it holds anything
// that would break the error's line.
func quoteName(n string) string {
	if strings.ContainsFunc(n, func(r rune) bool { return r < ' ' || r == 0x7f }) || n == "" {
		return fmt.Sprintf("%q", n)
	}
	return n
}

// cleanName turns an archive name into a clean path relative to the
// root ("." for the root itself): leading slashes and "./" go, as tar
// does; a ".." element is refused.
func cleanName(n string) (string, error) {
	for _, el := range strings.Split(n, "/") {
		if el == ".." {
			return "", fmt.Errorf("%w: the name has a \"..\" element", ErrUnsafe)
		}
	}
	if strings.IndexByte(n, 0) >= 0 {
		return "", fmt.Errorf("%w: the name has a NUL byte", ErrCorrupt)
	}
	c := path.Clean("/" + n)
	if c == "/" {
		return ".", nil
	}
	return c[1:], nil
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // PAX records for the entries that follow, not a file
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		if hdr.Typeflag == tar.TypeDir {
			u.dirs["."] = metaOf(hdr)
			if u.chown {
				return unix.Fchownat(u.rootFD, ".", hdr.Uid, hdr.Gid, 0)
			}
		}
		return nil
	}
	dir, base := splitName(name)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return u.whiteout(dir, base)
	}
	switch hdr.Typeflag {
	case tar.TypeChar, tar.TypeBlock:
		kind := "character"
		if hdr.Typeflag == tar.TypeBlock {
			kind = "block"
		}
		u.skipped = append(u.skipped, fmt.Sprintf("%s (%s device %d:%d)", name, kind, hdr.Devmajor, hdr.Devminor))
		return nil
	case tar.TypeDir, tar.TypeReg, tar.TypeGNUSparse, tar.TypeSymlink, tar.TypeLink, tar.TypeFifo:
	default:
		u.skipped = append(u.skipped, fmt.Sprintf("%s (tar entry type %q)", name, hdr.Typeflag))
		return nil
	}
	if u.chown && (hdr.Uid < 0 || hdr.Gid < 0 || int64(hdr.Uid) >= 1<<32-1 || int64(hdr.Gid) >= 1<<32-1) {
		return fmt.Errorf("%w: owner %d:%d is out of range", ErrCorrupt, hdr.Uid, hdr.Gid)
	}
	parent, err := u.mkdirAll(dir)
	if err != nil {
		return fmt.Errorf("create its directory: %w", err)
	}
	defer unix.Close(parent)
	u.wrote(name)
	switch hdr.Typeflag {
	case tar.TypeDir:
		return u.mkdir(parent, name, base, hdr)
	case tar.TypeSymlink:
		return u.symlink(parent, base, hdr)
	case tar.TypeLink:
		return u.hardlink(parent, name, base, hdr)
	case tar.TypeFifo:
		return u.fifo(parent, base, hdr)
	default:
		return u.file(parent, base, hdr, r)
	}
}

// wrote records that the current layer wrote name, and so also its parents.
func (u *unpacker) wrote(name string) {
	for name != "." {
		if _, ok := u.layer[name]; ok {
			return
		}
		u.layer[name] = struct{}{}
		name = path.Dir(name)
	}
}

func metaOf(hdr *tar.Header) dirMeta {
	at, mt := times(hdr)
	return dirMeta{mode: perm(hdr), atime: at, mtime: mt, hasTime: true}
}

// perm is the permission bits of an entry, setuid, setgid and sticky
// included.
func perm(hdr *tar.Header) uint32 { return uint32(hdr.Mode) & 0o7777 }

func times(hdr *tar.Header) (atime, mtime time.Time) {
	mtime = hdr.ModTime
	if mtime.IsZero() {
		mtime = time.Unix(0, 0)
	}
	atime = hdr.AccessTime
	if atime.IsZero() {
		atime = mtime
	}
	return atime, mtime
}

func timespec(t time.Time) unix.Timespec {
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

// setTimes sets the times of base in parent, not following a link.
func setTimes(parent int, base string, atime, mtime time.Time) error {
	ts := []unix.Timespec{timespec(atime), timespec(mtime)}
	return unix.UtimesNanoAt(parent, base, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// mkdirAll opens the directory dir (an O_PATH descriptor), creating it
// and any missing parents, resolved inside the root.
func (u *unpacker) mkdirAll(dir string) (int, error) {
	fd, err := openDirIn(u.rootFD, dir)
	if err != unix.ENOENT || dir == "." {
		return fd, err
	}
	pdir, base := splitName(dir)
	pfd, err := u.mkdirAll(pdir)
	if err != nil {
		return -1, err
	}
	err = unix.Mkdirat(pfd, base, 0o700)
	unix.Close(pfd)
	if err == nil {
		if _, ok := u.dirs[dir]; !ok {
			u.dirs[dir] = dirMeta{mode: 0o755}
		}
	} else if err != unix.EEXIST {
		return -1, err
	}
	fd, err = openDirIn(u.rootFD, dir)
	if err == unix.ENOENT {
		return -1, fmt.Errorf("%s is a symbolic link to a missing directory: %w", dir, err)
	}
	return fd, err
}

// replace clears the way for a new entry base in parent: anything there
// goes, a whole tree if it is a directory.
func replace(parent int, base string) error {
	return removeAt(parent, base)
}

func (u *unpacker) mkdir(parent int, name, base string, hdr *tar.Header) error {
	st, ok, err := lstatAt(parent, base)
	if err != nil {
		return err
	}
	if ok && st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := replace(parent, base); err != nil {
			return err
		}
		ok = false
	}
	if !ok {
		if err := unix.Mkdirat(parent, base, 0o700); err != nil {
			return err
		}
	}
	if u.chown {
		if err := unix.Fchownat(parent, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	u.dirs[name] = metaOf(hdr)
	return nil
}

func (u *unpacker) file(parent int, base string, hdr *tar.Header, r io.Reader) error {
	if hdr.Size < 0 || hdr.Size > u.limits.fileSize {
		return fmt.Errorf("%w: %d bytes, over the %d-byte limit for one file", ErrLimit, hdr.Size, u.limits.fileSize)
	}
	if u.bytes+hdr.Size > u.limits.totalSize {
		return fmt.Errorf("%w: the image holds over %d bytes", ErrLimit, u.limits.totalSize)
	}
	u.bytes += hdr.Size
	const flags = unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(parent, base, flags, 0o600)
	if err == unix.EEXIST {
		if err := replace(parent, base); err != nil {
			return err
		}
		fd, err = unix.Openat(parent, base, flags, 0o600)
	}
	if err != nil {
		return err
	}
	w := fdWriter(fd)
	_, err = io.CopyBuffer(w, r, u.buf)
	if err != nil && !errors.As(err, new(unix.Errno)) {
		err = corrupt(err)
	}
	if err == nil && u.chown {
		err = unix.Fchown(fd, hdr.Uid, hdr.Gid)
	}
	if err == nil {
		// After the chown, which clears setuid and setgid bits.
		err = unix.Fchmod(fd, perm(hdr))
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	at, mt := times(hdr)
	return setTimes(parent, base, at, mt)
}

// fdWriter writes to a raw descriptor, so that a failed write's errno
// comes back as it is.
type fdWriter int

func (w fdWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Write(int(w), p[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

func (u *unpacker) symlink(parent int, base string, hdr *tar.Header) error {
	if hdr.Linkname == "" {
		return fmt.Errorf("%w: a symbolic link with an empty target", ErrCorrupt)
	}
	err := unix.Symlinkat(hdr.Linkname, parent, base)
	if err == unix.EEXIST {
		if err := replace(parent, base); err != nil {
			return err
		}
		err = unix.Symlinkat(hdr.Linkname, parent, base)
	}
	if err != nil {
		return err
	}
	return u.finishNode(parent, base, hdr)
}

// finishNode gives a link or FIFO just made its owner and times.
func (u *unpacker) finishNode(parent int, base string, hdr *tar.Header) error {
	if u.chown {
		if err := unix.Fchownat(parent, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	at, mt := times(hdr)
	return setTimes(parent, base, at, mt)
}

func (u *unpacker) fifo(parent int, base string, hdr *tar.Header) error {
	err := unix.Mknodat(parent, base, unix.S_IFIFO|0o600, 0)
	if err == unix.EEXIST {
		if err := replace(parent, base); err != nil {
			return err
		}
		err = unix.Mknodat(parent, base, unix.S_IFIFO|0o600, 0)
	}
	if err != nil {
		return err
	}
	if err := u.finishNode(parent, base, hdr); err != nil {
		return err
	}
	// Opening a FIFO would block; an O_PATH descriptor names it safely.
	fd, err := unix.Openat(parent, base, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return chmodFD(fd, perm(hdr))
}

// hardlink links base to the file the entry's link name gives, which an
// earlier entry or layer made: the target is opened inside the root
// without following a final link, and the new name is made from that
// descriptor, so no path is looked up twice.
func (u *unpacker) hardlink(parent int, name, base string, hdr *tar.Header) error {
	target, err := cleanName(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("hard link target: %w", err)
	}
	if target == "." {
		return fmt.Errorf("%w: a hard link to the root directory", ErrCorrupt)
	}
	if target == name {
		return nil
	}
	tfd, err := openat2(u.rootFD, target, unix.O_PATH|unix.O_NOFOLLOW, inRoot)
	if err != nil {
		return fmt.Errorf("hard link to %s: %w", quoteName(hdr.Linkname), err)
	}
	defer unix.Close(tfd)
	var st unix.Stat_t
	if err := unix.Fstat(tfd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("%w: a hard link to the directory %s", ErrCorrupt, quoteName(hdr.Linkname))
	}
	err = linkFD(tfd, parent, base)
	if err == unix.EEXIST {
		if cur, ok, _ := lstatAt(parent, base); ok && cur.Dev == st.Dev && cur.Ino == st.Ino {
			return nil
		}
		if err := replace(parent, base); err != nil {
			return err
		}
		err = linkFD(tfd, parent, base)
	}
	return err
}

// linkFD makes base in parent a new name of the file fd refers to:
// linkat with AT_EMPTY_PATH where the kernel allows it (it wants
// CAP_DAC_READ_SEARCH), else through the descriptor's /proc/self/fd link.
func linkFD(fd, parent int, base string) error {
	err := unix.Linkat(fd, "", parent, base, unix.AT_EMPTY_PATH)
	if err == unix.ENOENT || err == unix.EPERM {
		err = linkProc(fd, parent, base)
	}
	return err
}

// linkProc is linkFD through /proc/self/fd: following that magic link
// reaches the very file fd refers to, a symbolic link itself included.
func linkProc(fd, parent int, base string) error {
	return unix.Linkat(unix.AT_FDCWD, procFD(fd), parent, base, unix.AT_SYMLINK_FOLLOW)
}

// whiteout applies a whiteout (".wh.NAME": NAME of lower layers is
// gone) or an opaque marker (everything lower layers put in the
// directory is gone).
func (u *unpacker) whiteout(dir, base string) error {
	pfd, err := openDirIn(u.rootFD, dir)
	if err == unix.ENOENT || err == unix.ENOTDIR {
		return nil // nothing below to hide
	}
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if base == opaqueMarker {
		fd, err := unix.Openat(pfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return u.opaque(fd, dir)
	}
	victim := base[len(whiteoutPrefix):]
	if victim == "" || victim == "." || victim == ".." {
		return fmt.Errorf("%w: a whiteout with no name", ErrCorrupt)
	}
	if _, ok := u.layer[path.Join(dir, victim)]; ok {
		return nil // this layer's own entry: a whiteout hides lower layers only
	}
	return removeAt(pfd, victim)
}

// opaque removes from the directory fd (named dir) what lower layers put
// there, keeping what this layer wrote, and recursing into this layer's
// directories, which may hold lower layers' entries too.
func (u *unpacker) opaque(fd int, dir string) error {
	prefix := ""
	if dir != "." {
		prefix = dir + "/"
	}
	mine := map[string]bool{}
	err := emptyDir(fd, func(n string) bool {
		_, ok := u.layer[prefix+n]
		if ok {
			mine[n] = true
		}
		return ok
	})
	if err != nil {
		return err
	}
	for n := range mine {
		sub, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.ENOTDIR || err == unix.ELOOP {
			continue
		}
		if err != nil {
			return err
		}
		err = u.opaque(sub, prefix+n)
		unix.Close(sub)
		if err != nil {
			return err
		}
	}
	return nil
}

// finish gives every directory its final mode and times, deepest first,
// so that a parent's times are set after its children change and a
// parent made unsearchable does not stop its children's.
func (u *unpacker) finish() error {
	names := make([]string, 0, len(u.dirs))
	for n := range u.dirs {
		names = append(names, n)
	}
	depth := func(n string) int {
		if n == "." {
			return -1
		}
		return strings.Count(n, "/")
	}
	sort.Slice(names, func(i, j int) bool {
		di, dj := depth(names[i]), depth(names[j])
		if di != dj {
			return di > dj
		}
		return names[i] < names[j]
	})
	for _, n := range names {
		if err := u.finishDir(n, u.dirs[n]); err != nil {
			return fmt.Errorf("%s: %w", quoteName(n), err)
		}
	}
	return nil
}

func (u *unpacker) finishDir(name string, m dirMeta) error {
	parent, base := u.rootFD, "."
	if name != "." {
		// A directory a later layer replaced, or moved under a link,
		// is not where it was: skip it.
		pfd, err := openat2(u.rootFD, path.Dir(name), unix.O_PATH|unix.O_DIRECTORY, unix.RESOLVE_BENEATH|unix.RESOLVE_NO_SYMLINKS|unix.RESOLVE_NO_XDEV)
		if err != nil {
			return nil
		}
		defer unix.Close(pfd)
		parent, base = pfd, path.Base(name)
	}
	fd, err := unix.Openat(parent, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	err = unix.Fchmod(fd, m.mode)
	unix.Close(fd)
	if err != nil || !m.hasTime {
		return err
	}
	return setTimes(parent, base, m.atime, m.mtime)
}
