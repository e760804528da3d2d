package main

import (
	"archive/tar"
	"io"
	"os"
	"sort"
	"strings"
	"syscall"
)

// tar_put extracts an archive into a directory and nothing outside it. No path is ever resolved
// as a string (realpath is fooled by paths past PATH_MAX): each member's directory is reached one
// component at a time from the target's descriptor with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS), so no symlink, planted in the tree or made by the archive, is followed;
// the member itself is created relative to that descriptor without following anything. Devices,
// FIFOs, absolute names, "..", links out of the tree and setuid/setgid bits are refused.

const beneath = resolveBeneath | resolveNoSymlinks | resolveNoMagiclinks

type dirAttrs struct {
	parts []string
	mode  uint32
	uid   int
	gid   int
	mtime int64
}

// memberParts splits an archive name into its components; "" means the target itself.
func memberParts(name string) ([]string, error) {
	if strings.HasPrefix(name, "/") {
		return nil, refused("%s: outside the target directory", quote(name))
	}
	var parts []string
	for _, part := range strings.Split(name, "/") {
		switch part {
		case "", ".":
			continue
		case "..":
			return nil, refused("%s: outside the target directory", quote(name))
		}
		parts = append(parts, part)
	}
	return parts, nil
}

// openDir walks parts from root, making missing directories when create is set; it returns a
// descriptor the caller closes (root itself is duplicated).
func openDir(root int, parts []string, create bool, name string) (int, error) {
	fd, err := syscall.Dup(root)
	if err != nil {
		return -1, err
	}
	syscall.CloseOnExec(fd)
	for _, part := range parts {
		if create {
			if err := mkdirat(fd, part, 0o777); err != nil && err != syscall.EEXIST {
				syscall.Close(fd)
				return -1, err
			}
		}
		next, err := openat2(fd, part, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0, beneath)
		syscall.Close(fd)
		if err != nil {
			if err == syscall.ELOOP || err == syscall.ENOTDIR || err == syscall.EXDEV {
				return -1, refused("%s: its path goes through a symlink or a non-directory", quote(name))
			}
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// linkStaysInside: a symlink's target is relative, its ".." only lead (the member's directories
// are real directories, so they climb no higher than written), and no higher than the target.
func linkStaysInside(parts []string, link string) bool {
	if link == "" || strings.HasPrefix(link, "/") {
		return false
	}
	depth := len(parts) - 1
	leading := true
	for _, part := range strings.Split(link, "/") {
		switch part {
		case "", ".":
		case "..":
			if !leading {
				return false
			}
			depth--
			if depth < 0 {
				return false
			}
		default:
			leading = false
		}
	}
	return true
}

// clearEntry removes what is at name in dir (not a directory), so that the member is created
// anew: never written through a planted symlink or into an inode shared with a hard link.
func clearEntry(dir int, name, member string) error {
	var st syscall.Stat_t
	if err := fstatat(dir, name, &st, atSymlinkNoFollow); err != nil {
		if err == syscall.ENOENT {
			return nil
		}
		return err
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		return osError(syscall.EISDIR, member)
	}
	return unlinkat(dir, name, 0)
}

func tarPut(c *conn, path string, up *upload) error {
	if err := makeDirs(path, 0o777); err != nil {
		return osError(err, path)
	}
	root, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return osError(err, path)
	}
	defer syscall.Close(root)
	tr := tar.NewReader(up)
	var dirs []dirAttrs
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return refused("%v", err)
		}
		d, err := extract(root, tr, h)
		if err != nil {
			return err
		}
		if d != nil {
			dirs = append(dirs, *d)
		}
	}
	// Directories get their mode and times last, deepest first, as tarfile did: a read-only one
	// must not stop its own members from being written.
	sort.SliceStable(dirs, func(i, j int) bool { return len(dirs[i].parts) > len(dirs[j].parts) })
	isRoot := sameFile(root, "/")
	for _, d := range dirs {
		if len(d.parts) == 0 && isRoot {
			// The archive's "." (upload_dir sends the local directory's own mode and owner) is not
			// the sandbox's root: a 0700 or foreign-owned "/" would lock out every other user.
			continue
		}
		fd, err := openDir(root, d.parts, false, strings.Join(d.parts, "/"))
		if err != nil {
			continue
		}
		syscall.Fchown(fd, d.uid, d.gid)
		syscall.Fchmod(fd, d.mode)
		futimes(fd, d.mtime)
		syscall.Close(fd)
	}
	up.drain() // the end-of-archive marker is read; the record padding and END may not be
	return replyStat(c, path)
}

func extract(root int, tr *tar.Reader, h *tar.Header) (*dirAttrs, error) {
	name := h.Name
	parts, err := memberParts(name)
	if err != nil {
		return nil, err
	}
	mode := uint32(h.Mode) & 0o777 // no setuid/setgid bits from an uploaded archive
	switch h.Typeflag {
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return nil, refused("%s: device or fifo", quote(name))
	case tar.TypeDir:
		if len(parts) > 0 {
			fd, err := openDir(root, parts, true, name)
			if err != nil {
				return nil, osError(err, name)
			}
			syscall.Close(fd)
		}
		return &dirAttrs{parts: parts, mode: mode, uid: h.Uid, gid: h.Gid, mtime: h.ModTime.Unix()}, nil
	case tar.TypeReg, tar.TypeRegA, tar.TypeSymlink, tar.TypeLink:
	default:
		return nil, nil // pax and GNU extension headers are read by the reader; nothing else is kept
	}
	if len(parts) == 0 {
		return nil, refused("%s: not a directory but names the target directory", quote(name))
	}
	dir, err := openDir(root, parts[:len(parts)-1], true, name)
	if err != nil {
		return nil, osError(err, name)
	}
	defer syscall.Close(dir)
	base := parts[len(parts)-1]
	if err := clearEntry(dir, base, name); err != nil {
		return nil, osError(err, name)
	}
	switch h.Typeflag {
	case tar.TypeSymlink:
		if !linkStaysInside(parts, h.Linkname) {
			return nil, refused("%s: symlink out of the target directory", quote(name))
		}
		if err := symlinkat(h.Linkname, dir, base); err != nil {
			return nil, osError(err, name)
		}
		// Through a symlink already in the tree it may still lead out: resolve it as it is now.
		if escapes(root, parts) {
			unlinkat(dir, base, 0)
			return nil, refused("%s: symlink out of the target directory", quote(name))
		}
		fchownat(dir, base, h.Uid, h.Gid, atSymlinkNoFollow)
	case tar.TypeLink:
		target, err := memberParts(h.Linkname)
		if err != nil || len(target) == 0 {
			return nil, refused("%s: hardlink out of the target directory", quote(name))
		}
		src, err := openDir(root, target[:len(target)-1], false, name)
		if err != nil {
			return nil, refused("%s: hardlink out of the target directory", quote(name))
		}
		// Only a regular file: linkat would link a symlink itself, and a relative link contained
		// at its own depth can point out of the tree from another one.
		var st syscall.Stat_t
		if fstatat(src, target[len(target)-1], &st, atSymlinkNoFollow) != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
			syscall.Close(src)
			return nil, refused("%s: hardlink to something other than a regular file", quote(name))
		}
		err = linkat(src, target[len(target)-1], dir, base)
		syscall.Close(src)
		if err != nil {
			return nil, osError(err, name)
		}
	default:
		fd, err := openat2(dir, base, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW, 0o600, beneath)
		if err != nil {
			return nil, osError(err, name)
		}
		f := os.NewFile(uintptr(fd), name)
		_, err = io.Copy(f, tr)
		if err == nil {
			syscall.Fchown(fd, h.Uid, h.Gid)
			err = syscall.Fchmod(fd, mode)
		}
		if err == nil {
			err = futimes(fd, h.ModTime.Unix())
		}
		if closeErr := f.Close(); err == nil {
			err = closeErr
		}
		if err != nil {
			return nil, osError(err, name)
		}
	}
	return nil, nil
}

// escapes reports whether the symlink at parts, followed now, resolves outside root. A path too
// long to resolve in one call counts as escaping.
func escapes(root int, parts []string) bool {
	fd, err := openat2(root, strings.Join(parts, "/"), oPath, 0, resolveBeneath|resolveNoMagiclinks)
	if err == nil {
		syscall.Close(fd)
		return false
	}
	return err == syscall.EXDEV || err == syscall.ENAMETOOLONG || err == syscall.ELOOP
}

// sameFile reports whether the directory open at fd is the file at path (followed).
func sameFile(fd int, path string) bool {
	var a, b syscall.Stat_t
	if syscall.Fstat(fd, &a) != nil || syscall.Stat(path, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}
