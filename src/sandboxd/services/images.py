"""Images on the server: list, inspect, pull with progress, import, remove, gc.

The CLI used to open the image directory itself, which shows the wrong images as soon as the server
runs with another data directory or on another host; everything now goes through this service.

Tenancy (next): image references will belong to a project. The catalog stays shared (layers and
blobs are content-addressed, one copy per host); what becomes per project is which names a caller
sees and may remove, so every method here will take the caller's project and filter by it."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from sandboxd.errors import ImageNotFound, InvalidRequest, SandboxdError
from sandboxd.runtimes.local.images.registry import Credentials, parse_reference

__all__ = ["Credentials", "ImageCatalog", "ImageInfo", "ImageService"]

PROGRESS_INTERVAL = 0.1  # seconds between progress reports: a blob arrives in many small chunks
ImportFormat = Literal["rootfs", "oci-layout"]


class ImageCatalog(Protocol):
    """What the service needs of an image store (runtimes.local.images.ImageStore has it)."""

    def list(self) -> list[str]: ...

    def inspect(self, name: str) -> dict[str, Any]: ...

    def pull(
        self,
        reference: str,
        progress: Callable[[str, int, int], None] | None = None,
        credentials: Credentials | None = None,
    ) -> Any: ...

    def import_tarball(self, name: str, tarball: Path) -> Any: ...

    def import_oci_layout(self, name: str, layout: Path, ref: str | None = None) -> Any: ...

    def delete(self, name: str, in_use: Callable[[str], bool] = ...) -> None: ...

    def gc(self, keep_layers: set[str] | None = None) -> builtins.list[str]: ...


# The images and the layers that sandboxes on this server are built on right now.
InUse = Callable[[], tuple[set[str], set[str]]]


class ImageInfo(BaseModel):
    name: str
    source: str | None = Field(description="registry, tarball, oci-layout, mmdebstrap, or template.")
    reference: str | None = Field(description="The registry reference it was pulled from.")
    digest: str | None = Field(description="The manifest digest of a pulled image.")
    base: str | None = Field(description="The image a template's image was built on.")
    layers: list[str] = Field(description="Layer ids, bottom first.")
    blobs: list[str]
    python: str | None = Field(description="The image's python3, if it has one.")
    config: dict[str, Any] = Field(description="env, cwd, user, entrypoint, ready_check as sandboxes get them.")

    @classmethod
    def of(cls, meta: dict[str, Any]) -> ImageInfo:
        source = meta.get("source") or (
            "registry" if meta.get("reference") else "template" if meta.get("base") else None
        )
        return cls(
            name=str(meta["name"]),
            source=source,
            reference=meta.get("reference"),
            digest=meta.get("digest"),
            base=meta.get("base"),
            layers=[str(x) for x in meta.get("layers", [])],
            blobs=[str(x) for x in meta.get("blobs", [])],
            python=meta.get("python"),
            config=dict(meta.get("config") or {}),
        )


class ImageService:
    def __init__(self, catalog: ImageCatalog, in_use: InUse, spool_dir: Path, max_upload_bytes: int) -> None:
        self.catalog = catalog
        self.in_use = in_use
        self.spool_dir = spool_dir  # uploads wait here (on the data disk, not a RAM-backed /tmp)
        self.max_upload_bytes = max_upload_bytes

    async def list(self) -> list[ImageInfo]:
        def read() -> builtins.list[ImageInfo]:
            found = []
            for name in self.catalog.list():
                with contextlib.suppress(ImageNotFound):  # removed since the listing
                    found.append(ImageInfo.of(self.catalog.inspect(name)))
            return found

        return await asyncio.to_thread(read)

    async def inspect(self, name: str) -> ImageInfo:
        return ImageInfo.of(await asyncio.to_thread(self.catalog.inspect, name))

    @staticmethod
    def check_reference(reference: str) -> None:
        """A malformed reference is refused before a pull starts (and before a stream is opened)."""
        try:
            parse_reference(reference)
        except InvalidRequest as exc:
            raise InvalidRequest("reference", exc.message) from None

    async def pull(
        self,
        reference: str,
        credentials: Credentials | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> ImageInfo:
        """Pulls the reference (once, if several ask at the same time); on_progress(done, total)
        is called on the event loop with the bytes fetched, at most every PROGRESS_INTERVAL."""
        self.check_reference(reference)
        loop = asyncio.get_running_loop()
        last = [0.0]

        def progress(_ref: str, done: int, total: int) -> None:  # on the pull's thread
            now = time.monotonic()
            if on_progress is not None and (now - last[0] >= PROGRESS_INTERVAL or done >= total):
                last[0] = now
                loop.call_soon_threadsafe(on_progress, done, total)

        await asyncio.to_thread(self.catalog.pull, reference, progress, credentials)
        return await self.inspect(reference)

    async def import_(
        self, name: str, body: AsyncIterator[bytes], fmt: ImportFormat = "rootfs", ref: str | None = None
    ) -> ImageInfo:
        """A rootfs tarball, or a tar of an OCI image layout, as the image name. The body is
        spooled to the data disk (bounded), then unpacked with sandboxd.tarsafe's rules by the
        catalog: the tarball is the caller's, and nothing in it is trusted."""
        spool = Path(tempfile.mkdtemp(prefix=".import-", dir=self.spool_dir))
        try:
            tarball = spool / "upload.tar"
            size = 0
            with open(tarball, "wb") as f:
                async for chunk in body:
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        raise InvalidRequest("body", f"an image upload is limited to {self.max_upload_bytes} bytes")
                    await asyncio.to_thread(f.write, chunk)
            if fmt == "rootfs":
                await asyncio.to_thread(self.catalog.import_tarball, name, tarball)
            else:
                await asyncio.to_thread(self._import_layout, name, tarball, spool / "layout", ref)
        finally:
            await asyncio.to_thread(shutil.rmtree, spool, True)
        return await self.inspect(name)

    def _import_layout(self, name: str, tarball: Path, layout: Path, ref: str | None) -> None:
        import tarfile

        from sandboxd import tarsafe

        layout.mkdir()
        try:
            with open(tarball, "rb") as f:
                tarsafe.extract(f, layout, tarsafe.Rules(max_bytes=self.max_upload_bytes))
        except tarsafe.UnsafeArchive as exc:
            raise InvalidRequest("body", f"refused entry {exc.member!r} of the layout: {exc.reason}") from None
        except tarfile.TarError as exc:
            raise InvalidRequest("body", f"the layout is not a valid tar: {exc}") from None
        try:
            self.catalog.import_oci_layout(name, layout, ref)
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            IndexError,
            FileNotFoundError,
            NotADirectoryError,
        ) as exc:
            # The shape of the caller's layout (a missing index.json or blob, a wrong JSON type);
            # a failure of the host's disk (ENOSPC, EIO) is not among these and stays a 500.
            raise InvalidRequest("body", f"not a usable OCI image layout: {type(exc).__name__}: {exc}") from None

    async def remove(self, name: str) -> None:
        """Refused (Conflict) while a sandbox's root is built on it."""

        def delete() -> None:
            names, _layers = self.in_use()
            self.catalog.delete(name, lambda n: n in names)

        await asyncio.to_thread(delete)

    async def gc(self) -> builtins.list[str]:
        def collect() -> builtins.list[str]:
            _names, layers = self.in_use()
            return self.catalog.gc(keep_layers=layers)

        return await asyncio.to_thread(collect)


def describe(exc: BaseException) -> dict[str, Any]:
    """An error that ends a pull's stream, as its last line: the same fields as an error body."""
    if isinstance(exc, SandboxdError):
        return {"type": "error", "code": exc.code, "message": exc.message, "field": exc.field, "status": exc.status}
    return {"type": "error", "code": "INTERNAL", "message": "internal error", "field": None, "status": 500}


__all__ = ["ImageCatalog", "ImageInfo", "ImageService", "describe"]
