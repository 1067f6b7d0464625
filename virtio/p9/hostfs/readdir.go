package hostfs

import (
	"encoding/binary"

	ninep "github.com/hugelgupf/p9/p9"
	"golang.org/x/sys/unix"
)

// direntSize is what one entry takes in an Rreaddir: qid[13] offset[8]
// type[1] name[s].
const direntSize = 13 + 8 + 1 + 2

// readdirBuf bounds the bytes of one getdents64 call.
const readdirBuf = 64 << 10

// Readdir implements p9.File: the entries of the opened directory from
// offset (0, or the offset of an entry a previous call gave: the host's
// position after it), as many as fit in count bytes of an Rreaddir. Each
// entry's type is the host's d_type (DT_DIR, ...), as Linux's v9fs
// expects.
func (f *file) Readdir(offset uint64, count uint32) (_ ninep.Dirents, err error) {
	defer guestErrno(&err)
	unlock, err := f.use()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if f.io < 0 || f.typ != unix.S_IFDIR {
		return nil, unix.EBADF
	}
	f.dirMu.Lock()
	defer f.dirMu.Unlock()
	if _, err := unix.Seek(f.io, int64(offset), 0); err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(f.io, &st); err != nil {
		return nil, err
	}
	buf := make([]byte, min(max(int(count), 4096), readdirBuf))
	var ents ninep.Dirents
	used := 0
	for {
		n, err := unix.Getdents(f.io, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return ents, nil
		}
		for b := buf[:n]; len(b) >= 19; {
			// linux_dirent64: ino[8] off[8] reclen[2] type[1] name, NUL.
			reclen := int(binary.LittleEndian.Uint16(b[16:]))
			if reclen < 19 || reclen > len(b) {
				return ents, nil
			}
			name := b[19:reclen]
			for i, c := range name {
				if c == 0 {
					name = name[:i]
					break
				}
			}
			if used += direntSize + len(name); used > int(count) {
				return ents, nil
			}
			typ := b[18]
			ents = append(ents, ninep.Dirent{
				QID:    ninep.QID{Type: dtQIDType(typ), Path: f.fs.qidPath(st.Dev, binary.LittleEndian.Uint64(b))},
				Offset: binary.LittleEndian.Uint64(b[8:]),
				Type:   ninep.QIDType(typ),
				Name:   string(name),
			})
			b = b[reclen:]
		}
	}
}

// dtQIDType is the QID type of a directory entry of type dt.
func dtQIDType(dt byte) ninep.QIDType {
	switch dt {
	case unix.DT_DIR:
		return ninep.TypeDir
	case unix.DT_LNK:
		return ninep.TypeSymlink
	}
	return ninep.TypeRegular
}
