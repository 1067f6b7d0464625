package ociimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// blobStore gives the blobs of an OCI image layout by digest.
type blobStore interface {
	open(h v1.Hash) (io.ReadCloser, error)
}

// dirBlobs is an OCI image layout directory.
type dirBlobs string

func (d dirBlobs) open(h v1.Hash) (io.ReadCloser, error) {
	f, err := os.Open(filepath.Join(string(d), "blobs", h.Algorithm, h.Hex))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: blob %s is missing", ErrCorrupt, h)
	}
	return f, err
}

// tarBlobs is an OCI image layout archive, read in place.
type tarBlobs struct {
	f     *os.File
	files map[string]section
}

func (t tarBlobs) open(h v1.Hash) (io.ReadCloser, error) {
	s, ok := t.files["blobs/"+h.Algorithm+"/"+h.Hex]
	if !ok {
		return nil, fmt.Errorf("%w: blob %s is missing", ErrCorrupt, h)
	}
	return sectionFile{s.reader(t.f)}, nil
}

// readBlob reads the small blob d describes (an index, a manifest, a
// configuration) and checks its size and digest.
func readBlob(bs blobStore, d v1.Descriptor) ([]byte, error) {
	if d.Digest.Algorithm != "sha256" {
		return nil, fmt.Errorf("%w: digest %s is not sha256", ErrCorrupt, d.Digest)
	}
	if d.Size > maxMeta {
		return nil, fmt.Errorf("%w: blob %s has %d bytes", ErrLimit, d.Digest, d.Size)
	}
	rc, err := bs.open(d.Digest)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := readLimit(rc, maxMeta)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	sum := sha256.Sum256(b)
	if hex.EncodeToString(sum[:]) != d.Digest.Hex || (d.Size > 0 && int64(len(b)) != d.Size) {
		return nil, fmt.Errorf("%w: blob %s does not match its digest", ErrCorrupt, d.Digest)
	}
	return b, nil
}

// candidate is an image manifest an index lists.
type candidate struct {
	desc v1.Descriptor
	ref  string // its name, from the annotations, if any
}

// maxIndexDepth bounds indexes nested in indexes.
const maxIndexDepth = 4

// resolveOCI finds the linux/amd64 image of the layout whose index.json
// is index: the only one, or the only one of several.
func resolveOCI(bs blobStore, index []byte) (v1.Image, error) {
	var all []candidate
	var walk func(b []byte, ref string, depth int) error
	walk = func(b []byte, ref string, depth int) error {
		idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
		if err != nil {
			return corrupt(fmt.Errorf("index: %w", err))
		}
		for _, d := range idx.Manifests {
			r := refName(d, ref)
			switch d.MediaType {
			case types.OCIImageIndex, types.DockerManifestList:
				if depth >= maxIndexDepth {
					return fmt.Errorf("%w: indexes nested over %d deep", ErrCorrupt, maxIndexDepth)
				}
				sub, err := readBlob(bs, d)
				if err != nil {
					return err
				}
				if err := walk(sub, r, depth+1); err != nil {
					return err
				}
			case types.OCIManifestSchema1, types.DockerManifestSchema2:
				if d.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
					continue
				}
				all = append(all, candidate{desc: d, ref: r})
			}
		}
		return nil
	}
	if err := walk(index, "", 0); err != nil {
		return nil, err
	}
	var match, unknown []candidate
	var found []string
	seen := map[v1.Hash]bool{}
	for _, c := range all {
		if seen[c.desc.Digest] {
			continue
		}
		seen[c.desc.Digest] = true
		p, err := platformOf(bs, c.desc)
		if err != nil {
			return nil, err
		}
		if p.OS == "unknown" && p.Architecture == "unknown" {
			continue // an attestation, not an image
		}
		ps := p.String()
		if ps == "" {
			ps = "unknown platform"
			unknown = append(unknown, c)
		}
		found = append(found, fmt.Sprintf("%s%s (%s)", refPrefix(c.ref), short(c.desc.Digest), ps))
		if isTarget(p) {
			match = append(match, c)
		}
	}
	if len(found) == 1 && len(unknown) == 1 {
		// The only image, and nothing says it is not linux/amd64.
		match = unknown
	}
	if len(match) != 1 {
		what := "no image"
		if len(found) > 0 {
			what = strings.Join(found, ", ")
		}
		if len(match) == 0 {
			return nil, fmt.Errorf("%w: none of its images is linux/amd64: %s", ErrPlatform, what)
		}
		return nil, fmt.Errorf("%w: %d of its images are linux/amd64: %s", ErrPlatform, len(match), what)
	}
	return ociImageOf(bs, match[0].desc)
}

func refName(d v1.Descriptor, parent string) string {
	for _, k := range []string{"org.opencontainers.image.ref.name", "io.containerd.image.name"} {
		if r := d.Annotations[k]; r != "" {
			return r
		}
	}
	return parent
}

func refPrefix(ref string) string {
	if ref == "" {
		return ""
	}
	return ref + " "
}

func short(h v1.Hash) string {
	s := h.String()
	if len(s) > 19 {
		return s[:19]
	}
	return s
}

// platformOf is the platform of the image d describes: from d, else from
// the image's configuration.
func platformOf(bs blobStore, d v1.Descriptor) (v1.Platform, error) {
	if d.Platform != nil && d.Platform.OS != "" {
		return *d.Platform, nil
	}
	img, err := ociImageOf(bs, d)
	if err != nil {
		return v1.Platform{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return v1.Platform{}, corrupt(fmt.Errorf("configuration: %w", err))
	}
	p := cf.Platform()
	if p == nil {
		return v1.Platform{}, nil
	}
	return *p, nil
}

// ociImage is an image in an OCI layout: its manifest and configuration
// read and checked, its layers read when needed.
type ociImage struct {
	bs        blobStore
	mediaType types.MediaType
	raw       []byte
	manifest  *v1.Manifest
	config    []byte
}

func ociImageOf(bs blobStore, d v1.Descriptor) (v1.Image, error) {
	raw, err := readBlob(bs, d)
	if err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%w: manifest %s: %v", ErrCorrupt, d.Digest, err)
	}
	config, err := readBlob(bs, m.Config)
	if err != nil {
		return nil, err
	}
	mt := m.MediaType
	if mt == "" {
		mt = d.MediaType
	}
	return partial.CompressedToImage(&ociImage{bs: bs, mediaType: mt, raw: raw, manifest: m, config: config})
}

func (i *ociImage) RawConfigFile() ([]byte, error)      { return i.config, nil }
func (i *ociImage) MediaType() (types.MediaType, error) { return i.mediaType, nil }
func (i *ociImage) RawManifest() ([]byte, error)        { return i.raw, nil }

func (i *ociImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for _, d := range i.manifest.Layers {
		if d.Digest == h {
			return &ociLayer{bs: i.bs, desc: d}, nil
		}
	}
	return nil, fmt.Errorf("%w: layer %s is not in the manifest", ErrCorrupt, h)
}

// ociLayer is a layer blob of an OCI layout. Its content is checked
// against the configuration's diff ID as it is unpacked.
type ociLayer struct {
	bs   blobStore
	desc v1.Descriptor
}

func (l *ociLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *ociLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *ociLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }
func (l *ociLayer) Compressed() (io.ReadCloser, error)  { return l.bs.open(l.desc.Digest) }
