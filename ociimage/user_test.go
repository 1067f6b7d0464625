package ociimage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
)

// userRoot makes a root file system with the test passwd and group.
func userRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("# comment\n\nbroken line\n"+testPasswd), 0o644)
	os.WriteFile(filepath.Join(root, "etc", "group"), []byte(testGroup), 0o644)
	return root
}

func TestLookupUser(t *testing.T) {
	root := userRoot(t)
	for _, tc := range []struct {
		spec string
		want User
		err  error
	}{
		{"", User{UID: 0, GID: 0, Name: "root", Home: "/root"}, nil},
		{"root", User{UID: 0, GID: 0, Name: "root", Home: "/root"}, nil},
		{"app", User{UID: 1000, GID: 1000, Groups: []uint32{10, 50}, Name: "app", Home: "/home/app"}, nil},
		{"1000", User{UID: 1000, GID: 1000, Groups: []uint32{10, 50}, Name: "app", Home: "/home/app"}, nil},
		{"app:wheel", User{UID: 1000, GID: 10, Name: "app", Home: "/home/app"}, nil},
		{"app:50", User{UID: 1000, GID: 50, Name: "app", Home: "/home/app"}, nil},
		{"1234", User{UID: 1234, GID: 0, Home: "/"}, nil},
		{"1234:1234", User{UID: 1234, GID: 1234, Home: "/"}, nil},
		{"0:staff", User{UID: 0, GID: 50, Name: "root", Home: "/root"}, nil},
		{"nobody", User{}, ErrNoUser},
		{"app:nogroup", User{}, ErrNoGroup},
		{"app:", User{}, ErrNoGroup},
		{"4294967296", User{}, ErrNoUser},
		{"1:99999999999", User{}, ErrNoGroup},
	} {
		got, err := LookupUser(root, tc.spec)
		if !errors.Is(err, tc.err) || (err == nil) != (tc.err == nil) {
			t.Errorf("LookupUser(%q): %v, want %v", tc.spec, err, tc.err)
			continue
		}
		if err != nil {
			checkLine(t, err, `user "`+tc.spec+`"`)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("LookupUser(%q) = %+v, want %+v", tc.spec, got, tc.want)
		}
	}
}

// TestLookupUserStaysInRoot: the image's /etc and /etc/passwd as
// symbolic links resolve inside the root file system, never to the
// host's files.
func TestLookupUserStaysInRoot(t *testing.T) {
	host := t.TempDir()
	os.WriteFile(filepath.Join(host, "passwd"), []byte("evil:x:0:0::/:/bin/sh\n"), 0o644)

	// /etc is a link to a host directory's path: inside the root that
	// path does not exist, so the image has no passwd.
	root := t.TempDir()
	os.Symlink(host, filepath.Join(root, "etc"))
	if _, err := LookupUser(root, "evil"); !errors.Is(err, ErrNoUser) {
		t.Errorf("LookupUser through an absolute /etc link: %v, want ErrNoUser", err)
	}
	if u, err := LookupUser(root, "42"); err != nil || u.UID != 42 || u.Name != "" {
		t.Errorf("LookupUser(42) without a passwd = %+v, %v", u, err)
	}

	// /etc/passwd climbing out lands on a file inside the root.
	root = userRoot(t)
	os.MkdirAll(filepath.Join(root, "usr", "lib"), 0o755)
	os.WriteFile(filepath.Join(root, "usr", "lib", "passwd"), []byte("linked:x:7:8::/l:/bin/sh\n"), 0o644)
	os.Remove(filepath.Join(root, "etc", "passwd"))
	os.Symlink("../../../../../../../../usr/lib/passwd", filepath.Join(root, "etc", "passwd"))
	if u, err := LookupUser(root, "linked"); err != nil || u.UID != 7 || u.GID != 8 {
		t.Errorf("LookupUser through a climbing link = %+v, %v", u, err)
	}

	// A FIFO for a passwd is refused without blocking.
	root = userRoot(t)
	os.Remove(filepath.Join(root, "etc", "passwd"))
	if err := syscall.Mkfifo(filepath.Join(root, "etc", "passwd"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LookupUser(root, "app"); err == nil {
		t.Error("LookupUser read a FIFO for /etc/passwd")
	} else {
		checkLine(t, err, "not a regular file")
	}
}

func TestLookupUserInUnpackedImage(t *testing.T) {
	img, err := Unpack(context.Background(), writeDocker(t, testImage(t)), Options{CacheDir: testCache(t)})
	if err != nil {
		t.Fatal(err)
	}
	u, err := LookupUser(img.RootFS, img.Config.User)
	if err != nil {
		t.Fatal(err)
	}
	if want := (User{UID: 1000, GID: 1000, Groups: []uint32{10, 50}, Name: "app", Home: "/home/app"}); !reflect.DeepEqual(u, want) {
		t.Errorf("LookupUser(%q) = %+v, want %+v", img.Config.User, u, want)
	}
}
