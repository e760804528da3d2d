package main

import (
	"archive/tar"
	"bufio"
	"io"
	"os"
	"sort"
	"syscall"
	"time"
)

// tarGet sends path as a tar stream (its members named "." and "./..."), owners as numbers only:
// no user or group name is looked up.
func tarGet(c *conn, path string) error {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return osError(err, path)
	}
	if err := c.sendJSON(frameReply, map[string]string{"path": path}); err != nil {
		return nil
	}
	buffered := bufio.NewWriterSize(frameWriter{c}, chunkSize)
	tw := tar.NewWriter(buffered)
	if err := addTree(tw, path, ".", &st); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return nil
	}
	if err := buffered.Flush(); err != nil {
		return nil
	}
	return c.send(frameEnd, nil)
}

func header(st *syscall.Stat_t, name string) *tar.Header {
	return &tar.Header{
		Name:    name,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, 0),
		Format:  tar.FormatPAX,
	}
}

func addTree(tw *tar.Writer, path, name string, st *syscall.Stat_t) error {
	h := header(st, name)
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		h.Typeflag = tar.TypeDir
		h.Name = name + "/"
		if err := tw.WriteHeader(h); err != nil {
			return osError(err, path)
		}
		dir, err := openNonBlocking(path, syscall.O_DIRECTORY|syscall.O_NOFOLLOW)
		if err != nil {
			return osError(err, path)
		}
		if name != "." && kernelFS(int(dir.Fd())) {
			dir.Close()
			return nil // below the path asked for: the directory, empty (as `docker export` has /proc)
		}
		names, err := dir.Readdirnames(-1)
		dir.Close()
		if err != nil {
			return osError(err, path)
		}
		sort.Strings(names)
		for _, child := range names {
			childPath := path + "/" + child
			if path == "/" {
				childPath = "/" + child
			}
			var cst syscall.Stat_t
			if err := syscall.Lstat(childPath, &cst); err != nil {
				if err == syscall.ENOENT {
					continue
				}
				return osError(err, childPath)
			}
			if err := addTree(tw, childPath, name+"/"+child, &cst); err != nil {
				return err
			}
		}
		return nil
	case syscall.S_IFREG:
		return addFile(tw, path, h)
	case syscall.S_IFLNK:
		target, err := os.Readlink(path)
		if err != nil {
			return osError(err, path)
		}
		h.Typeflag, h.Linkname = tar.TypeSymlink, target
	case syscall.S_IFCHR, syscall.S_IFBLK:
		h.Typeflag = tar.TypeChar
		if st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
			h.Typeflag = tar.TypeBlock
		}
		h.Devmajor = int64((st.Rdev >> 8) & 0xfff)
		h.Devminor = int64((st.Rdev & 0xff) | ((st.Rdev >> 12) & 0xfff00))
	case syscall.S_IFIFO:
		h.Typeflag = tar.TypeFifo
	default: // sockets have no tar form
		return nil
	}
	if err := tw.WriteHeader(h); err != nil {
		return osError(err, path)
	}
	return nil
}

// addFile sends exactly the size the file had when it was listed, whatever it does meanwhile.
func addFile(tw *tar.Writer, path string, h *tar.Header) error {
	f, err := openNonBlocking(path, syscall.O_NOFOLLOW)
	if err != nil {
		if err == syscall.ENOENT || err == syscall.ELOOP {
			return nil // gone or replaced by a link since it was listed
		}
		return osError(err, path)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return nil
	}
	h.Typeflag = tar.TypeReg
	h.Size = st.Size
	if err := tw.WriteHeader(h); err != nil {
		return osError(err, path)
	}
	n, err := io.CopyN(tw, f, st.Size)
	if err != nil && err != io.EOF {
		return osError(err, path)
	}
	if n < st.Size { // it shrank: pad to the announced size
		if _, err := io.CopyN(tw, zeros{}, st.Size-n); err != nil {
			return osError(err, path)
		}
	}
	return nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 0
	}
	return len(p), nil
}

// The file systems that are the kernel's interfaces rather than files (their magic numbers from
// statfs(2)): /proc, /sys, cgroups, /dev/pts, /dev/mqueue and the like. A tree that crosses one
// (`cp ID:/ .`) stops at its mount point: their entries are not files to copy, and some of them
// (/proc/kmsg, /proc/kcore) cannot be read at all, which broke the whole archive midway.
var kernelFSMagic = map[int64]bool{
	0x9fa0:     true, // proc
	0x62656572: true, // sysfs
	0x27e0eb:   true, // cgroup
	0x63677270: true, // cgroup2
	0x1cd1:     true, // devpts
	0x19800202: true, // mqueue
	0x64626720: true, // debugfs
	0x74726163: true, // tracefs
	0x73636673: true, // securityfs
	0xcafe4a11: true, // bpf
	0x6165676c: true, // pstore
	0x65735543: true, // fusectl
	0x62656570: true, // configfs
	0x42494e4d: true, // binfmt_misc
	0xf97cff8c: true, // selinuxfs
	0x6e736673: true, // nsfs
	0xde5e81e4: true, // efivarfs
}

func kernelFS(fd int) bool {
	var fs syscall.Statfs_t
	if err := syscall.Fstatfs(fd, &fs); err != nil {
		return false
	}
	return kernelFSMagic[int64(fs.Type)]
}
