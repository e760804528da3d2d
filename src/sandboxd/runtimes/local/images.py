"""Local images: stacks of read-only layers, shared by every sandbox and every image built on them.

A layer is a directory ``images/.layers/<id>`` in overlayfs's own format (a deletion is a 0/0
character device, an opaque directory carries ``trusted.overlay.opaque``), so a sandbox's root is
one overlay mount whose lower dirs are its image's layers, and a sandbox's upper dir can itself
become a layer (template builds). Files are owned by the user-namespace range that sandboxes run in
(container uid N is host uid base+N), so root inside owns its files without being root on the host.

An image is ``images/<name>/image.json``: its layers (bottom first), the config sandboxes started
from it get (env, cwd, user, start command, readiness check), and where it came from. Layers and
images are made in a temporary directory and renamed into place only when complete, so a crash never
leaves a half one that looks usable. Registry blobs are kept by digest in ``images/.blobs``.

Garbage collection takes an exclusive lock on ``images/.gc.lock``; pulls and builds hold it shared
while they make layers that no image refers to yet, in this process or another (the CLI).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import functools
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote

import httpx
import zstandard

from sandboxd import tarsafe
from sandboxd.errors import Conflict, ImageNotFound, InvalidRequest, RuntimeFailure, UpstreamFailure
from sandboxd.runtimes.local.mounts import mounts_under, unmount
from sandboxd.runtimes.local.registry import (
    DIGEST,
    Credentials,
    RegistryClient,
    looks_like_reference,
    parse_reference,
)
from sandboxd.runtimes.outbound import OutboundRules

DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ["python3", "ca-certificates", "procps"]
OPAQUE_XATTR = "trusted.overlay.opaque"
MAX_LAYERS = 200  # overlayfs takes one page of mount options: about 230 lower dirs named by fd
GC_GRACE_SECONDS = 3600


@dataclass(frozen=True)
class Image:
    name: str
    layers: tuple[Path, ...]  # bottom first
    python: str | None  # the interpreter that runs the agent, if the image has one
    config: dict[str, Any] = field(default_factory=dict)  # env, cwd, user, entrypoint, ready_check
    layer_ids: tuple[str, ...] = ()


class ImageStore:
    def __init__(
        self,
        root: Path,
        id_base: int,
        registry_auth: dict[str, Credentials] | None = None,
        max_layer_bytes: int = 8 << 30,
        outbound: OutboundRules | None = None,
    ) -> None:
        self.root = root
        self.id_base = id_base
        self.blobs = root / ".blobs"  # registry blobs by digest, shared by every image
        self.layer_root = root / ".layers"
        self.cache_root = root / ".cache"  # template step cache: key → layer id
        self.registry_auth = registry_auth or {}
        self.max_layer_bytes = max_layer_bytes
        # Where pulls may connect: by default no registry on this host or its networks.
        self.outbound = outbound or OutboundRules()
        self._pulls: dict[str, threading.Lock] = {}
        self._pulls_lock = threading.Lock()
        for path in (root, self.layer_root, self.cache_root):
            path.mkdir(parents=True, exist_ok=True)
        self._migrate_flat_images()

    # -- reading ---------------------------------------------------------------------------------

    def get(self, name: str) -> Image:
        meta = self._meta(name)
        ids = tuple(meta["layers"])
        layers = tuple(self.layer_root / layer_id for layer_id in ids)
        if not all(path.is_dir() for path in layers):
            raise RuntimeFailure(f"image {name!r} is missing layers; delete and import it again")
        return Image(
            name=name, layers=layers, python=_find_python(layers), config=meta.get("config", {}), layer_ids=ids
        )

    def _meta(self, name: str) -> dict[str, Any]:
        path = self.root / _dir_name(name) / "image.json"
        try:
            meta: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise ImageNotFound(name) from None
        return meta

    def list(self) -> list[str]:
        return sorted(unquote(p.name) for p in self.root.iterdir() if (p / "image.json").is_file())

    def exists(self, name: str) -> bool:
        return (self.root / _dir_name(name) / "image.json").is_file()

    def layer_paths(self, ids: builtins.list[str]) -> builtins.list[Path]:
        paths = [self.layer_root / _safe_layer_id(layer_id) for layer_id in ids]
        for path in paths:
            if not path.is_dir():
                raise RuntimeFailure(f"layer {path.name} is missing")
        return paths

    def inspect(self, name: str) -> dict[str, Any]:
        """What is known of an image: its layers, config, source and digest (for pulled images)."""
        image = self.get(name)
        meta = self._meta(name)
        return {"name": name, "python": image.python, **meta}

    # -- making images ---------------------------------------------------------------------------

    def pull(
        self,
        reference: str,
        progress: Callable[[str, int, int], None] | None = None,
        credentials: Credentials | None = None,
    ) -> Image:
        """Pulls name[:tag|@digest] from its registry into a local image named by the reference.
        Each layer blob becomes one layer directory, shared with every image that has that blob.

        Concurrent pulls of one reference pull once: the others wait and find it there."""
        ref = parse_reference(reference)
        with self._pulls_lock:
            lock = self._pulls.setdefault(reference, threading.Lock())
        with lock, self._building():
            if self.exists(reference):
                return self.get(reference)
            client = RegistryClient(ref, credentials or self.registry_auth.get(ref.registry), self.outbound)
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
                config_digest = manifest.get("config", {}).get("digest")
                config_path = client.blob(config_digest, self.blobs) if config_digest else None
            except httpx.HTTPError as exc:
                # Refused, timed out, reset, a bad redirect: the registry's failure, not ours.
                raise UpstreamFailure(f"registry {ref.registry}: {_describe(exc)}", "image") from None
            except RuntimeFailure as exc:  # the client's word for an answer it cannot use
                raise UpstreamFailure(exc.message, "image") from None
            finally:
                client.close()
            ids = []
            for layer, path in zip(layers, paths, strict=True):
                if progress:  # unpacking takes a while too, also when every blob was cached
                    progress(str(ref), done[0], total)
                layer_id = str(layer["digest"]).replace(":", "-")
                ids.append(self._make_layer(layer_id, functools.partial(self._unpack_blob, path)))
            meta = {
                "reference": str(ref),
                "digest": manifest_digest,
                "blobs": [layer["digest"] for layer in layers] + ([config_digest] if config_digest else []),
                "config": _oci_config(config_path),
            }
            return self._install(reference, ids, meta)

    def build_debian(self, name: str = "debian", progress: Callable[[str], None] | None = None) -> Image:
        """Builds Debian minbase plus python3 from the configured apt mirror with mmdebstrap."""

        def fill(staging: Path) -> None:
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
            # The sandbox gets its own /dev; device nodes the build made there are not kept.
            _remove_device_nodes(staging / "dev")

        self._check_new(name)
        with self._building():
            return self._install(name, [self._make_layer(_new_layer_id(), fill)], {"source": "mmdebstrap"})

    def import_tarball(self, name: str, tarball: Path) -> Image:
        """A root filesystem tarball as a one-layer image."""

        def fill(staging: Path) -> None:
            with _layer_errors(), tarfile.open(tarball, tarinfo=tarsafe.BoundedTarInfo) as tar:
                with _rootfs(staging, max_bytes=self.max_layer_bytes) as out:
                    for member in tarsafe.members(tar):
                        out.extract(tar, member)

        self._check_new(name)
        with self._building():
            return self._install(name, [self._make_layer(_new_layer_id(), fill)], {"source": "tarball"})

    def import_oci_layout(self, name: str, layout: Path, ref: str | None = None) -> Image:
        """A local OCI image layout (index.json → manifest → layers), one layer per blob."""
        self._check_new(name)
        with self._building():
            ids = []
            for blob in _oci_layers(layout, ref):
                digest = hashlib.sha256()
                with open(blob, "rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                layer_id = "sha256-" + digest.hexdigest()
                ids.append(self._make_layer(layer_id, functools.partial(self._unpack_blob, blob)))
            return self._install(name, ids, {"source": "oci-layout"})

    def add_layer(self, upper: Path) -> str:
        """Takes a sandbox's upper dir (already in overlay format) as a new layer; returns its id.
        The directory is moved, not copied, when it is on the same filesystem."""
        layer_id = _new_layer_id()
        target = self.layer_root / layer_id
        os.utime(upper)  # its age is how gc tells it from an abandoned layer until it is cached
        try:
            os.rename(upper, target)
        except OSError:
            tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.root))
            try:
                # cp -a keeps what a layer is made of: owners, modes, xattrs, 0/0 devices. A
                # sandbox's upper dir is in a subvolume of its own: always a copy (a reflink when
                # the images are on the same btrfs).
                subprocess.run(
                    ["cp", "-a", "--reflink=auto", "--", f"{upper}/.", str(tmp)], check=True, capture_output=True
                )
                os.rename(tmp, target)
            except BaseException:
                _remove_tree(tmp)
                raise
        return layer_id

    def create_image(
        self, name: str, layer_ids: builtins.list[str], config: dict[str, Any], meta: dict[str, Any]
    ) -> Image:
        """An image made of existing layers (a template's result) with the config sandboxes get."""
        self.layer_paths(layer_ids)
        return self._install(name, layer_ids, {**meta, "config": config})

    # -- template step cache ---------------------------------------------------------------------

    def cached_layer(self, key: str) -> str | None:
        try:
            layer_id = (self.cache_root / _safe_layer_id(key)).read_text().strip()
        except FileNotFoundError:
            return None
        return layer_id if (self.layer_root / layer_id).is_dir() else None

    def cache_layer(self, key: str, layer_id: str) -> None:
        path = self.cache_root / _safe_layer_id(key)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(layer_id)
        os.rename(tmp, path)

    # -- removing --------------------------------------------------------------------------------

    def delete(self, name: str, in_use: Callable[[str], bool] = lambda _name: False) -> None:
        """Removes an image, unless a sandbox's root is built on it (its files would vanish under
        the running sandbox). Its layers stay until gc: other images may share them."""
        path = self.root / _dir_name(name)
        if not (path / "image.json").exists():
            raise ImageNotFound(name)
        if in_use(name):
            raise Conflict(f"image {name!r} is in use by a sandbox")
        shutil.rmtree(path)

    def gc(self, keep_layers: set[str] | None = None) -> builtins.list[str]:
        """Deletes blobs and layers that no image, cache entry or running sandbox (keep_layers)
        refers to; returns what it removed. Waits for pulls and builds in progress."""
        with self._lock(fcntl.LOCK_EX):
            wanted_blobs: set[str] = set()
            wanted_layers: set[str] = set(keep_layers or ())
            for name in self.list():
                meta = self._meta(name)
                wanted_blobs.update(meta.get("blobs", []))
                wanted_layers.update(meta.get("layers", []))
            wanted_layers.update(p.read_text().strip() for p in self.cache_root.iterdir() if not p.name.startswith("."))
            removed = []
            for blob in (self.blobs / "sha256").glob("*") if self.blobs.exists() else []:
                digest = f"sha256:{blob.name}"
                if digest not in wanted_blobs and not blob.name.startswith("."):
                    blob.unlink()
                    removed.append(digest)
            for layer in self.layer_root.iterdir():
                # A layer a build step has just made (pulls hold the lock until their image is
                # in place) is in no cache entry or image yet: young ones stay.
                young = layer.name.startswith("local-") and time.time() - layer.stat().st_mtime < GC_GRACE_SECONDS
                if layer.name not in wanted_layers and not young:
                    _remove_tree(layer)
                    removed.append(f"layer:{layer.name}")
            return removed

    def remove_partials(self) -> None:
        """Leftovers of pulls and imports a crash cut short (not those another process is making)."""
        for path in self.root.glob(".partial-*"):
            if time.time() - path.stat().st_mtime > GC_GRACE_SECONDS:
                _remove_tree(path)

    # -- internals -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, mode: int) -> Iterator[None]:
        fd = os.open(self.root / ".gc.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def _building(self) -> contextlib.AbstractContextManager[None]:
        """Held while making layers no image refers to yet: gc waits for it."""
        return self._lock(fcntl.LOCK_SH)

    def _check_new(self, name: str) -> None:
        _dir_name(name)
        if self.exists(name):
            raise InvalidRequest("name", f"image {name!r} already exists")

    def _unpack_blob(self, blob: Path, staging: Path) -> None:
        with _layer_errors(), _open_layer(blob, self.max_layer_bytes) as stream:
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=tarsafe.BoundedTarInfo) as tar:
                _apply_layer(tar, staging)

    def _make_layer(self, layer_id: str, fill: Callable[[Path], None]) -> str:
        """The layer directory for layer_id, filled (and owner-shifted) unless it already exists."""
        target = self.layer_root / _safe_layer_id(layer_id)
        if target.is_dir():
            return layer_id
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.root))
        try:
            staging = tmp / "fs"
            staging.mkdir()
            fill(staging)
            shift_ownership(staging, self.id_base)
            try:
                os.rename(staging, target)
            except OSError:
                if not target.is_dir():  # not a concurrent maker of the same layer: a real failure
                    raise
        finally:
            _remove_tree(tmp)
        return layer_id

    def _install(self, name: str, layer_ids: builtins.list[str], meta: dict[str, Any]) -> Image:
        target = self.root / _dir_name(name)
        if target.exists():
            raise InvalidRequest("name", f"image {name!r} already exists")
        if len(layer_ids) > MAX_LAYERS:
            raise InvalidRequest("image", f"an image of {len(layer_ids)} layers is more than {MAX_LAYERS}")
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.root))
        try:
            (tmp / "image.json").write_text(json.dumps({**meta, "layers": layer_ids}))
            os.rename(tmp, target)
        except OSError as exc:
            _remove_tree(tmp)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):  # made meanwhile by someone else
                raise InvalidRequest("name", f"image {name!r} already exists") from None
            raise
        except BaseException:
            _remove_tree(tmp)
            raise
        return self.get(name)

    def _migrate_flat_images(self) -> None:
        """Images of earlier versions were one flat ``rootfs`` directory: it becomes their layer."""
        for rootfs in self.root.glob("*/rootfs"):
            image_dir = rootfs.parent
            if image_dir.name.startswith("."):
                continue
            meta_path = image_dir / "image.json"
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            # The layer's id is fixed by the image's name, and image.json names it before the
            # rename: a crash in between leaves a rootfs that the next start moves.
            layer_id = "migrated-" + hashlib.sha256(image_dir.name.encode()).hexdigest()[:24]
            meta.pop("layers", None)
            tmp = meta_path.with_name(".image.json.tmp")
            tmp.write_text(json.dumps({**meta, "layers": [layer_id]}))
            os.rename(tmp, meta_path)
            with contextlib.suppress(FileNotFoundError):  # another process migrated it first
                os.rename(rootfs, self.layer_root / layer_id)


def _new_layer_id() -> str:
    return "local-" + os.urandom(16).hex()


def _safe_layer_id(layer_id: str) -> str:
    if not layer_id or "/" in layer_id or layer_id.startswith(".") or len(layer_id) > 160:
        raise RuntimeFailure(f"invalid layer id {layer_id!r}")
    return layer_id


def _remove_tree(path: Path) -> None:
    # A build killed midway can leave the chroot's /proc, /sys or /dev mounted inside it: unmount
    # them first, or rmtree would walk into the host's own.
    for point in mounts_under(path):
        unmount(point)
    if not mounts_under(path):
        shutil.rmtree(path, ignore_errors=True)


def _remove_device_nodes(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if stat.S_ISCHR(os.lstat(path).st_mode) or stat.S_ISBLK(os.lstat(path).st_mode):
                os.unlink(path)


def _dir_name(name: str) -> str:
    # A registry reference (host:port/repo:tag) is kept under its quoted form: one path component.
    return quote(name, safe="") if looks_like_reference(name) else _safe_name(name)


def _describe(exc: httpx.HTTPError) -> str:
    reason = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def _oci_config(path: Path | None) -> dict[str, Any]:
    """The parts of an OCI image config a sandbox takes: environment, working dir and user. The
    image's Cmd is not run: a sandbox idles until asked, unless its create names an entrypoint."""
    if path is None:
        return {}
    try:
        config = json.loads(path.read_text()).get("config") or {}
    except (ValueError, AttributeError):
        return {}
    env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
    result: dict[str, Any] = {"env": env} if env else {}
    if config.get("WorkingDir"):
        result["cwd"] = config["WorkingDir"]
    if config.get("User"):
        result["user"] = config["User"]
    return result


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


@contextlib.contextmanager
def _layer_errors() -> Iterator[None]:
    """A layer that is not a readable tar, or asks for what tarfile refuses, is the image's fault."""
    try:
        yield
    except tarsafe.UnsafeArchive as exc:
        raise InvalidRequest("image", f"refused layer entry {exc.member!r}: {exc.reason}") from None
    except (tarfile.TarError, EOFError, zstandard.ZstdError, gzip.BadGzipFile) as exc:
        raise InvalidRequest("image", f"unreadable layer: {exc}") from None


def _safe_name(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or len(name) > 128:
        raise InvalidRequest("image", f"invalid image name {name!r}")
    return name


def _find_python(layers: tuple[Path, ...]) -> str | None:
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


def _oci_layers(layout: Path, ref: str | None) -> list[Path]:
    def blob(digest: str) -> Path:
        # A layout may come from an API caller: a digest is a name under blobs/, never a path.
        if not isinstance(digest, str) or not DIGEST.match(digest):
            raise InvalidRequest("body", f"invalid digest {digest!r} in the OCI layout")
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
    """Unpacks one layer into its own directory, turning OCI whiteouts into overlayfs's: ``.wh.x``
    becomes a 0/0 character device named x, ``.wh..wh..opq`` the opaque xattr on its directory.
    Whiteouts are reached like any member (component by component, never through a symlink), or
    "etc/.wh.shadow" under an "etc" symlink would reach the host's /etc."""
    with _rootfs(root) as out:
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


def _rootfs(root: Path, max_bytes: int | None = None) -> tarsafe.Extractor:
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
