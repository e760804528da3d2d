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
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from sandboxd import tarsafe
from sandboxd.errors import Conflict, ImageNotFound, InvalidRequest, RuntimeFailure
from sandboxd.runtimes.local.images.layers import (
    apply_layer,
    find_python,
    layer_errors,
    new_layer_id,
    oci_layout_layers,
    open_layer,
    remove_device_nodes,
    remove_tree,
    rootfs_extractor,
    safe_layer_id,
    shift_ownership,
)
from sandboxd.runtimes.local.images.registry import (
    Credentials,
    fetch_image,
    looks_like_reference,
    manifest_digest,
    parse_reference,
)
from sandboxd.runtimes.outbound import OutboundRules

DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ["python3", "ca-certificates", "procps"]
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
        return Image(name=name, layers=layers, python=find_python(layers), config=meta.get("config", {}), layer_ids=ids)

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
        paths = [self.layer_root / safe_layer_id(layer_id) for layer_id in ids]
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
            auth = credentials or self.registry_auth.get(ref.registry)
            fetched = fetch_image(ref, auth, self.outbound, self.blobs, progress)
            ids = []
            for layer_id, path in fetched.layers:
                if progress:  # unpacking takes a while too, also when every blob was cached
                    progress(str(ref), fetched.done, fetched.total)
                ids.append(self._make_layer(layer_id, functools.partial(self._unpack_blob, path)))
            return self._install(reference, ids, fetched.meta)

    def check_access(self, reference: str, credentials: Credentials | None = None) -> str:
        """Asks the registry for the reference's manifest with these credentials (or the server's);
        its digest. What a pull proves before it is given an image another pull already fetched:
        that the caller may read it (its blobs are then taken from the shared store)."""
        ref = parse_reference(reference)
        return manifest_digest(ref, credentials or self.registry_auth.get(ref.registry), self.outbound)

    @staticmethod
    def check_name(name: str) -> None:
        """Refuses (400 on name) a name no image could have."""
        _dir_name(name)

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
            remove_device_nodes(staging / "dev")

        self._check_new(name)
        with self._building():
            return self._install(name, [self._make_layer(new_layer_id(), fill)], {"source": "mmdebstrap"})

    def import_tarball(self, name: str, tarball: Path) -> Image:
        """A root filesystem tarball as a one-layer image. The layer is named by the tarball's
        digest, so the same tarball imported twice (by two projects) is stored once."""

        def fill(staging: Path) -> None:
            with layer_errors(), tarfile.open(tarball, tarinfo=tarsafe.BoundedTarInfo) as tar:
                with rootfs_extractor(staging, max_bytes=self.max_layer_bytes) as out:
                    for member in tarsafe.members(tar):
                        out.extract(tar, member)

        self._check_new(name)
        digest = hashlib.sha256()
        with open(tarball, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        with self._building():
            layer_id = "tar-sha256-" + digest.hexdigest()
            return self._install(name, [self._make_layer(layer_id, fill)], {"source": "tarball"})

    def import_oci_layout(self, name: str, layout: Path, ref: str | None = None) -> Image:
        """A local OCI image layout (index.json → manifest → layers), one layer per blob."""
        self._check_new(name)
        with self._building():
            ids = []
            for blob in oci_layout_layers(layout, ref):
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
        layer_id = new_layer_id()
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
                remove_tree(tmp)
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
            layer_id = (self.cache_root / safe_layer_id(key)).read_text().strip()
        except FileNotFoundError:
            return None
        return layer_id if (self.layer_root / layer_id).is_dir() else None

    def cache_layer(self, key: str, layer_id: str) -> None:
        path = self.cache_root / safe_layer_id(key)
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
                    remove_tree(layer)
                    removed.append(f"layer:{layer.name}")
            return removed

    def remove_partials(self) -> None:
        """Leftovers of pulls and imports a crash cut short (not those another process is making)."""
        for path in self.root.glob(".partial-*"):
            if time.time() - path.stat().st_mtime > GC_GRACE_SECONDS:
                remove_tree(path)

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
        with layer_errors(), open_layer(blob, self.max_layer_bytes) as stream:
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=tarsafe.BoundedTarInfo) as tar:
                apply_layer(tar, staging)

    def _make_layer(self, layer_id: str, fill: Callable[[Path], None]) -> str:
        """The layer directory for layer_id, filled (and owner-shifted) unless it already exists."""
        target = self.layer_root / safe_layer_id(layer_id)
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
            remove_tree(tmp)
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
            remove_tree(tmp)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):  # made meanwhile by someone else
                raise InvalidRequest("name", f"image {name!r} already exists") from None
            raise
        except BaseException:
            remove_tree(tmp)
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


def _dir_name(name: str) -> str:
    # A registry reference (host:port/repo:tag) is kept under its quoted form: one path component.
    return quote(name, safe="") if looks_like_reference(name) else _safe_name(name)


def _safe_name(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or len(name) > 128:
        raise InvalidRequest("image", f"invalid image name {name!r}")
    return name
