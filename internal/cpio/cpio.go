// Package cpio writes and reads newc ("070701") cpio archives, the format
// the Linux kernel unpacks as an initramfs.
//
// The writer stores names without a leading slash, numbers inodes from 1 in
// write order and gives every entry uid and gid 0, so the same calls always
// give the same bytes. The reader is meant for tests and tools that check
// what an archive holds.
package cpio

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
	"time"
)

// Mode bits of the newc format (those of stat(2)).
const (
	TypeMask    = 0o170000
	TypeDir     = 0o040000
	TypeReg     = 0o100000
	TypeSymlink = 0o120000
	TypeChar    = 0o020000
)

// Trailer is the name of the entry that ends an archive.
const Trailer = "TRAILER!!!"

const (
	magic      = "070701"
	headerSize = 110
)

// Writer writes a newc cpio archive. Parent directories must be written
// before their entries. The first error sticks and is returned by every
// later call.
type Writer struct {
	w   io.Writer
	ino uint32
	off int64
	err error
}

// NewWriter returns a Writer that writes the archive to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, ino: 1}
}

// header is the part of an entry's header that varies.
type header struct {
	name         string
	mode         uint32 // type and permission bits
	size         int64
	mtime        time.Time
	major, minor uint32 // device numbers of a device node
}

// Dir writes a directory entry.
func (c *Writer) Dir(name string, perm fs.FileMode) error {
	return c.entry(header{name: name, mode: TypeDir | unixPerm(perm)}, nil)
}

// File writes a regular file whose size bytes come from r. A zero mtime is
// stored as 0.
func (c *Writer) File(name string, perm fs.FileMode, size int64, mtime time.Time, r io.Reader) error {
	h := header{name: name, mode: TypeReg | unixPerm(perm), size: size, mtime: mtime}
	return c.entry(h, r)
}

// Bytes writes a regular file holding data, with mtime 0.
func (c *Writer) Bytes(name string, perm fs.FileMode, data []byte) error {
	return c.File(name, perm, int64(len(data)), time.Time{}, bytes.NewReader(data))
}

// Symlink writes a symbolic link to target.
func (c *Writer) Symlink(name, target string) error {
	h := header{name: name, mode: TypeSymlink | 0o777, size: int64(len(target))}
	return c.entry(h, strings.NewReader(target))
}

// CharDev writes a character device node.
func (c *Writer) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	h := header{name: name, mode: TypeChar | unixPerm(perm), major: major, minor: minor}
	return c.entry(h, nil)
}

// Close writes the trailer. It does not close the underlying writer.
func (c *Writer) Close() error {
	c.ino = 0
	return c.entry(header{name: Trailer}, nil)
}

func (c *Writer) entry(h header, data io.Reader) error {
	if c.err != nil {
		return c.err
	}
	name := strings.TrimLeft(h.name, "/")
	if name == "" {
		name = "."
	}
	nlink := 1
	if h.mode&TypeMask == TypeDir {
		nlink = 2
	}
	var mtime int64
	if !h.mtime.IsZero() && h.mtime.Unix() > 0 {
		mtime = h.mtime.Unix()
	}
	ino := c.ino
	if ino != 0 {
		c.ino++
	}
	hdr := fmt.Sprintf(magic+"%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, h.mode, 0, 0, nlink, mtime, h.size, 0, 0, h.major, h.minor, len(name)+1, 0)
	c.write([]byte(hdr + name + "\x00"))
	c.pad()
	if data != nil && c.err == nil {
		n, err := io.CopyN(c.w, data, h.size)
		c.off += n
		if err != nil {
			c.err = fmt.Errorf("cpio: write %s: %w", name, err)
		}
	}
	c.pad()
	return c.err
}

func (c *Writer) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	if err != nil {
		c.err = fmt.Errorf("cpio: %w", err)
	}
}

// pad aligns the output to 4 bytes.
func (c *Writer) pad() {
	if n := c.off % 4; n != 0 {
		c.write(make([]byte, 4-n))
	}
}

// unixPerm converts the permission bits of an fs.FileMode, setuid, setgid
// and sticky included, to their stat(2) values.
func unixPerm(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

// Entry is an archive entry read back by Parse.
type Entry struct {
	Name         string // without a leading slash, as stored
	Mode         uint32 // type and permission bits
	Mtime        int64
	Major, Minor uint32 // device numbers of a device node
	Data         []byte // file contents, or a symbolic link's target
}

// Type returns the entry's type bits (TypeDir, TypeReg, ...).
func (e Entry) Type() uint32 { return e.Mode & TypeMask }

// Perm returns the entry's permission bits, setuid, setgid and sticky
// included.
func (e Entry) Perm() uint32 { return e.Mode &^ TypeMask }

// Parse reads one newc archive from the start of b up to its trailer,
// checking the 4-byte alignment of headers and data. It returns the
// entries, the trailer left out, and the number of bytes the archive takes,
// trailer and padding included.
func Parse(b []byte) ([]Entry, int, error) {
	var out []Entry
	off := 0
	for {
		if off+headerSize > len(b) {
			return nil, off, fmt.Errorf("cpio: offset %d: truncated header (no trailer)", off)
		}
		if string(b[off:off+len(magic)]) != magic {
			return nil, off, fmt.Errorf("cpio: offset %d: no newc header", off)
		}
		var f [13]uint32
		for i := range f {
			p := off + len(magic) + 8*i
			v, err := strconv.ParseUint(string(b[p:p+8]), 16, 32)
			if err != nil {
				return nil, off, fmt.Errorf("cpio: offset %d: header field %d: %w", off, i, err)
			}
			f[i] = uint32(v)
		}
		size, nameSize := int(f[6]), int(f[11])
		if nameSize < 1 || off+headerSize+nameSize > len(b) {
			return nil, off, fmt.Errorf("cpio: offset %d: bad name size %d", off, nameSize)
		}
		name := string(b[off+headerSize : off+headerSize+nameSize-1])
		start := align4(off + headerSize + nameSize)
		if start+size > len(b) {
			return nil, off, fmt.Errorf("cpio: %s: truncated data", name)
		}
		e := Entry{Name: name, Mode: f[1], Mtime: int64(f[5]), Major: f[9], Minor: f[10], Data: b[start : start+size]}
		off = align4(start + size)
		if off > len(b) {
			off = len(b)
			if name != Trailer {
				return nil, off, fmt.Errorf("cpio: %s: truncated padding", name)
			}
		}
		if name == Trailer {
			return out, off, nil
		}
		out = append(out, e)
	}
}

// ParseAll is Parse for a b that holds exactly one archive.
func ParseAll(b []byte) ([]Entry, error) {
	entries, n, err := Parse(b)
	if err != nil {
		return nil, err
	}
	if n != len(b) {
		return nil, errors.New("cpio: " + strconv.Itoa(len(b)-n) + " bytes after the trailer")
	}
	return entries, nil
}

func align4(n int) int { return (n + 3) &^ 3 }
