"""Overlay mounts of sandbox root filesystems, through the mount(2) syscall directly (no fork)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
MNT_DETACH = 2
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32


def mount_overlay(lowers: list[Path], upper: Path, work: Path, target: Path) -> None:
    """lowers are the image's layers, top first. They are named through /proc/self/fd: the mount
    options, which the sandbox can read in its /proc/mounts, then show no host paths."""
    fds = [os.open(path, os.O_PATH | os.O_DIRECTORY) for path in (*lowers, upper, work)]
    try:
        names = [f"/proc/self/fd/{fd}" for fd in fds]
        options = "lowerdir={},upperdir={},workdir={}".format(":".join(names[:-2]), *names[-2:]).encode()
        if len(options) >= 4096:  # the kernel takes one page of options
            raise OSError(7, f"too many layers ({len(lowers)}) for one overlay mount")
        if _libc.mount(b"overlay", str(target).encode(), b"overlay", 0, options) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount overlay on {target}: {os.strerror(err)}")
    finally:
        for fd in fds:
            os.close(fd)


def mount_tmpfs(target: Path, source: str, options: str, flags: int = MS_NOSUID | MS_NODEV) -> None:
    if _libc.mount(source.encode(), str(target).encode(), b"tmpfs", flags, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {target}: {os.strerror(err)}")


def remount_readonly(target: Path) -> None:
    if _libc.mount(None, str(target).encode(), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"remount {target} read-only: {os.strerror(err)}")


_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _mount_points() -> list[str]:
    """The mount points of /proc/self/mounts, decoded: the kernel writes space, tab, newline and
    backslash in a path as octal escapes (\\040 \\011 \\012 \\134), and the name's bytes as they are."""
    with open("/proc/self/mounts", "rb") as f:
        raw = [line.split(b" ")[1] for line in f.read().splitlines() if line]
    return [decode(point) for point in raw]


def decode(field: bytes) -> str:
    """A path field of /proc/self/mounts or mountinfo, its octal escapes undone."""
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), field))


def is_mount_point(path: Path) -> bool:
    return str(path) in _mount_points()


def unmount(target: Path, lazy: bool = True) -> None:
    """lazy=False fails (EBUSY) while anything still uses the mount, instead of detaching it."""
    if _libc.umount2(str(target).encode(), MNT_DETACH if lazy else 0) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: already gone
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def mounts_under(prefix: Path) -> list[Path]:
    """Mount points below prefix, deepest first, read from /proc/self/mounts."""
    found = [Path(point) for point in _mount_points() if point.startswith(str(prefix) + "/")]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)
