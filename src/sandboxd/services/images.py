"""Images on the server: list, inspect, pull with progress, import, remove, gc.

The CLI used to open the image directory itself, which shows the wrong images as soon as the server
runs with another data directory or on another host; everything now goes through this service.

Tenancy: the catalog is shared (layers and blobs are content-addressed, one copy per host); what
belongs to a project is an image *reference*, a name of its own for a catalog image (store table
``image_refs``). Pulls and imports add one; remove drops it, and the catalog image with it once no
reference and no sandbox uses it. Imports are stored under a catalog name of their own
(``img-<ulid>``), so two projects may each import an ``app``; pulls keep the reference as the
catalog name, one image for every project that pulled it (each proving to the registry that it
may, see ``ImageService.pull``).

A project sees (lists, inspects, starts sandboxes from) exactly:

1. its references, by their names (and by the catalog name they point at);
2. the operator's images, shared by every project, read-only for all but the operator's project
   (``DEFAULT_PROJECT``, the server key's): the default image (``settings.default_image``), every
   image the catalog held when the server started that no project references and no project's
   template made (what the operator imported, pulled or built before, including everything a
   single-key server had), and the images of templates built in ``SHARED_PROJECT``;
3. the images of its own templates (template resolution already scopes which sandboxes get them).

Anything else is absent: inspect and remove answer 404 IMAGE_NOT_FOUND, a sandbox create answers
what an unknown image gets (400 on ``image``), and the same name may be imported without a clash,
so nothing tells another project's image from one that does not exist. ``SHARED_PROJECT`` (the
operator's own template builds) may use any image."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from sandboxd.domain import SHARED_PROJECT, ImageRef, new_id, utcnow
from sandboxd.errors import Conflict, ImageNotFound, InvalidRequest, NoSuchImage, SandboxdError
from sandboxd.runtimes.local.images.registry import (
    DEFAULT_REGISTRY,
    Credentials,
    looks_like_reference,
    parse_reference,
)
from sandboxd.store.base import DuplicateKey, Store

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

    def exists(self, name: str) -> bool: ...

    def check_access(self, reference: str, credentials: Credentials | None = None) -> str: ...

    @staticmethod
    def check_name(name: str) -> None: ...

    def gc(self, keep_layers: set[str] | None = None) -> builtins.list[str]: ...


# The images and the layers that sandboxes on this server are built on right now.
InUse = Callable[[], tuple[set[str], set[str]]]
# The images of a project's templates (of every project's but SHARED_PROJECT's with None).
TemplateImages = Callable[[str | None], Awaitable[set[str]]]


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


def registry_hint(name: str) -> str:
    """What a Docker-style short name (``python:3.12``) means here: a local name. A registry image is
    named with its host, which Docker leaves implicit; there is no implicit registry here (a server
    offline, or behind a mirror, would otherwise reach out to Docker Hub unasked)."""
    try:
        ref = parse_reference(name)
    except InvalidRequest:
        return ""
    if ref.registry != DEFAULT_REGISTRY:
        return ""
    suffix = f"@{ref.digest}" if ref.digest else f":{ref.tag or 'latest'}"
    return f"; an image from a registry is named with the registry's host: docker.io/{ref.repository}{suffix}"


class ImageService:
    def __init__(
        self,
        catalog: ImageCatalog,
        in_use: InUse,
        spool_dir: Path,
        max_upload_bytes: int,
        store: Store,
        default_image: str,
        template_images: TemplateImages,
    ) -> None:
        self.catalog = catalog
        self.in_use = in_use
        self.spool_dir = spool_dir  # uploads wait here (on the data disk, not a RAM-backed /tmp)
        self.max_upload_bytes = max_upload_bytes
        self.store = store
        self.default_image = default_image
        self.template_images = template_images
        self._operator: set[str] = set()  # the catalog's images at start that no project owns

    async def start(self) -> None:
        """Takes note of the operator's images: what the catalog holds now, less what projects own."""
        present = set(await asyncio.to_thread(self.catalog.list))
        owned = {r.image for r in await self.store.find_image_refs()} | await self.template_images(None)
        self._operator = present - owned

    # -- who sees what ---------------------------------------------------------------------------

    async def _shared(self) -> set[str]:
        return self._operator | {self.default_image} | await self.template_images(SHARED_PROJECT)

    async def _visible(self, project_id: str, name: str) -> tuple[str, ImageRef | None] | None:
        """(catalog name, the project's reference if it holds one) of an image the project sees."""
        if name == self.default_image or name in self._operator:
            return name, None  # no project holds a name of these (import and pull see them first)
        ref = await self.store.get_image_ref(project_id, name)
        if ref is not None:
            return ref.image, ref
        if name in await self._shared() or name in await self.template_images(project_id):
            return name, None
        held = await self.store.find_image_refs(project_id, image=name)
        if held:
            return name, held[0]
        return None

    async def resolve(self, project_id: str, name: str, auth: tuple[str, str] | None = None) -> str:
        """The catalog name a sandbox of the project gets for ``name``; ImageNotFound (400 on image,
        as for an image that does not exist) for one it does not see. A registry reference it does
        not hold is what it would be on a server of its own: the registry must accept this create's
        credentials (or the server's) for its manifest first, whether or not another project's
        pull already brought the image; then it is the project's, and the runtime pulls it at
        create if it is not here yet."""
        if project_id == SHARED_PROJECT:
            return name  # the operator's own template builds
        found = await self._visible(project_id, name)
        if found is not None:
            return found[0]
        if not looks_like_reference(name):
            raise ImageNotFound(name, registry_hint(name))
        await asyncio.to_thread(self.catalog.check_access, name, Credentials(*auth) if auth else None)
        await self._add_ref(project_id, name, name)
        return name

    async def _holders(self, image: str) -> builtins.list[ImageRef]:
        return await self.store.find_image_refs(image=image)

    async def holds_any(self, project_id: str) -> bool:
        return bool(await self.store.find_image_refs(project_id))

    async def _add_ref(self, project_id: str, name: str, image: str) -> None:
        with contextlib.suppress(DuplicateKey):  # a concurrent pull of the same reference
            await self.store.add_image_ref(ImageRef(project_id=project_id, name=name, image=image, created_at=utcnow()))

    # -- the API ---------------------------------------------------------------------------------

    async def list(self, project_id: str) -> builtins.list[ImageInfo]:
        refs = {r.name: r.image for r in await self.store.find_image_refs(project_id)}
        for name in await self._shared() | await self.template_images(project_id):
            refs.setdefault(name, name)

        def read() -> builtins.list[ImageInfo]:
            found = []
            for name, image in sorted(refs.items()):
                with contextlib.suppress(ImageNotFound):  # removed since the listing
                    found.append(ImageInfo.of({**self.catalog.inspect(image), "name": name}))
            return found

        return await asyncio.to_thread(read)

    async def inspect(self, project_id: str, name: str) -> ImageInfo:
        found = await self._visible(project_id, name)
        if found is None:
            raise NoSuchImage(name)
        try:
            meta = await asyncio.to_thread(self.catalog.inspect, found[0])
        except ImageNotFound:
            raise NoSuchImage(name) from None
        return ImageInfo.of({**meta, "name": name})

    @staticmethod
    def check_reference(reference: str) -> None:
        """A malformed reference is refused before a pull starts (and before a stream is opened)."""
        try:
            parse_reference(reference)
        except InvalidRequest as exc:
            raise InvalidRequest("reference", exc.message) from None

    async def pull(
        self,
        project_id: str,
        reference: str,
        credentials: Credentials | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> ImageInfo:
        """Pulls the reference (once, if several ask at the same time) and gives the project a
        reference to it; on_progress(done, total) is called on the event loop with the bytes
        fetched, at most every PROGRESS_INTERVAL. An image another project's pull brought (maybe
        with credentials of its own) is given only after the registry has answered this caller's
        request for its manifest: knowing a private image's name is not reading it."""
        self.check_reference(reference)
        found = await self._visible(project_id, reference)
        if found is not None and await asyncio.to_thread(self.catalog.exists, found[0]):
            return await self.inspect(project_id, reference)
        loop = asyncio.get_running_loop()
        last = [0.0]

        def progress(_ref: str, done: int, total: int) -> None:  # on the pull's thread
            now = time.monotonic()
            if on_progress is not None and (now - last[0] >= PROGRESS_INTERVAL or done >= total):
                last[0] = now
                loop.call_soon_threadsafe(on_progress, done, total)

        if found is None:
            # Before the catalog's pull, which answers from its copy when the image is here (or
            # arrives meanwhile through another project's pull).
            await asyncio.to_thread(self.catalog.check_access, reference, credentials)
        await asyncio.to_thread(self.catalog.pull, reference, progress, credentials)
        if found is None:
            await self._add_ref(project_id, reference, reference)
        return await self.inspect(project_id, reference)

    async def import_(
        self,
        project_id: str,
        name: str,
        body: AsyncIterator[bytes],
        fmt: ImportFormat = "rootfs",
        ref: str | None = None,
    ) -> ImageInfo:
        """A rootfs tarball, or a tar of an OCI image layout, as the project's image ``name``. The
        body is spooled to the data disk (bounded), then unpacked with sandboxd.tarsafe's rules by
        the catalog: the tarball is the caller's, and nothing in it is trusted. The catalog keeps
        it under a name of its own; its layers are content-addressed, so identical content
        imported by several projects is stored once."""
        self.catalog.check_name(name)
        if await self._visible(project_id, name) is not None:
            raise InvalidRequest("name", f"image {name!r} already exists")
        image = "img-" + new_id("")
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
                await asyncio.to_thread(self.catalog.import_tarball, image, tarball)
            else:
                await asyncio.to_thread(self._import_layout, image, tarball, spool / "layout", ref)
        finally:
            await asyncio.to_thread(shutil.rmtree, spool, True)
        try:
            await self.store.add_image_ref(ImageRef(project_id=project_id, name=name, image=image, created_at=utcnow()))
        except DuplicateKey:  # a concurrent import of the same name won
            await asyncio.to_thread(self.catalog.delete, image)
            raise InvalidRequest("name", f"image {name!r} already exists") from None
        return await self.inspect(project_id, name)

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

    async def remove(self, project_id: str, name: str, operator: bool = False) -> None:
        """Drops the project's reference, and the catalog image once no other reference holds it
        (refused, 409, while a sandbox's root is built on it). Its layers stay until gc. The
        operator's images every project uses: only the server's key removes them (operator), not
        any key of the project it works in."""
        found = await self._visible(project_id, name)
        if found is None:
            raise NoSuchImage(name)
        image, ref = found
        if ref is None:
            if not operator or image not in self._operator | {self.default_image}:
                raise Conflict(f"image {name!r} is the operator's (or a template's): it cannot be removed here")
        elif any(
            (r.project_id, r.name) != (ref.project_id, ref.name) for r in await self.store.find_image_refs(image=image)
        ):
            await self.store.remove_image_ref(ref.project_id, ref.name)  # others hold it: the image stays
            return

        def delete() -> None:
            names, _layers = self.in_use()
            with contextlib.suppress(ImageNotFound):  # gone already: only the reference is left
                self.catalog.delete(image, lambda n: n in names)

        await asyncio.to_thread(delete)
        self._operator.discard(image)
        if ref is not None:
            await self.store.remove_image_ref(ref.project_id, ref.name)

    async def gc(self) -> builtins.list[str]:
        """Deletes blobs and layers that no image (of any project), build cache or sandbox uses:
        never an image, so any project may run it."""

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
