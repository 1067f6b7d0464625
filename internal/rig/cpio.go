package rig

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"
)

// Mode bits of the newc cpio format (those of stat(2)).
const (
	cpioTypeMask = 0o170000
	cpioTypeDir  = 0o040000
	cpioTypeReg  = 0o100000
	cpioTypeLink = 0o120000
	cpioTypeChar = 0o020000
)

const cpioTrailer = "TRAILER!!!"

// cpioWriter writes a newc ("070701") cpio archive, the format the Linux
// kernel unpacks as an initramfs. Names are stored without a leading slash.
// Parent directories must be written before their entries. The first error
// sticks and is returned by every later call.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	off int64
	err error
}

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: w, ino: 1}
}

// cpioHeader is the part of an entry's header that varies.
type cpioHeader struct {
	name         string
	mode         uint32 // type and permission bits
	size         int64
	mtime        time.Time
	major, minor uint32 // device numbers of a device node
}

// Dir writes a directory entry.
func (c *cpioWriter) Dir(name string, perm fs.FileMode) error {
	return c.entry(cpioHeader{name: name, mode: cpioTypeDir | unixPerm(perm)}, nil)
}

// File writes a regular file whose size bytes come from r.
func (c *cpioWriter) File(name string, perm fs.FileMode, size int64, mtime time.Time, r io.Reader) error {
	h := cpioHeader{name: name, mode: cpioTypeReg | unixPerm(perm), size: size, mtime: mtime}
	return c.entry(h, r)
}

// Bytes writes a regular file holding data.
func (c *cpioWriter) Bytes(name string, perm fs.FileMode, data []byte) error {
	return c.File(name, perm, int64(len(data)), time.Time{}, bytes.NewReader(data))
}

// Symlink writes a symbolic link to target.
func (c *cpioWriter) Symlink(name, target string) error {
	h := cpioHeader{name: name, mode: cpioTypeLink | 0o777, size: int64(len(target))}
	return c.entry(h, strings.NewReader(target))
}

// CharDev writes a character device node.
func (c *cpioWriter) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	h := cpioHeader{name: name, mode: cpioTypeChar | unixPerm(perm), major: major, minor: minor}
	return c.entry(h, nil)
}

// Close writes the trailer. It does not close the underlying writer.
func (c *cpioWriter) Close() error {
	c.ino = 0
	return c.entry(cpioHeader{name: cpioTrailer}, nil)
}

func (c *cpioWriter) entry(h cpioHeader, data io.Reader) error {
	if c.err != nil {
		return c.err
	}
	name := strings.TrimLeft(h.name, "/")
	if name == "" {
		name = "."
	}
	nlink := 1
	if h.mode&cpioTypeMask == cpioTypeDir {
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
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
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

func (c *cpioWriter) write(b []byte) {
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
func (c *cpioWriter) pad() {
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
