"""A sandbox's root filesystem on the host: the overlay of its image's layers under its own writable
dir, the files the host writes into it before it starts, and its removal.

The image is not the host's: every write into it goes relative to directories opened without
following symlinks, and nothing is removed through a mount into someone else's files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from sandboxd.errors import InvalidRequest, RuntimeFailure
from sandboxd.runtimes.local.oci import mounts

MARKER = "image"  # <home>/image: what the root is built on, read by image deletion and layer gc
# Bytes the writable layer holds that its qgroup does not charge (oci/snapshots.py): kept with it.
INHERITED = "inherited"


def prepare(
    home: Path,
    volume: Path,
    lowers: list[Path],
    marker: dict[str, Any],
    owner: int,
    etc_files: dict[str, str],
    ca_pem: bytes | None,
    restored: bool = False,
) -> None:
    """Mounts the root at home/rootfs: lowers (top first) under volume's upper dir, where all the
    sandbox writes lands (its quota bounds it); then writes its /etc files and CA. A restored
    volume (a copy of a snapshot) has its upper and work dirs already."""
    (home / MARKER).write_text(json.dumps(marker))
    if not restored:
        for sub in ("upper", "work"):
            (volume / sub).mkdir()
        # The overlay root takes its owner from the upper dir: root of the sandbox's user namespace.
        os.chown(volume / "upper", owner, owner)
    remount(home, volume, lowers, owner, etc_files, ca_pem)


def remount(
    home: Path, volume: Path, lowers: list[Path], owner: int, etc_files: dict[str, str], ca_pem: bytes | None
) -> None:
    """Mounts the root again over the upper dir a stopped sandbox kept (start), or first (prepare)."""
    (home / "rootfs").mkdir(parents=True, exist_ok=True)
    mounts.mount_overlay(lowers, volume / "upper", volume / "work", home / "rootfs")
    write_etc_files(home / "rootfs", etc_files, owner)
    if ca_pem is not None:
        install_ca(home / "rootfs", ca_pem, owner)


def remove_mounts(home: Path) -> None:
    for point in mounts.mounts_under(home):
        mounts.unmount(point)
    if mounts.mounts_under(home):
        raise RuntimeFailure(f"could not unmount everything under {home}")


def clear_home(home: Path) -> None:
    """Unmounts the root and removes all of home but the image marker: a stopped sandbox keeps
    only its writable layer, and the marker that keeps its image from being deleted under it
    (and the count of what that layer inherited, which its disk limit still counts)."""
    remove_mounts(home)
    for entry in home.iterdir() if home.exists() else []:
        if entry.name in (MARKER, INHERITED):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def read_marker(home: Path) -> dict[str, Any]:
    """What the root is built on (written by prepare, by the server: not the sandbox's)."""
    marker: dict[str, Any] = json.loads((home / MARKER).read_text())
    return marker


def remove_home(home: Path) -> None:
    remove_mounts(home)  # never rmtree through a mount into someone else's files
    shutil.rmtree(home, ignore_errors=True)


def images_in_use(data_dir: Path) -> tuple[set[str], set[str]]:
    """The images and layers that this data dir's sandboxes and snapshots are built on."""
    names: set[str] = set()
    layers: set[str] = set()
    markers = [*(data_dir / "sandboxes").glob(f"*/{MARKER}"), *(data_dir / "snapshots").glob(f"*/{MARKER}")]
    for path in markers:
        try:
            text = path.read_text()
        except OSError:
            continue
        try:
            marker = json.loads(text)
        except ValueError:  # a sandbox from before layered images: the path of images/<name>/rootfs
            names.add(unquote(Path(text.strip()).parent.name))
            continue
        names.add(str(marker.get("image")))
        layers.update(marker.get("layers", []))
    return names, layers


def write_etc_files(rootfs: Path, files: dict[str, str], owner: int) -> None:
    """Writes files into the image's /etc without following any symlink the image put there.

    The host writes these as root before the sandbox starts, so an image whose /etc (or
    /etc/hosts) is a symlink to a host path must not redirect the write: every step is O_NOFOLLOW
    relative to a directory fd, and an /etc that is not a plain directory is refused."""
    try:
        etc = os.open(rootfs / "etc", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise InvalidRequest("image", f"the image's /etc is not a directory: {exc.strerror}") from None
    try:
        for name, text in files.items():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=etc)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=etc)
            with os.fdopen(fd, "w") as f:
                f.write(text)
                os.fchown(f.fileno(), owner, owner)
    finally:
        os.close(etc)


def install_ca(rootfs: Path, pem: bytes, owner: int) -> None:
    """Adds the broker's CA to the image's system bundle (/etc/ssl/certs/ca-certificates.crt),
    every step relative to a directory opened without following symlinks, as write_etc_files."""
    fds: list[int] = []
    try:
        fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY)
        fds.append(fd)
        for part in ("etc", "ssl", "certs"):
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                os.chown(part, owner, owner, dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                pass
            try:
                fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                raise InvalidRequest(
                    "image", f"the image's /etc/ssl/certs is not a directory: {exc.strerror}"
                ) from None
            fds.append(fd)
        name = "ca-certificates.crt"
        try:
            # Non-blocking: the image may hold a FIFO here, whose open would wait forever.
            old = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
            with os.fdopen(old, "rb") as f:
                bundle = f.read(16 * 1024 * 1024) if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else b""
        except OSError:
            bundle = b""
        if pem in bundle:  # a start of a stopped sandbox: its bundle has the CA already
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=fd)
        new = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd)
        with os.fdopen(new, "wb") as f:
            f.write(bundle.rstrip(b"\n") + b"\n" + pem)
            os.fchown(f.fileno(), owner, owner)
    finally:
        for fd in fds:
            os.close(fd)
