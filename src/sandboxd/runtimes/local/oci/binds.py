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
RESOLVE_NO_MAGICLINKS, RESOLVE_BENEATH = 0x02, 0x08
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 1, 2, 4, 32, 4096


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def allowed_root(roots: list[Path], host_path: str) -> Path | None:
    """The allowed root the path lies under (the longest one), or None."""
    found = [r for r in roots if host_path == str(r) or host_path.startswith(str(r).rstrip("/") + "/")]
    return max(found, key=lambda r: len(str(r)), default=None)


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
        how = _OpenHow(flags=os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, resolve=RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
        fd = _libc.syscall(SYS_OPENAT2, root_fd, relative.encode(), ctypes.byref(how), ctypes.sizeof(how))
        if fd < 0:
            err = ctypes.get_errno()
            reason = {
                errno.EXDEV: f"leads out of {root} (through a symlink)",
                errno.ELOOP: "resolves through a symlink loop or a /proc link",
                errno.ENOTDIR: "is not a directory",
                errno.ENOENT: "does not exist",
                errno.EACCES: "cannot be reached",
            }.get(err, os.strerror(err))
            raise InvalidRequest(field, f"{field}: {host_path} {reason}")
        real = os.readlink(f"/proc/self/fd/{fd}")  # where it is, whatever the path said
        for path in (os.path.realpath(p) for p in private):
            if real == path or real.startswith(path.rstrip("/") + "/") or path.startswith(real.rstrip("/") + "/"):
                os.close(fd)
                raise InvalidRequest(field, f"{field}: {host_path} holds or is inside the server's own data")
        return int(fd)
    finally:
        os.close(root_fd)


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
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0)
    _mount("", target, flags)


def _mount(source: str, target: Path, flags: int) -> None:
    if _libc.mount(source.encode() or None, str(target).encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind mount on {target}: {os.strerror(err)}")
