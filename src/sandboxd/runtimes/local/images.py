"""Local images: read-only root filesystems, shared by every sandbox started from them.

An image is a directory ``images/<name>/rootfs`` whose files are owned by the user-namespace range
that sandboxes run in (container uid N is host uid base+N), so that root inside a sandbox owns its
files without being root on the host. Images are built or imported into a temporary directory and
renamed into place only when complete, so a crash never leaves a half image that looks usable.
"""

from __future__ import annotations

import builtins
import contextlib
import gzip
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote

import zstandard

from sandboxd.errors import Conflict, ImageNotFound, InvalidRequest
from sandboxd.runtimes.local.mounts import mounts_under, unmount
from sandboxd.runtimes.local.registry import Credentials, RegistryClient, looks_like_reference, parse_reference

DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ["python3", "ca-certificates", "procps"]


@dataclass(frozen=True)
class Image:
    name: str
    rootfs: Path
    python: str | None  # the interpreter that runs the agent, if the image has one


class ImageStore:
    def __init__(
        self,
        root: Path,
        id_base: int,
        registry_auth: dict[str, Credentials] | None = None,
        max_layer_bytes: int = 8 << 30,
    ) -> None:
        self.root = root
        self.id_base = id_base
        self.blobs = root / ".blobs"  # registry blobs by digest, shared by every image
        self.registry_auth = registry_auth or {}
        self.max_layer_bytes = max_layer_bytes
        self._pulls: dict[str, threading.Lock] = {}
        self._pulls_lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    def get(self, name: str) -> Image:
        rootfs = self.root / _dir_name(name) / "rootfs"
        if not rootfs.is_dir():
            raise ImageNotFound(name)
        return Image(name=name, rootfs=rootfs, python=_find_python(rootfs))

    def list(self) -> list[str]:
        return sorted(unquote(p.name) for p in self.root.iterdir() if (p / "rootfs").is_dir())

    def exists(self, name: str) -> bool:
        return (self.root / _dir_name(name) / "rootfs").is_dir()

    def pull(
        self,
        reference: str,
        progress: Callable[[str, int, int], None] | None = None,
        credentials: Credentials | None = None,
    ) -> Image:
        """Pulls name[:tag|@digest] from its registry into a local image named by the reference.

        Concurrent pulls of one reference pull once: the others wait and find it there."""
        ref = parse_reference(reference)
        with self._pulls_lock:
            lock = self._pulls.setdefault(reference, threading.Lock())
        with lock:
            if self.exists(reference):
                return self.get(reference)
            client = RegistryClient(ref, credentials or self.registry_auth.get(ref.registry))
            try:
                manifest, manifest_digest = client.resolve()
                layers = manifest["layers"]
                total = sum(int(layer.get("size", 0)) for layer in layers)
                done = [0]

                def advance(n: int) -> None:
                    done[0] += n
                    if progress:
                        progress(str(ref), done[0], total)

                paths = [client.blob(layer["digest"], self.blobs, advance) for layer in layers]
            finally:
                client.close()

            def fill(staging: Path) -> None:
                for path in paths:
                    if progress:  # unpacking takes a while too, also when every blob was cached
                        progress(str(ref), done[0], total)
                    with _open_layer(path, self.max_layer_bytes) as stream:
                        with tarfile.open(fileobj=stream, mode="r|") as tar:
                            _apply_layer(tar, staging)

            meta = {
                "reference": str(ref),
                "digest": manifest_digest,
                "layers": [layer["digest"] for layer in layers],
                "blobs": [layer["digest"] for layer in layers],
            }
            return self._install(reference, fill, meta)

    def build_debian(self, name: str = "debian", progress: Callable[[str], None] | None = None) -> Image:
        """Builds Debian minbase plus python3 from the configured apt mirror with mmdebstrap."""

        def step(staging: Path) -> None:
            cmd = [
                "mmdebstrap",
                "--variant=minbase",
                "--mode=root",
                "--include=" + ",".join(DEBIAN_PACKAGES),
                DEBIAN_SUITE,
                str(staging),
            ]
            with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if progress:
                        progress(line.rstrip())
            if proc.returncode != 0:
                raise RuntimeError(f"mmdebstrap failed with exit code {proc.returncode}")

        return self._install(name, step)

    def import_tarball(self, name: str, tarball: Path) -> Image:
        def step(staging: Path) -> None:
            with tarfile.open(tarball) as tar:
                tar.extractall(staging, filter=_rootfs_filter)

        return self._install(name, step)

    def import_oci_layout(self, name: str, layout: Path, ref: str | None = None) -> Image:
        """Unpacks a local OCI image layout (index.json → manifest → layers) with whiteouts."""

        def step(staging: Path) -> None:
            for layer in _oci_layers(layout, ref):
                with _open_layer(layer, self.max_layer_bytes) as stream:
                    with tarfile.open(fileobj=stream, mode="r|") as tar:
                        _apply_layer(tar, staging)

        return self._install(name, step)

    def inspect(self, name: str) -> dict[str, Any]:
        """What is known of an image: its source, digest and layers (for pulled images)."""
        image = self.get(name)
        meta_path = image.rootfs.parent / "image.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return {"name": name, "python": image.python, **meta}

    def delete(self, name: str, in_use: Callable[[str], bool] = lambda _name: False) -> None:
        """Removes an image, unless a sandbox's root is built on it (its files would vanish under
        the running sandbox)."""
        path = self.root / _dir_name(name)
        if not path.exists():
            raise ImageNotFound(name)
        if in_use(name):
            raise Conflict(f"image {name!r} is in use by a sandbox")
        shutil.rmtree(path)

    def gc(self) -> builtins.list[str]:
        """Deletes downloaded blobs that no image refers to; returns their digests."""
        wanted: set[str] = set()
        for meta in self.root.glob("*/image.json"):
            wanted.update(json.loads(meta.read_text()).get("blobs", []))
        removed = []
        for blob in (self.blobs / "sha256").glob("*") if self.blobs.exists() else []:
            digest = f"sha256:{blob.name}"
            if digest not in wanted:
                blob.unlink()
                removed.append(digest)
        return removed

    def _install(self, name: str, fill: Callable[[Path], None], meta: dict[str, Any] | None = None) -> Image:
        target = self.root / _dir_name(name)
        if target.exists():
            raise InvalidRequest("name", f"image {name!r} already exists")
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.root))
        try:
            staging = tmp / "rootfs"
            staging.mkdir()
            fill(staging)
            shift_ownership(staging, self.id_base)
            (tmp / "image.json").write_text(json.dumps(meta or {}))
            os.rename(tmp, target)
        except BaseException:
            _remove_tree(tmp)
            raise
        return self.get(name)

    def remove_partials(self) -> None:
        for path in self.root.glob(".partial-*"):
            _remove_tree(path)


def _remove_tree(path: Path) -> None:
    # A build killed midway can leave the chroot's /proc, /sys or /dev mounted inside it: unmount
    # them first, or rmtree would walk into the host's own.
    for point in mounts_under(path):
        unmount(point)
    if not mounts_under(path):
        shutil.rmtree(path, ignore_errors=True)


def _dir_name(name: str) -> str:
    # A registry reference (host:port/repo:tag) is kept under its quoted form: one path component.
    return quote(name, safe="") if looks_like_reference(name) else _safe_name(name)


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
def _open_layer(path: Path, limit: int) -> Iterator[BinaryIO]:
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


def _safe_name(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or len(name) > 128:
        raise InvalidRequest("image", f"invalid image name {name!r}")
    return name


def _find_python(rootfs: Path) -> str | None:
    for candidate in ("usr/bin/python3", "usr/local/bin/python3", "bin/python3"):
        if os.path.lexists(rootfs / candidate):
            return "/" + candidate
    return None


def shift_ownership(root: Path, base: int) -> None:
    """Moves every file's owner into the sandbox uid range, keeping setuid/setgid bits.

    chown clears setuid/setgid, so the mode is put back afterwards for everything but symlinks.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, None]:
            path = dirpath if name is None else os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_uid >= base and st.st_gid >= base:
                continue
            os.lchown(path, st.st_uid + base, st.st_gid + base)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(st.st_mode))


def _rootfs_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    # The "tar" filter refuses absolute paths, ".." and links out of the tree and keeps owners; a
    # root filesystem also needs its setuid and sticky bits (su, /tmp), which that filter clears.
    checked = tarfile.tar_filter(member, dest)
    return checked.replace(mode=member.mode, deep=False) if checked is not None else None


def _oci_layers(layout: Path, ref: str | None) -> list[Path]:
    def blob(digest: str) -> Path:
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


def _apply_layer(tar: tarfile.TarFile, root: Path) -> None:
    """Applies one layer in archive order: whiteouts delete from the layers below, the rest is
    extracted through the same safety filter as any root filesystem."""
    for member in tar:
        parent, _, base = member.name.rstrip("/").rpartition("/")
        if base.startswith(".wh."):
            # Whiteouts get the same checks as any member, or "/etc/.wh.shadow" would delete the
            # host's /etc/shadow.
            target = _inside(root, parent)
            if base == ".wh..wh..opq":  # opaque directory: drop what lower layers put there
                if target.is_dir() and not target.is_symlink():
                    for child in target.iterdir():
                        _remove(child)
            else:
                _remove(_inside(root, f"{parent}/{base[4:]}"))
            continue
        tar.extract(member, root, filter=_rootfs_filter)


def _inside(root: Path, name: str) -> Path:
    """root/name, refused if it is absolute, has "..", or resolves (through symlinks) outside."""
    if name.startswith("/") or ".." in name.split("/"):
        raise InvalidRequest("layer", f"refused layer entry {name!r}: outside the image")
    path = root / name
    real_root = os.path.realpath(root)
    real_parent = os.path.realpath(path.parent)
    if real_parent != real_root and not real_parent.startswith(real_root + os.sep):
        raise InvalidRequest("layer", f"refused layer entry {name!r}: outside the image")
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
