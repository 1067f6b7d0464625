package ociimage

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/capsule-vm/capsule/internal/patherr"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// maxMeta is the most bytes a manifest, index or configuration may have.
const maxMeta = 16 << 20

// source is an opened image; close releases the files it reads.
type source struct {
	img   v1.Image
	files []*os.File
}

func (s *source) close() {
	for _, f := range s.files {
		f.Close()
	}
}

// openSource opens the image in archive: an OCI layout directory, or a
// docker or OCI layout tar archive, gzip-compressed or not.
func openSource(archive string, opts Options) (*source, error) {
	fi, err := os.Stat(archive)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, patherr.Unwrap(err)
	}
	if fi.IsDir() {
		b, err := readFileLimit(filepath.Join(archive, "index.json"))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: a directory with no index.json (not an OCI image layout)", ErrNotImage)
		}
		if err != nil {
			return nil, fmt.Errorf("index.json: %w", err)
		}
		img, err := resolveOCI(dirBlobs(archive), b)
		if err != nil {
			return nil, err
		}
		return &source{img: img}, nil
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: not a regular file or directory", ErrNotImage)
	}
	f, err := os.Open(archive)
	if err != nil {
		return nil, patherr.Unwrap(err)
	}
	src := &source{files: []*os.File{f}}
	img, err := openArchive(src, f, opts)
	if err != nil {
		src.close()
		return nil, err
	}
	src.img = img
	return src, nil
}

func readFileLimit(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLimit(f, maxMeta)
}

func readLimit(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: over %d bytes", ErrLimit, limit)
	}
	return b, nil
}

func openArchive(src *source, f *os.File, opts Options) (v1.Image, error) {
	var magic [2]byte
	n, _ := f.ReadAt(magic[:], 0)
	if n == 2 && magic == [2]byte{0x1f, 0x8b} {
		plain, err := gunzip(f, opts)
		if err != nil {
			return nil, err
		}
		src.files = append(src.files, plain)
		f = plain
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	files, err := indexTar(f, fi.Size(), opts.MaxEntries)
	if err != nil {
		return nil, err
	}
	if _, ok := files["index.json"]; ok {
		b, err := readLimit(files["index.json"].reader(f), maxMeta)
		if err != nil {
			return nil, fmt.Errorf("index.json: %w", err)
		}
		return resolveOCI(tarBlobs{f: f, files: files}, b)
	}
	if _, ok := files["manifest.json"]; ok {
		return dockerImage(f, files)
	}
	return nil, fmt.Errorf("%w: the archive has no manifest.json or index.json (or is truncated)", ErrNotImage)
}

// gunzip expands a gzip-compressed archive into an unlinked temporary
// file in the cache directory, which a crash cannot leave behind.
func gunzip(f *os.File, opts Options) (*os.File, error) {
	zr, err := gzip.NewReader(io.NewSectionReader(f, 0, 1<<62))
	if err != nil {
		return nil, corrupt(fmt.Errorf("gzip: %w", err))
	}
	tmp, err := os.CreateTemp(opts.CacheDir, ".archive-*.tar")
	if err != nil {
		return nil, fmt.Errorf("expand the gzip archive: %w", err)
	}
	os.Remove(tmp.Name())
	n, err := io.Copy(tmp, io.LimitReader(zr, opts.MaxTotalSize+1))
	if err == nil && n > opts.MaxTotalSize {
		err = fmt.Errorf("%w: it expands to over %d bytes", ErrLimit, opts.MaxTotalSize)
	}
	if err != nil {
		tmp.Close()
		var pe *fs.PathError
		if errors.As(err, &pe) || errors.Is(err, ErrLimit) {
			return nil, fmt.Errorf("expand the gzip archive: %w", patherr.Unwrap(err))
		}
		return nil, corrupt(fmt.Errorf("gzip: %w", err))
	}
	return tmp, nil
}

// section is where a regular file's bytes lie in an archive.
type section struct{ off, size int64 }

func (s section) reader(f *os.File) *io.SectionReader {
	return io.NewSectionReader(f, s.off, s.size)
}

// indexTar lists the regular files of the tar archive f, by clean name.
func indexTar(f *os.File, size int64, maxEntries int64) (map[string]section, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	files := map[string]section{}
	tr := tar.NewReader(f)
	for n := int64(0); ; n++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			if n == 0 {
				return nil, fmt.Errorf("%w: an empty tar archive", ErrNotImage)
			}
			return files, nil
		}
		if err != nil {
			if n == 0 {
				return nil, fmt.Errorf("%w: not a tar archive (%v)", ErrNotImage, err)
			}
			return nil, corrupt(err)
		}
		if n >= maxEntries {
			return nil, fmt.Errorf("%w: the archive has over %d entries", ErrLimit, maxEntries)
		}
		if hdr.Typeflag != tar.TypeReg || isSparse(hdr) {
			continue
		}
		off, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, err
		}
		if hdr.Size > size-off {
			return nil, fmt.Errorf("%w: truncated: %s needs %d bytes, the archive ends after %d", ErrCorrupt, quoteName(hdr.Name), hdr.Size, size-off)
		}
		files[path.Clean(strings.TrimPrefix(hdr.Name, "./"))] = section{off, hdr.Size}
	}
}

func isSparse(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// sectionFile is an archive's bytes for tarball's opener: a seekable
// reader (archive/tar then skips over what it does not read) whose Close
// leaves the shared file open.
type sectionFile struct{ *io.SectionReader }

func (sectionFile) Close() error { return nil }

// dockerImage opens a docker archive (manifest.json lists images by
// their configuration and layer files). Of several images it takes the
// one linux/amd64 image, which must have a tag to be found by.
func dockerImage(f *os.File, files map[string]section) (v1.Image, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	opener := func() (io.ReadCloser, error) {
		return sectionFile{io.NewSectionReader(f, 0, fi.Size())}, nil
	}
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, corrupt(fmt.Errorf("manifest.json: %w", err))
	}
	wrap := func(img v1.Image, err error) (v1.Image, error) {
		if err != nil {
			return nil, corrupt(err)
		}
		return img, nil
	}
	switch len(m) {
	case 0:
		return nil, fmt.Errorf("%w: manifest.json lists no image", ErrNotImage)
	case 1:
		return wrap(tarball.Image(opener, nil))
	}
	var found []string
	var match []tarball.Descriptor
	for _, d := range m {
		p := "unknown platform"
		if s, ok := files[path.Clean(d.Config)]; ok {
			var cf struct{ OS, Architecture string }
			if b, err := readLimit(s.reader(f), maxMeta); err == nil && json.Unmarshal(b, &cf) == nil {
				p = cf.OS + "/" + cf.Architecture
				if isTarget(v1.Platform{OS: cf.OS, Architecture: cf.Architecture}) {
					match = append(match, d)
				}
			}
		}
		tag := "untagged " + d.Config
		if len(d.RepoTags) > 0 {
			tag = d.RepoTags[0]
		}
		found = append(found, tag+" ("+p+")")
	}
	if len(match) != 1 || len(match[0].RepoTags) == 0 {
		return nil, fmt.Errorf("%w: manifest.json lists %d images, %d of them linux/amd64: %s", ErrPlatform, len(m), len(match), strings.Join(found, ", "))
	}
	tag, err := name.NewTag(match[0].RepoTags[0])
	if err != nil {
		return nil, fmt.Errorf("%w: tag %q: %v", ErrCorrupt, match[0].RepoTags[0], err)
	}
	return wrap(tarball.Image(opener, &tag))
}
