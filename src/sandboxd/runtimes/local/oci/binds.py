"""Host directories bind-mounted into sandboxes, only from under the roots the operator allowed.

The API caller names the host path and may control what is under an allowed root (another
sandbox with a writable bind of it can plant symlinks there, and swap a directory for a symlink
at any moment). So the path is never resolved by name twice: it is opened once, component by
component beneath the allowed root's descriptor (openat2 with RESOLVE_BENEATH: a symlink or ``..``
that leads out fails with EXDEV), and the descriptor itself is bind-mounted (through
/proc/self/fd) onto a staging point in the sandbox's own directory, which the OCI runtime then
binds into the sandbox. What is mounted is what was checked.

Staging mounts live under ``sandboxes/<id>/binds`` and go with the sandbox's home (rootfs.remove_home
unmounts everything under it), so the startup sweep removes them after a crash too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

from sandboxd.errors import InvalidRequest

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
SYS_OPENAT2 = 437  # the same number on every architecture (the unified syscall table)
RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_BENEATH = 0x01, 0x02, 0x08
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 1 << 18
# statvfs f_flag bits a bind remount keeps from its source (ST_* equal MS_* for these).
_KEPT_FLAGS = os.ST_RDONLY | os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME
_KEPT_FLAGS |= os.ST_RELATIME


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def allowed_root(roots: list[Path], host_path: str) -> Path | None:
    """The allowed root the path lies under (the longest one), or None."""
    found = [r for r in roots if host_path == str(r) or host_path.startswith(str(r).rstrip("/") + "/")]
    return max(found, key=lambda r: len(str(r)), default=None)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _ancestry(fd: int) -> set[tuple[int, int]]:
    """The (st_dev, st_ino) of the directory fd holds and of every directory above it, by ".."
    from the descriptor itself: no path string is trusted (renames and symlinks do not fool it)."""
    seen: set[tuple[int, int]] = set()
    current = os.dup(fd)
    try:
        while True:
            here = _identity(os.fstat(current))
            if here in seen:  # the top: ".." of / is / itself
                return seen
            seen.add(here)
            parent = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=current)
            os.close(current)
            current = parent
    finally:
        os.close(current)


def _private_overlap(fd: int, private: tuple[Path, ...]) -> bool:
    """Whether the directory fd holds is, lies in, or holds one of the private directories."""
    above = _ancestry(fd)
    me = _identity(os.fstat(fd))
    for path in private:
        try:
            pfd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            if _identity(os.fstat(pfd)) in above or me in _ancestry(pfd):
                return True
        finally:
            os.close(pfd)
    return False


def check_roots(roots: list[Path], private: tuple[Path, ...]) -> None:
    """At server start: an allowed root that is /, holds the server's data or lies in it would
    let binds show every sandbox's files; refused with the root named (ValueError)."""
    for root in roots:
        if not root.is_absolute():
            raise ValueError(f"bind_allow: {root} is not an absolute path")
        try:
            fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ValueError(f"bind_allow: {root} cannot be opened: {exc.strerror}") from None
        try:
            if _identity(os.fstat(fd)) == _identity(os.stat("/")):
                raise ValueError("bind_allow: / would let sandboxes bind the server's own data; allow narrower dirs")
            if _private_overlap(fd, private):
                shown = ", ".join(str(p) for p in private)
                raise ValueError(f"bind_allow: {root} holds or lies in the server's own data ({shown})")
        finally:
            os.close(fd)


def open_beneath(roots: list[Path], host_path: str, field: str, private: tuple[Path, ...] = ()) -> int:
    """An O_PATH descriptor of the directory host_path names, resolved beneath its allowed root.
    InvalidRequest(field) for a path outside every root, escaping one, missing or not a directory,
    or one that is, holds or lies in a private directory (the server's data: every sandbox's files)."""
    root = allowed_root(roots, host_path)
    if root is None:
        allowed = ", ".join(str(r) for r in roots) or "none are allowed on this server (bind_allow)"
        raise InvalidRequest(
            field, f"{field}: {host_path} is not under a directory the operator allows for binds: {allowed}"
        )
    relative = host_path[len(str(root).rstrip("/")) :].lstrip("/") or "."
    try:
        # The operator's own path: trusted, may itself hold symlinks (resolved once, here).
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidRequest(field, f"{field}: the allowed directory {root} cannot be opened: {exc.strerror}") from None
    try:
        # Never across a mount point below the root (a bind of the server's data placed there,
        # or another filesystem): each filesystem to be bound is allowed by name.
        fd = _openat2(root_fd, relative, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
        if fd < 0:
            err = ctypes.get_errno()
            if (
                err == errno.EXDEV
                and (other := _openat2(root_fd, relative, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)) >= 0
            ):
                os.close(other)
                raise InvalidRequest(
                    field, f"{field}: {host_path} crosses a mount point below {root}; allow that mount point itself"
                )
            reason = {
                errno.EXDEV: f"leads out of {root} (through a symlink)",
                errno.ELOOP: "resolves through a symlink loop or a /proc link",
                errno.ENOTDIR: "is not a directory",
                errno.ENOENT: "does not exist",
                errno.EACCES: "cannot be reached",
            }.get(err, os.strerror(err))
            raise InvalidRequest(field, f"{field}: {host_path} {reason}")
        try:
            inside = _private_overlap(fd, private)
        except BaseException:
            os.close(fd)
            raise
        if inside:
            os.close(fd)
            raise InvalidRequest(field, f"{field}: {host_path} holds or is inside the server's own data")
        return int(fd)
    finally:
        os.close(root_fd)


def _openat2(dir_fd: int, path: str, resolve: int) -> int:
    how = _OpenHow(flags=os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, resolve=resolve)
    return int(_libc.syscall(SYS_OPENAT2, dir_fd, path.encode(), ctypes.byref(how), ctypes.sizeof(how)))


def check(roots: list[Path], host_path: str, field: str, private: tuple[Path, ...] = ()) -> None:
    """What create would refuse, said before a sandbox record exists (create checks again)."""
    os.close(open_beneath(roots, host_path, field, private))


def stage(
    roots: list[Path], host_path: str, field: str, target: Path, read_only: bool, private: tuple[Path, ...] = ()
) -> None:
    """Bind-mounts the checked directory on target (made here), nosuid and nodev, read-only if asked.
    Not recursive: mounts below host_path on the host stay out of the sandbox."""
    fd = open_beneath(roots, host_path, field, private)
    try:
        # The OCI runtime reaches the staging point as the sandbox's root: traverse only.
        target.parent.mkdir(mode=0o711, exist_ok=True)
        target.mkdir(mode=0o700)
        _mount(f"/proc/self/fd/{fd}", target, MS_BIND)
    finally:
        os.close(fd)
    # Private: mounts made or removed below it never propagate to the host's shared peers.
    _mount("", target, MS_PRIVATE)
    # The remount sets every per-mount flag: the source's own (noexec, atime...) are kept.
    kept = os.statvfs(target).f_flag & _KEPT_FLAGS
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | kept | (MS_RDONLY if read_only else 0)
    _mount("", target, flags)


def _mount(source: str, target: Path, flags: int) -> None:
    if _libc.mount(source.encode() or None, str(target).encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind mount on {target}: {os.strerror(err)}")
