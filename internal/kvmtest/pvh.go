package kvmtest

import (
	"bytes"
	"errors"
	"fmt"
)

// pvhNoteHeader is how the PVH entry note of an x86-64 vmlinux starts:
// namesz 4, descsz 8 (the entry as a .quad), type 18
// (XEN_ELFNOTE_PHYS32_ENTRY), name "Xen\0".
var pvhNoteHeader = []byte{4, 0, 0, 0, 8, 0, 0, 0, 18, 0, 0, 0, 'X', 'e', 'n', 0}

// HidePVHNote hides the PVH entry note of a vmlinux in place by setting
// its type to 0, so that the kernel is no longer booted through PVH but
// as Firecracker boots a vmlinux (64-bit entry, zero page). It wants
// exactly one such note.
func HidePVHNote(data []byte) error {
	i := bytes.Index(data, pvhNoteHeader)
	if i < 0 {
		return errors.New("no PVH entry note")
	}
	if j := bytes.LastIndex(data, pvhNoteHeader); j != i {
		return fmt.Errorf("PVH entry note header at %#x and %#x", i, j)
	}
	data[i+8] = 0
	return nil
}
