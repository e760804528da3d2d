"""Layers on disk: unpacking a layer blob (any compression, OCI whiteouts made overlayfs's) into its
own directory, the owners shifted into the sandboxes' uid range, and the reads of a layer that never
follow a link it holds. A layer's content is an image author's: hostile to the host."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from sandboxd import tarsafe
from sandboxd.errors import InvalidRequest, RuntimeFailure
from sandboxd.runtimes.local.oci.mounts import mounts_under, unmount

OPAQUE_XATTR = "trusted.overlay.opaque"


def new_layer_id() -> str:
    return "local-" + os.urandom(16).hex()


def safe_layer_id(layer_id: str) -> str:
    if not layer_id or "/" in layer_id or layer_id.startswith(".") or len(layer_id) > 160:
        raise RuntimeFailure(f"invalid layer id {layer_id!r}")
    return layer_id


def remove_tree(path: Path) -> None:
    # A build killed midway can leave the chroot's /proc, /sys or /dev mounted inside it: unmount
    # them first, or rmtree would walk into the host's own.
    for point in mounts_under(path):
        unmount(point)
    if not mounts_under(path):
        shutil.rmtree(path, ignore_errors=True)


def remove_device_nodes(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if stat.S_ISCHR(os.lstat(path).st_mode) or stat.S_ISBLK(os.lstat(path).st_mode):
                os.unlink(path)


class _Capped(io.RawIOBase):
    """A decompressed layer stream that refuses to grow past a limit (decompression bombs)."""

    def __init__(self, inner: Any, limit: int) -> None:
        self.inner, self.left = inner, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        self.left -= len(data)
        if self.left < 0:
            raise InvalidRequest("image", "a layer unpacks to more than the allowed size")
        buffer[: len(data)] = data
        return len(data)


@contextlib.contextmanager
def open_layer(path: Path, limit: int) -> Iterator[BinaryIO]:
    """A layer blob as an uncompressed tar stream, whatever its compression (gzip, zstd, none)."""
    with open(path, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        inner: Any = raw
        if magic[:2] == b"\x1f\x8b":
            inner = gzip.GzipFile(fileobj=raw)
        elif magic == b"\x28\xb5\x2f\xfd":
            inner = zstandard.ZstdDecompressor().stream_reader(raw)
        yield io.BufferedReader(_Capped(inner, limit), 1 << 20)


@contextlib.contextmanager
def layer_errors() -> Iterator[None]:
    """A layer that is not a readable tar, or asks for what tarfile refuses, is the image's fault."""
    try:
        yield
    except tarsafe.UnsafeArchive as exc:
        raise InvalidRequest("image", f"refused layer entry {exc.member!r}: {exc.reason}") from None
    except (tarfile.TarError, EOFError, zstandard.ZstdError, gzip.BadGzipFile) as exc:
        raise InvalidRequest("image", f"unreadable layer: {exc}") from None


def find_python(layers: tuple[Path, ...]) -> str | None:
    """The image's python3, for `image inspect` (the agent needs none). Looked up with lstat one
    component at a time: a layer's `usr` may be a symlink, and following it would probe host paths."""
    for candidate in ("usr/bin/python3", "usr/local/bin/python3", "bin/python3"):
        for layer in reversed(layers):  # the top layer that has the path decides
            mode = _lstat_within(layer, candidate)
            if mode is not None:
                if stat.S_ISCHR(mode):  # a whiteout: deleted above the base
                    break
                return "/" + candidate
    return None


def _lstat_within(root: Path, relative: str) -> int | None:
    """The mode of root/relative, or None if it is missing or any directory on the way is not a
    real directory (never followed)."""
    path = root
    *dirs, name = relative.split("/")
    try:
        for part in dirs:
            path = path / part
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return None
        return os.lstat(path / name).st_mode
    except OSError:
        return None


def shift_ownership(root: Path, base: int, size: int = 65536) -> None:
    """Moves every file's owner into the sandbox uid range [base, base+size), keeping setuid/setgid
    bits.

    Owners already in the range are left (a committed upper dir was written by mapped ids). An
    image's owner past the range would land on a host uid of someone else — the uids above the range
    own the sandboxes' user namespaces (userns.py) — so it becomes the sandbox's nobody, and loses
    its setuid/setgid bits. chown clears setuid/setgid, so the mode is put back afterwards for
    everything but symlinks.
    """
    nobody = base + 65534 if size > 65534 else base + size - 1

    def mapped(i: int) -> int | None:
        return i + base if i < size else None

    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, None]:
            path = dirpath if name is None else os.path.join(dirpath, name)
            st = os.lstat(path)
            if base <= st.st_uid < base + size and base <= st.st_gid < base + size:
                continue
            uid, gid = mapped(st.st_uid), mapped(st.st_gid)
            os.lchown(path, nobody if uid is None else uid, nobody if gid is None else gid)
            if stat.S_ISLNK(st.st_mode) or not st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                continue
            keep = stat.S_IMODE(st.st_mode)
            if uid is None:
                keep &= ~stat.S_ISUID
            if gid is None:
                keep &= ~stat.S_ISGID
            os.chmod(path, keep)


# A layout may come from an API caller (the images API's import): a digest is a name under blobs/,
# never a path.
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def oci_layout_layers(layout: Path, ref: str | None) -> list[Path]:
    def blob(digest: str) -> Path:
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
            raise InvalidRequest("body", f"invalid digest {digest!r:.100} in the OCI layout")
        algo, _, value = digest.partition(":")
        return layout / "blobs" / algo / value

    index = json.loads((layout / "index.json").read_text())
    manifests = index.get("manifests", [])
    if ref:
        manifests = [m for m in manifests if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref]
    if not manifests:
        raise InvalidRequest("ref", "no matching manifest in the OCI layout")
    manifest = json.loads(blob(manifests[0]["digest"]).read_text())
    if "manifests" in manifest:  # an index: take the entry for this machine
        entry = next(
            (m for m in manifest["manifests"] if m.get("platform", {}).get("architecture") == "amd64"),
            manifest["manifests"][0],
        )
        manifest = json.loads(blob(entry["digest"]).read_text())
    return [blob(layer["digest"]) for layer in manifest["layers"]]


def apply_layer(tar: tarfile.TarFile, root: Path) -> None:
    """Unpacks one layer into its own directory, turning OCI whiteouts into overlayfs's: ``.wh.x``
    becomes a 0/0 character device named x, ``.wh..wh..opq`` the opaque xattr on its directory.
    Whiteouts are reached like any member (component by component, never through a symlink), or
    "etc/.wh.shadow" under an "etc" symlink would reach the host's /etc."""
    with rootfs_extractor(root) as out:
        for member in tarsafe.members(tar):
            *above, base = tarsafe.split_name(member.name) or ("",)
            if not base.startswith(".wh."):
                out.extract(tar, member)
                continue
            hidden = base[4:]
            if hidden in ("", ".", ".."):
                raise tarsafe.UnsafeArchive(member.name, "a whiteout of nothing, outside the image")
            directory = out.directory(above, member.name)
            try:
                if base == ".wh..wh..opq":
                    os.setxattr(directory, OPAQUE_XATTR, b"y")
                else:
                    out.remove(directory, hidden, member.name)
                    os.mknod(hidden, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=directory)
            finally:
                os.close(directory)


def rootfs_extractor(root: Path, max_bytes: int | None = None) -> tarsafe.Extractor:
    """A root filesystem keeps its owners (shifted afterwards), setuid and sticky bits (su, /tmp)
    and symlinks to anywhere (they resolve inside the sandbox's own root, never on the host); a
    later layer entry replaces a whole directory; device nodes under /dev are dropped, since every
    sandbox gets its own /dev, and refused elsewhere (raw access to a host device)."""
    rules = tarsafe.Rules(
        keep_owners=True,
        keep_special_bits=True,
        contained_links=False,
        fifos=True,
        drop_devices_under="dev",
        replace_dirs=True,
        max_bytes=max_bytes,
    )
    return tarsafe.Extractor(root, rules)
