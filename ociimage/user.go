package ociimage

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

var (
	// ErrNoUser: [LookupUser] was given a user name the image's
	// /etc/passwd does not have (or a uid out of range).
	ErrNoUser = errors.New("no such user")
	// ErrNoGroup: [LookupUser] was given a group name the image's
	// /etc/group does not have (or a gid out of range).
	ErrNoGroup = errors.New("no such group")
)

// maxID is the largest uid or gid a user may give, as runc allows.
const maxID = 1<<31 - 1

// User is who a run executes as.
type User struct {
	UID, GID uint32
	// Groups are the supplementary groups: the groups /etc/group lists
	// the user's name in, when the spec gave no group.
	Groups []uint32
	// Name is the passwd name; "" for a uid /etc/passwd does not have.
	Name string
	// Home is the passwd home directory, "/" when there is none.
	Home string
}

// LookupUser resolves spec, as `docker run -u` takes it or an image's
// User gives it ("" for root, "uid", "uid:gid", "name", "name:group",
// and the mixes), against the /etc/passwd and /etc/group of the root
// file system rootfs, never the host's: the files are opened with
// openat2(RESOLVE_IN_ROOT), so their symbolic links resolve inside it.
// As Docker and runc do, a numeric uid that /etc/passwd does not list
// is allowed, with gid 0 unless spec gives one; a name it does not list
// is an error, and so is an unknown group name.
func LookupUser(rootfs, spec string) (User, error) {
	u, err := lookupUser(rootfs, spec)
	if err != nil {
		return User{}, fmt.Errorf("user %q: %w", spec, err)
	}
	return u, nil
}

type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
}

type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

func lookupUser(rootfs, spec string) (User, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if hasGroup && groupPart == "" {
		return User{}, fmt.Errorf("%w: an empty group", ErrNoGroup)
	}
	rootFD, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return User{}, fmt.Errorf("open the root file system %s: %w", rootfs, err)
	}
	defer unix.Close(rootFD)

	passwd, err := readRootFile(rootFD, "etc/passwd")
	if err != nil {
		return User{}, err
	}
	u := User{Home: "/"}
	found := false
	if userPart == "" {
		userPart = "0"
	}
	if id, ok := parseID(userPart); ok {
		u.UID = id
		for _, p := range parsePasswd(passwd) {
			if p.uid == id {
				u.Name, u.GID, u.Home, found = p.name, p.gid, p.home, true
				break
			}
		}
	} else if numeric(userPart) {
		return User{}, fmt.Errorf("%w: uid %s is out of range", ErrNoUser, userPart)
	} else {
		for _, p := range parsePasswd(passwd) {
			if p.name == userPart {
				u.UID, u.Name, u.GID, u.Home, found = p.uid, p.name, p.gid, p.home, true
				break
			}
		}
		if !found {
			if passwd == nil {
				return User{}, fmt.Errorf("%w: the image has no /etc/passwd", ErrNoUser)
			}
			return User{}, fmt.Errorf("%w: the image's /etc/passwd does not list it", ErrNoUser)
		}
	}
	if u.Home == "" {
		u.Home = "/"
	}

	if !hasGroup && u.Name == "" {
		return u, nil
	}
	if gid, ok := parseID(groupPart); hasGroup && ok {
		u.GID = gid
		return u, nil
	} else if hasGroup && numeric(groupPart) {
		return User{}, fmt.Errorf("%w: gid %s is out of range", ErrNoGroup, groupPart)
	}
	group, err := readRootFile(rootFD, "etc/group")
	if err != nil {
		return User{}, err
	}
	groups := parseGroup(group)
	if hasGroup {
		for _, g := range groups {
			if g.name == groupPart {
				u.GID = g.gid
				return u, nil
			}
		}
		if group == nil {
			return User{}, fmt.Errorf("%w: the image has no /etc/group", ErrNoGroup)
		}
		return User{}, fmt.Errorf("%w: the image's /etc/group does not list %s", ErrNoGroup, groupPart)
	}
	seen := map[uint32]bool{}
	for _, g := range groups {
		for _, m := range g.members {
			if m == u.Name && !seen[g.gid] {
				seen[g.gid] = true
				u.Groups = append(u.Groups, g.gid)
			}
		}
	}
	return u, nil
}

func numeric(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

func parseID(s string) (uint32, bool) {
	if !numeric(s) {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > maxID {
		return 0, false
	}
	return uint32(n), true
}

// readRootFile reads name (relative to the root file system rootFD,
// resolved inside it); nil, without an error, when there is none.
func readRootFile(rootFD int, name string) ([]byte, error) {
	fd, err := openat2(rootFD, name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, inRoot)
	if err == unix.ENOENT || err == unix.ENOTDIR {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open the image's /%s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("the image's /%s is not a regular file", name)
	}
	if st.Size > maxMeta {
		return nil, fmt.Errorf("the image's /%s has over %d bytes", name, maxMeta)
	}
	b, err := readLimit(f, maxMeta)
	if err != nil {
		return nil, fmt.Errorf("read the image's /%s: %w", name, err)
	}
	if b == nil {
		b = []byte{}
	}
	return b, nil
}

// lines yields the fields of each line of a colon-separated file,
// skipping blank lines, comments and NIS entries ("+", "-").
func lines(b []byte, fields int, f func([]string)) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), maxMeta)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue
		}
		parts := strings.Split(line, ":")
		for len(parts) < fields {
			parts = append(parts, "")
		}
		f(parts)
	}
}

func parsePasswd(b []byte) []passwdEntry {
	var out []passwdEntry
	lines(b, 7, func(p []string) {
		uid, ok1 := parseID(p[2])
		gid, ok2 := parseID(p[3])
		if p[0] == "" || !ok1 || !ok2 {
			return
		}
		out = append(out, passwdEntry{name: p[0], uid: uid, gid: gid, home: p[5]})
	})
	return out
}

func parseGroup(b []byte) []groupEntry {
	var out []groupEntry
	lines(b, 4, func(p []string) {
		gid, ok := parseID(p[2])
		if p[0] == "" || !ok {
			return
		}
		var members []string
		for _, m := range strings.Split(p[3], ",") {
			if m = strings.TrimSpace(m); m != "" {
				members = append(members, m)
			}
		}
		out = append(out, groupEntry{name: p[0], gid: gid, members: members})
	})
	return out
}
