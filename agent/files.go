package main

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"os"
	"sort"
	"strings"
	"syscall"
)

type fileInfo struct {
	Name       string  `json:"name"`
	Path       string  `json:"path"`
	Type       string  `json:"type"`
	Size       int64   `json:"size"`
	Mode       uint32  `json:"mode"`
	UID        uint32  `json:"uid"`
	GID        uint32  `json:"gid"`
	ModifiedAt float64 `json:"modified_at"`
	Target     *string `json:"target,omitempty"`
}

func isFileOp(op string) bool {
	switch op {
	case opRead, opWrite, opListDir, opMkdir, opRemove, opMove, opTarGet, opTarPut:
		return true
	}
	return false
}

// baseName and dirName split a path as Python's os.path did for the old agent.
func baseName(path string) string { return path[strings.LastIndexByte(path, '/')+1:] }

func dirName(path string) string {
	i := strings.LastIndexByte(path, '/') + 1
	head := path[:i]
	if trimmed := strings.TrimRight(head, "/"); trimmed != "" {
		return trimmed
	}
	return head
}

func kindOf(mode uint32) string {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		return "dir"
	case syscall.S_IFLNK:
		return "symlink"
	case syscall.S_IFREG:
		return "file"
	}
	return "other"
}

func infoOf(st *syscall.Stat_t, path, name string) fileInfo {
	return fileInfo{
		Name:       name,
		Path:       path,
		Type:       kindOf(st.Mode),
		Size:       st.Size,
		Mode:       st.Mode & 0o7777,
		UID:        st.Uid,
		GID:        st.Gid,
		ModifiedAt: float64(st.Mtim.Sec) + float64(st.Mtim.Nsec)/1e9,
	}
}

func statOf(path string, name *string) (*fileInfo, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return nil, osError(err, path)
	}
	n := baseName(path)
	if name != nil {
		n = *name
	} else if n == "" {
		n = "/"
	}
	info := infoOf(&st, path, n)
	if info.Type == "symlink" {
		target, err := os.Readlink(path)
		if err != nil {
			return nil, osError(err, path)
		}
		info.Target = &target
	}
	return &info, nil
}

func fileOp(c *conn, req *request, up *upload) error {
	switch req.Op {
	case opRead:
		return readFile(c, req.Path)
	case opWrite:
		return writeFile(c, req, up)
	case opListDir:
		entries, err := listDir(req.Path, req.Limit, req.After)
		if err != nil {
			return err
		}
		return c.sendJSON(frameReply, entries)
	case opMkdir:
		mode := uint32(0o755)
		if req.Mode != nil {
			mode = *req.Mode
		}
		if err := makeDirs(req.Path, mode); err != nil {
			return osError(err, req.Path)
		}
		return replyStat(c, req.Path)
	case opRemove:
		if err := remove(req.Path, req.Recursive); err != nil {
			return osError(err, req.Path)
		}
		return c.sendJSON(frameReply, map[string]string{"removed": req.Path})
	case opMove:
		if err := syscall.Rename(req.Source, req.Destination); err != nil {
			return osError(err, req.Source)
		}
		return replyStat(c, req.Destination)
	case opTarGet:
		return tarGet(c, req.Path)
	case opTarPut:
		return tarPut(c, req.Path, up)
	}
	return nil
}

func replyStat(c *conn, path string) error {
	info, err := statOf(path, nil)
	if err != nil {
		return err
	}
	return c.sendJSON(frameReply, info)
}

// openNonBlocking opens a path for reading without ever blocking on it: a FIFO or a terminal the
// sandbox put there is then read through the poller rather than holding a thread.
func openNonBlocking(path string, flags int) (*os.File, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NONBLOCK|syscall.O_NOCTTY|flags, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

func readFile(c *conn, path string) error {
	f, err := openNonBlocking(path, 0)
	if err != nil {
		return osError(err, path)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return osError(err, path)
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		return osError(syscall.EISDIR, path)
	}
	// A regular file is sent as the size it had when opened, so the length the host announces
	// holds even while something appends to it; others (/proc) to the end.
	regular := st.Mode&syscall.S_IFMT == syscall.S_IFREG
	sized := regular && st.Size > 0
	var size any
	if sized {
		size = st.Size
	}
	if err := c.sendJSON(frameReply, map[string]any{"size": size}); err != nil {
		return nil
	}
	left := int64(-1)
	if sized {
		left = st.Size
	}
	buf := make([]byte, chunkSize)
	for left != 0 {
		want := int64(len(buf))
		if left > 0 && left < want {
			want = left
		}
		n, err := f.Read(buf[:want])
		if n > 0 {
			if c.send(frameData, buf[:n]) != nil {
				return nil
			}
			if left > 0 {
				left -= int64(n)
			}
		}
		if err != nil {
			if err != io.EOF {
				return osError(err, path)
			}
			break
		}
	}
	return c.send(frameEnd, nil)
}

func isDir(path string) bool {
	var st syscall.Stat_t
	return syscall.Stat(path, &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR
}

// makeDirs is os.makedirs(path, mode, exist_ok=True): missing parents get 0777 (less umask).
func makeDirs(path string, mode uint32) error {
	err := syscall.Mkdir(path, mode)
	if err == nil {
		return nil
	}
	if err == syscall.EEXIST {
		if isDir(path) {
			return nil
		}
		return err
	}
	if err != syscall.ENOENT {
		return err
	}
	parent := dirName(path)
	if parent == path || parent == "" {
		return err
	}
	if err := makeDirs(parent, 0o777); err != nil {
		return err
	}
	if err := syscall.Mkdir(path, mode); err != nil && !(err == syscall.EEXIST && isDir(path)) {
		return err
	}
	return nil
}

func writeFile(c *conn, req *request, up *upload) error {
	path := req.Path
	dir := dirName(path)
	if dir == "" {
		dir = "/"
	}
	if req.Parents {
		if err := makeDirs(dir, 0o777); err != nil {
			return osError(err, dir)
		}
	}
	if isDir(path) {
		return osError(syscall.EISDIR, path)
	}
	var fs syscall.Statfs_t
	if syscall.Statfs(dir, &fs) == nil && pseudoFS[int64(fs.Type)] {
		return writeInPlace(c, path, up)
	}
	var st syscall.Stat_t
	if syscall.Lstat(path, &st) == nil {
		if kind := st.Mode & syscall.S_IFMT; kind != syscall.S_IFREG && kind != syscall.S_IFLNK {
			return badField("path", "%s is not a regular file (a device, FIFO or socket): it is not replaced", path)
		}
	}
	var tmp string
	var fd int
	for {
		var random [6]byte
		rand.Read(random[:])
		tmp = strings.TrimRight(dir, "/") + "/.sandboxd-" + hex.EncodeToString(random[:])
		var err error
		fd, err = syscall.Open(tmp, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
		if err == nil {
			break
		}
		if err != syscall.EEXIST {
			return osError(err, path) // the temporary name is ours: the user wrote to path
		}
	}
	f := os.NewFile(uintptr(fd), tmp)
	ok := false
	defer func() {
		if !ok {
			f.Close()
			syscall.Unlink(tmp)
		}
	}()
	if _, err := io.Copy(f, up); err != nil {
		return osError(err, path)
	}
	mode := uint32(0o644)
	if req.Mode != nil {
		mode = *req.Mode
	}
	if err := syscall.Fchmod(fd, mode); err != nil {
		return osError(err, path)
	}
	if err := f.Close(); err != nil {
		return osError(err, path)
	}
	if err := syscall.Rename(tmp, path); err != nil {
		syscall.Unlink(tmp)
		ok = true
		return osError(err, path)
	}
	ok = true
	return replyStat(c, path)
}

// Pseudo filesystems, whose files are the kernel's interfaces: a write there is a command (one
// write(2) of the content), no temporary file can be made beside them and a rename cannot replace
// them. proc, sysfs, cgroup v1 and v2, debugfs, securityfs, tracefs, configfs.
var pseudoFS = map[int64]bool{
	0x9fa0: true, 0x62656572: true, 0x27e0eb: true, 0x63677270: true,
	0x64626720: true, 0x73636673: true, 0x74726163: true, 0x62656570: true,
}

const inPlaceMax = 1 << 20

// writeInPlace writes the content to an existing kernel interface file in one write.
func writeInPlace(c *conn, path string, up *upload) error {
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return osError(err, path)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(up, inPlaceMax+1))
	if err != nil {
		return osError(err, path)
	}
	if len(data) > inPlaceMax {
		return badField("path", "%s is a kernel interface file: at most 1 MiB is written to it", path)
	}
	if _, err := f.Write(data); err != nil {
		return osError(err, path)
	}
	if err := f.Close(); err != nil {
		return osError(err, path)
	}
	return replyStat(c, path)
}

// listDir returns the entries sorted by name after `after`, at most limit of them (0: all), each
// statted relative to the directory's descriptor.
func listDir(path string, limit int, after *string) ([]fileInfo, error) {
	dirFd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, osError(err, path)
	}
	dir := os.NewFile(uintptr(dirFd), path)
	defer dir.Close()
	var names []string
	for {
		batch, err := dir.Readdirnames(4096)
		names = append(names, batch...)
		if err == io.EOF || len(batch) == 0 {
			break
		}
		if err != nil {
			return nil, osError(err, path)
		}
	}
	sort.Strings(names)
	if after != nil {
		names = names[sort.SearchStrings(names, *after):]
		if len(names) > 0 && names[0] == *after {
			names = names[1:]
		}
	}
	if limit > 0 && len(names) > limit {
		names = names[:limit]
	}
	entries := make([]fileInfo, 0, len(names))
	prefix := strings.TrimRight(path, "/") + "/"
	for _, name := range names {
		var st syscall.Stat_t
		if err := fstatat(dirFd, name, &st, atSymlinkNoFollow); err != nil {
			continue
		}
		info := infoOf(&st, prefix+name, name)
		if info.Type == "symlink" {
			if target, err := readlinkat(dirFd, name); err == nil {
				info.Target = &target
			}
		}
		entries = append(entries, info)
	}
	return entries, nil
}

func remove(path string, recursive bool) error {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return err
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return syscall.Unlink(path)
	}
	if !recursive {
		return syscall.Rmdir(path)
	}
	return os.RemoveAll(path)
}
