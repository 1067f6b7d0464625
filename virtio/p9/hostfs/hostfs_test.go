package hostfs_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/hugelgupf/p9/linux"
	ninep "github.com/hugelgupf/p9/p9"
	"golang.org/x/sys/unix"

	"github.com/capsule-vm/capsule/virtio/p9/hostfs"
)

// share makes a directory with hello.txt and opens it.
func share(t *testing.T, readOnly bool) (string, *hostfs.FS) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fs, err := hostfs.Open(dir, readOnly)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	return dir, fs
}

// connect attaches to fs as the p9 server does (with no uid) and returns
// the root. Every file reached from it is closed when the test ends, and
// the share must then hold no descriptor.
func connect(t *testing.T, fs *hostfs.FS) ninep.File {
	t.Helper()
	tr := &tracker{}
	root, err := fs.Attach(ninep.NoUID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, f := range tr.files {
			f.Close()
		}
		if n := fs.OpenFDs(); n != 0 {
			t.Errorf("%d descriptors still open after every file closed", n)
		}
	})
	return tr.add(root)
}

// tracker records the files a test reached, to close them.
type tracker struct {
	mu    sync.Mutex
	files []ninep.File
}

func (tr *tracker) add(f ninep.File) ninep.File {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.files = append(tr.files, f)
	return &tfile{File: f, tr: tr}
}

// tfile is a backend file whose walks and creations are tracked.
type tfile struct {
	ninep.File
	tr *tracker
}

func unwrap(f ninep.File) ninep.File {
	if t, ok := f.(*tfile); ok {
		return t.File
	}
	return f
}

func (f *tfile) Walk(names []string) ([]ninep.QID, ninep.File, error) {
	q, g, err := f.File.Walk(names)
	if err != nil {
		return q, nil, err
	}
	return q, f.tr.add(g), nil
}

func (f *tfile) Create(name string, flags ninep.OpenFlags, perm ninep.FileMode, uid ninep.UID, gid ninep.GID) (ninep.File, ninep.QID, uint32, error) {
	g, q, n, err := f.File.Create(name, flags, perm, uid, gid)
	if err != nil {
		return nil, q, n, err
	}
	return f.tr.add(g), q, n, nil
}

func (f *tfile) Link(target ninep.File, name string) error {
	return f.File.Link(unwrap(target), name)
}

func (f *tfile) RenameAt(oldName string, newDir ninep.File, newName string) error {
	return f.File.RenameAt(oldName, unwrap(newDir), newName)
}

func walk(t *testing.T, f ninep.File, names ...string) ninep.File {
	t.Helper()
	_, g, err := f.Walk(names)
	if err != nil {
		t.Fatalf("walk %q: %v", names, err)
	}
	return g
}

func readAll(t *testing.T, f ninep.File) string {
	t.Helper()
	if _, _, err := f.Open(ninep.ReadOnly); err != nil {
		t.Fatal(err)
	}
	var b []byte
	buf := make([]byte, 4096)
	for {
		n, err := f.ReadAt(buf, int64(len(b)))
		b = append(b, buf[:n]...)
		if n == 0 || err != nil {
			return string(b)
		}
	}
}

func wantErrno(t *testing.T, what string, err error, want linux.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: error %v, want %v", what, err, want)
	}
}

func TestReadWriteAndChanges(t *testing.T) {
	dir, fs := share(t, false)
	root := connect(t, fs)
	if got := readAll(t, walk(t, root, "hello.txt")); got != "hello from the host\n" {
		t.Errorf("hello.txt = %q", got)
	}

	f, _, _, err := root.Create("guest.txt", ninep.ReadWrite, 0o640, ninep.NoUID, ninep.NoGID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("written by the guest\n"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.FSync(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "guest.txt")); string(b) != "written by the guest\n" {
		t.Errorf("host sees guest.txt = %q", b)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "guest.txt")); fi == nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("guest.txt mode %v, want 0640 (the umask must not apply)", fi.Mode())
	}

	if _, err := root.Mkdir("sub", 0o755, ninep.NoUID, ninep.NoGID); err != nil {
		t.Fatal(err)
	}
	sub := walk(t, root, "sub")
	if err := root.RenameAt("guest.txt", sub, "moved.txt"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "sub", "moved.txt")); err != nil {
		t.Errorf("rename: %v", err)
	}
	if _, err := sub.Symlink("../hello.txt", "link", ninep.NoUID, ninep.NoGID); err != nil {
		t.Fatal(err)
	}
	if target, _ := os.Readlink(filepath.Join(dir, "sub", "link")); target != "../hello.txt" {
		t.Errorf("host link target %q", target)
	}
	if got, err := walk(t, sub, "link").Readlink(); err != nil || got != "../hello.txt" {
		t.Errorf("readlink = %q, %v", got, err)
	}
	if err := sub.Link(walk(t, root, "hello.txt"), "hard"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "sub", "hard")); string(b) != "hello from the host\n" {
		t.Errorf("hard link reads %q", b)
	}

	// setattr: mode, size, times.
	h := walk(t, sub, "hard")
	if err := h.SetAttr(ninep.SetAttrMask{Permissions: true, Size: true, MTime: true, MTimeNotSystemTime: true},
		ninep.SetAttr{Permissions: 0o600, Size: 5, MTimeSeconds: 1234567890}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "hello.txt"))
	if err != nil || fi.Size() != 5 || fi.Mode().Perm() != 0o600 || fi.ModTime().Unix() != 1234567890 {
		t.Errorf("after setattr: %v %v", fi, err)
	}
	_, valid, attr, err := h.GetAttr(ninep.AttrMaskAll)
	if err != nil || !valid.Size || attr.Size != 5 || attr.NLink != 2 {
		t.Errorf("getattr: %+v %v", attr, err)
	}
	if st, err := root.StatFS(); err != nil || st.BlockSize == 0 {
		t.Errorf("statfs: %+v %v", st, err)
	}

	if err := sub.UnlinkAt("hard", 0); err != nil {
		t.Fatal(err)
	}
	if err := sub.UnlinkAt("link", 0); err != nil {
		t.Fatal(err)
	}
	if err := sub.UnlinkAt("moved.txt", 0); err != nil {
		t.Fatal(err)
	}
	if err := root.UnlinkAt("sub", unix.AT_REMOVEDIR); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "sub")); !os.IsNotExist(err) {
		t.Errorf("sub after rmdir: %v", err)
	}
}

func TestReaddirAcrossCalls(t *testing.T) {
	dir, fs := share(t, false)
	want := []string{".", "..", "hello.txt"}
	for i := range 300 {
		name := "file-with-a-longish-name-" + strings.Repeat("x", i%40) + "-" + string(rune('a'+i%26)) + "-" + itoa(i)
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		want = append(want, name)
	}
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	want = append(want, "d")
	root := connect(t, fs)
	d := walk(t, root)
	if _, _, err := d.Open(ninep.ReadOnly); err != nil {
		t.Fatal(err)
	}
	var got []string
	off := uint64(0)
	for {
		ents, err := d.Readdir(off, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) == 0 {
			break
		}
		for _, e := range ents {
			got = append(got, e.Name)
			if e.Name == "d" && (e.Type != unix.DT_DIR || e.QID.Type != ninep.TypeDir) {
				t.Errorf("entry d: type %d, QID type %v", e.Type, e.QID.Type)
			}
		}
		off = ents[len(ents)-1].Offset
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("readdir gave %d names, want %d", len(got), len(want))
	}
}

func itoa(i int) string {
	return string(rune('0'+i/100)) + string(rune('0'+i/10%10)) + string(rune('0'+i%10))
}

func TestNamesThatLeaveAreRefused(t *testing.T) {
	dir, fs := share(t, false)
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("OUTSIDE"), 0o644)
	os.Symlink(outside, filepath.Join(dir, "out"))
	os.Symlink("../../../../../../../../"+outside, filepath.Join(dir, "rel"))
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	root := connect(t, fs)
	for _, names := range [][]string{{".."}, {"d", ".."}, {"."}, {""}, {"/etc"}, {"d/../.."}, {"a\x00b"}, {outside}} {
		if _, _, err := root.Walk(names); err == nil {
			t.Errorf("walk %q succeeded", names)
		}
	}
	for _, link := range []string{"out", "rel"} {
		qids, l, err := root.Walk([]string{link})
		if err != nil || len(qids) != 1 || qids[0].Type != ninep.TypeSymlink {
			t.Fatalf("walk to %s: %v %v", link, qids, err)
		}
		if _, _, err := root.Walk([]string{link, "secret"}); err == nil {
			t.Errorf("walk through %s succeeded", link)
		}
		if _, _, err := l.Walk([]string{"secret"}); err == nil {
			t.Errorf("walk from %s succeeded", link)
		}
		if _, _, err := l.Open(ninep.ReadOnly); err == nil {
			t.Errorf("open of %s succeeded", link)
		}
	}
	// Names given for changes are one entry too.
	for _, name := range []string{"..", "../x", "/tmp/x", "d/x", "", "."} {
		if _, err := root.Mkdir(name, 0o755, ninep.NoUID, ninep.NoGID); err == nil {
			t.Errorf("mkdir %q succeeded", name)
		}
		if _, err := root.Symlink("x", name, ninep.NoUID, ninep.NoGID); err == nil {
			t.Errorf("symlink %q succeeded", name)
		}
		if err := root.RenameAt("hello.txt", root, name); err == nil {
			t.Errorf("rename to %q succeeded", name)
		}
	}
	// A symbolic link the guest makes is text; it leads nowhere on the host.
	if _, err := root.Symlink("/", "esc", ninep.NoUID, ninep.NoGID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := root.Walk([]string{"esc", "etc"}); err == nil {
		t.Error("walk through the guest's link to / succeeded")
	}
	// Creating over an existing link does not follow it.
	if _, _, _, err := root.Create("out", ninep.ReadWrite, 0o644, ninep.NoUID, ninep.NoGID); err == nil {
		t.Error("create over a link succeeded")
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "secret")); string(b) != "OUTSIDE" {
		t.Error("the file outside changed")
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 1 {
		t.Errorf("the directory outside holds %d entries", len(entries))
	}
}

// TestSymlinkSwappedMidWalk swaps a directory of the share with a link to
// a directory outside while the guest walks through it: every walk either
// fails or reaches the file inside.
func TestSymlinkSwappedMidWalk(t *testing.T) {
	dir, fs := share(t, false)
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("OUTSIDE"), 0o644)
	os.Mkdir(filepath.Join(dir, "sw"), 0o755)
	os.WriteFile(filepath.Join(dir, "sw", "secret"), []byte("inside"), 0o644)
	os.Symlink(outside, filepath.Join(dir, "swlink"))
	root := connect(t, fs)

	// A fid held across the swap still names the directory inside.
	held := walk(t, root, "sw")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			unix.Renameat2(unix.AT_FDCWD, filepath.Join(dir, "sw"), unix.AT_FDCWD, filepath.Join(dir, "swlink"), unix.RENAME_EXCHANGE)
		}
	})
	inside := 0
	for range 2000 {
		_, f, err := root.Walk([]string{"sw", "secret"})
		if err != nil {
			continue
		}
		got := readAll(t, f)
		f.Close()
		if got != "inside" {
			t.Fatalf("walk through a swapped link read %q", got)
		}
		inside++
	}
	close(stop)
	wg.Wait()
	if got := readAll(t, walk(t, held, "secret")); got != "inside" {
		t.Errorf("held directory's secret = %q", got)
	}
	t.Logf("%d of 2000 walks reached the file inside, the others failed", inside)
}

func TestSpecialFilesAreNotOpened(t *testing.T) {
	dir, fs := share(t, false)
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o666); err != nil {
		t.Fatal(err)
	}
	devOK := unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))) == nil
	root := connect(t, fs)
	names := []string{"fifo"}
	if devOK {
		names = append(names, "null")
	} else {
		t.Log("no CAP_MKNOD here: only the FIFO is tried")
	}
	for _, name := range names {
		for _, mode := range []ninep.OpenFlags{ninep.ReadOnly, ninep.WriteOnly, ninep.ReadWrite} {
			_, _, err := walk(t, root, name).Open(mode)
			wantErrno(t, "open "+name, err, linux.EPERM)
		}
		if _, _, _, err := walk(t, root, name).GetAttr(ninep.AttrMaskAll); err != nil {
			t.Errorf("getattr %s: %v", name, err)
		}
	}
	// The guest's mknod makes no device either; set-ID bits are dropped.
	for _, mode := range []ninep.FileMode{ninep.ModeCharacterDevice | 0o666, ninep.ModeBlockDevice | 0o666} {
		_, err := root.Mknod("dev", mode, 1, 3, ninep.NoUID, ninep.NoGID)
		wantErrno(t, "mknod device", err, linux.EPERM)
	}
	if _, err := os.Lstat(filepath.Join(dir, "dev")); !os.IsNotExist(err) {
		t.Errorf("a device node was made: %v", err)
	}
	for name, mode := range map[string]ninep.FileMode{"p": ninep.ModeNamedPipe | 0o640, "r": ninep.ModeRegular | 0o6755, "s": ninep.ModeSocket | 0o600} {
		if _, err := root.Mknod(name, mode, 0, 0, ninep.NoUID, ninep.NoGID); err != nil {
			t.Fatalf("mknod %s: %v", name, err)
		}
		var st unix.Stat_t
		unix.Lstat(filepath.Join(dir, name), &st)
		if want := uint32(mode) &^ 0o6000; st.Mode != want {
			t.Errorf("mknod %s: host mode %o, want %o", name, st.Mode, want)
		}
	}
}

// TestSetIDBitsDropped calls the backend directly, since the p9 server
// drops some set-ID bits itself.
func TestSetIDBitsDropped(t *testing.T) {
	dir, fs := share(t, false)
	root, err := fs.Attach(ninep.NoUID)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	_, f, _ := root.Walk(nil)
	nf, _, _, err := f.Create("suid", ninep.ReadWrite, 0o6755, ninep.NoUID, ninep.NoGID)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := root.Mkdir("sgid", 0o2775, ninep.NoUID, ninep.NoGID); err != nil {
		t.Fatal(err)
	}
	mode := func(name string) os.FileMode {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode()
	}
	if m := mode("suid"); m != 0o755 {
		t.Errorf("created file mode %v", m)
	}
	if m := mode("sgid"); m != os.ModeDir|0o775 {
		t.Errorf("created directory mode %v", m)
	}
	if err := nf.SetAttr(ninep.SetAttrMask{Permissions: true}, ninep.SetAttr{Permissions: 0o4777}); err != nil {
		t.Fatal(err)
	}
	if m := mode("suid"); m != 0o777 {
		t.Errorf("chmod 4777 gave %v", m)
	}
	nf.Close()
	if n := fs.OpenFDs(); n != 1 {
		t.Errorf("%d descriptors open, want 1 (the root)", n)
	}
}

func TestReadOnlyRefusesChanges(t *testing.T) {
	dir, fs := share(t, true)
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	before, _ := os.ReadFile(filepath.Join(dir, "hello.txt"))
	root := connect(t, fs)
	hello := func() ninep.File { return walk(t, root, "hello.txt") }
	for _, mode := range []ninep.OpenFlags{ninep.WriteOnly, ninep.ReadWrite, ninep.ReadOnly | 0o1000} {
		_, _, err := hello().Open(mode)
		wantErrno(t, "open for writing", err, linux.EROFS)
	}
	_, _, _, err := root.Create("new", ninep.ReadWrite, 0o644, ninep.NoUID, ninep.NoGID)
	wantErrno(t, "create", err, linux.EROFS)
	_, err = root.Mkdir("new", 0o755, ninep.NoUID, ninep.NoGID)
	wantErrno(t, "mkdir", err, linux.EROFS)
	_, err = root.Symlink("x", "new", ninep.NoUID, ninep.NoGID)
	wantErrno(t, "symlink", err, linux.EROFS)
	_, err = root.Mknod("new", ninep.ModeNamedPipe|0o644, 0, 0, ninep.NoUID, ninep.NoGID)
	wantErrno(t, "mknod", err, linux.EROFS)
	wantErrno(t, "link", root.Link(hello(), "new"), linux.EROFS)
	wantErrno(t, "rename", root.RenameAt("hello.txt", root, "new"), linux.EROFS)
	wantErrno(t, "unlink", root.UnlinkAt("hello.txt", 0), linux.EROFS)
	wantErrno(t, "rmdir", root.UnlinkAt("d", unix.AT_REMOVEDIR), linux.EROFS)
	for _, v := range []ninep.SetAttrMask{{Permissions: true}, {Size: true}, {UID: true}, {MTime: true}} {
		wantErrno(t, "setattr", hello().SetAttr(v, ninep.SetAttr{Permissions: 0o777}), linux.EROFS)
	}
	if got := readAll(t, hello()); got != string(before) {
		t.Errorf("read %q", got)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "hello.txt"))
	fi, _ := os.Stat(filepath.Join(dir, "hello.txt"))
	entries, _ := os.ReadDir(dir)
	if !bytes.Equal(before, after) || fi.Mode().Perm() != 0o644 || len(entries) != 2 {
		t.Errorf("the read-only share changed: %q, mode %v, %d entries", after, fi.Mode(), len(entries))
	}
}

func TestDescriptorLimit(t *testing.T) {
	_, fs := share(t, false)
	fs.SetMaxFDs(40)
	root := connect(t, fs)
	var held []ninep.File
	var err error
	for range 100 {
		var f ninep.File
		if _, f, err = root.Walk([]string{"hello.txt"}); err != nil {
			break
		}
		held = append(held, f)
	}
	wantErrno(t, "walk past the limit", err, linux.ENFILE)
	if n := fs.OpenFDs(); n != 40 {
		t.Errorf("%d descriptors open at the limit, want 40", n)
	}
	for _, f := range held[:10] {
		f.Close()
	}
	f := walk(t, root, "hello.txt")
	if got := readAll(t, f); got == "" {
		t.Error("nothing read after clunks made room")
	}
}

func TestOpenRaisesTheDescriptorLimit(t *testing.T) {
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &old) })
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 256, Max: old.Max}); err != nil {
		t.Fatal(err)
	}
	share(t, false)
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	// At least the soft limit rises to the hard one (a process with
	// CAP_SYS_RESOURCE may raise that too).
	if want := min(uint64(2*hostfs.MaxFDs), old.Max); rl.Cur < want {
		t.Errorf("descriptor limit %d after Open (hard %d before), want at least %d", rl.Cur, old.Max, want)
	}
}

func TestOwnerIsTheGuestsWhenRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: capsule sets owners only when it runs as root")
	}
	dir, fs := share(t, false)
	root, err := fs.Attach(1234) // the guest's user 1234 attached
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	_, f, _ := root.Walk(nil)
	nf, _, _, err := f.Create("mine", ninep.ReadWrite, 0o644, ninep.NoUID, 5678)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	nf.Close()
	if _, err := root.Symlink("x", "link", 42, 43); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][2]uint32{"mine": {1234, 5678}, "link": {42, 43}} {
		var st unix.Stat_t
		unix.Lstat(filepath.Join(dir, name), &st)
		if st.Uid != want[0] || st.Gid != want[1] {
			t.Errorf("%s: owner %d:%d, want %d:%d", name, st.Uid, st.Gid, want[0], want[1])
		}
	}
}

func TestOpenRefusesMissingOrFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := hostfs.Open(filepath.Join(dir, "nope"), false); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing directory: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "f"), nil, 0o644)
	if _, err := hostfs.Open(filepath.Join(dir, "f"), false); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("a file: %v", err)
	}
}

func TestOwnerIsCapsulesWhenNotRoot(t *testing.T) {
	dir, fs := share(t, false)
	hostfs.SetChown(fs, false) // as when capsule is not root
	root, err := fs.Attach(1234)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if _, err := root.Mkdir("d", 0o755, 1234, 5678); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Lstat(filepath.Join(dir, "d"), &st)
	if int(st.Uid) != os.Geteuid() || int(st.Gid) != os.Getegid() {
		t.Errorf("owner %d:%d, want capsule's %d:%d", st.Uid, st.Gid, os.Geteuid(), os.Getegid())
	}
}
