package main

import (
	"bufio"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Users and groups come from the sandbox's /etc/passwd and /etc/group read as text. The C
// library's lookups would load whatever NSS modules the sandbox's /etc/nsswitch.conf names into
// this process: code the sandbox wrote, running in its init.
const maxAccountFile = 4 << 20

type account struct {
	name string
	uid  uint32
	gid  uint32
	home string
}

type identity struct {
	cred *syscall.Credential
	home string
}

// readAccountFile returns the colon-separated records of a file the sandbox controls: a regular
// file only (a FIFO there must not block this process), at most maxAccountFile bytes of it.
func readAccountFile(path string) [][]string {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil
	}
	var records [][]string
	scanner := bufio.NewScanner(io.LimitReader(f, maxAccountFile))
	scanner.Buffer(make([]byte, 4096), 64*1024)
	for scanner.Scan() {
		line := scanner.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		records = append(records, strings.Split(line, ":"))
	}
	return records
}

func parseID(text string) (uint32, bool) {
	if text == "" {
		return 0, false
	}
	n, err := strconv.ParseUint(text, 10, 32)
	return uint32(n), err == nil
}

func isDigits(text string) bool {
	if text == "" {
		return false
	}
	for _, r := range text {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func lookupUser(user string) (*account, bool) {
	byID := isDigits(user)
	for _, f := range readAccountFile("/etc/passwd") {
		if len(f) < 7 {
			continue
		}
		uid, ok1 := parseID(f[2])
		gid, ok2 := parseID(f[3])
		if !ok1 || !ok2 {
			continue
		}
		if (byID && f[2] == user) || (!byID && f[0] == user) {
			return &account{name: f[0], uid: uid, gid: gid, home: f[5]}, true
		}
	}
	return nil, false
}

func lookupGroup(name string) (uint32, bool) {
	for _, f := range readAccountFile("/etc/group") {
		if len(f) >= 3 && f[0] == name {
			if gid, ok := parseID(f[2]); ok {
				return gid, true
			}
		}
	}
	return 0, false
}

func groupsOf(user string) []uint32 {
	groups := []uint32{}
	for _, f := range readAccountFile("/etc/group") {
		if len(f) < 4 {
			continue
		}
		gid, ok := parseID(f[2])
		if !ok {
			continue
		}
		for _, member := range strings.Split(f[3], ",") {
			if member == user {
				groups = append(groups, gid)
				break
			}
		}
	}
	return groups
}

// resolveIdentity takes "user" or "user:group" (an OCI image's User), by name or number.
func resolveIdentity(spec string) (*identity, error) {
	user, group, hasGroup := strings.Cut(spec, ":")
	var uid, gid uint32
	home := "/"
	groups := []uint32{}
	if acct, ok := lookupUser(user); ok {
		uid, gid, home = acct.uid, acct.gid, acct.home
		groups = groupsOf(acct.name)
	} else if isDigits(user) {
		id, ok := parseID(user)
		if !ok {
			return nil, badField("user", "invalid user %s", quote(user))
		}
		uid, gid = id, id
	} else {
		return nil, badField("user", "unknown user %s in the sandbox", quote(user))
	}
	if hasGroup && group != "" {
		if isDigits(group) {
			id, ok := parseID(group)
			if !ok {
				return nil, badField("user", "invalid group %s", quote(group))
			}
			gid = id
		} else if id, ok := lookupGroup(group); ok {
			gid = id
		} else {
			return nil, badField("user", "unknown group %s in the sandbox", quote(group))
		}
		groups = []uint32{}
	}
	return &identity{cred: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}, home: home}, nil
}

// quote writes a name as Python's repr did in the old agent's messages.
func quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "\\'") + "'"
}
