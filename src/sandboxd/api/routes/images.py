"""Images on the server: what the CLI's `image` group and the SDK's client.images use.

An image's name may hold "/" and ":" (a registry reference such as 127.0.0.1:5000/team/app:1.2):
GET and DELETE take the rest of the path as the name, so it needs no encoding; the fixed actions
(pull, import, gc) are POSTs, so no name can be mistaken for one."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from sandboxd.api.deps import CurrentPrincipal, Images, ProjectId
from sandboxd.api.routing import CheckedRoute
from sandboxd.services.images import Credentials, ImageInfo, ImportFormat, describe
from sandboxd.services.requests import RegistryAuth

router = APIRouter(prefix="/api/v1/images", tags=["images"], route_class=CheckedRoute)
log = logging.getLogger("sandboxd")


class ImageList(BaseModel):
    items: list[ImageInfo]


class PullImage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reference: str = Field(max_length=512, description="name[:tag|@digest], as `docker pull` takes it.")
    auth: RegistryAuth | None = Field(
        default=None, description="For this pull only, never stored; else the server's registry credentials."
    )


class Collected(BaseModel):
    removed: list[str] = Field(description="Blobs (sha256:...) and layers (layer:<id>) deleted.")


@router.get("", response_model=ImageList)
async def list_images(service: Images, project: ProjectId) -> ImageList:
    """The project's images and the operator's (shared by every project)."""
    return ImageList(items=await service.list(project))


@router.post(
    "/pull",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "Progress lines, then the result."}},
)
async def pull_image(body: PullImage, service: Images, project: ProjectId) -> StreamingResponse:
    """Pulls an image from its registry. The answer streams NDJSON: `{"type": "progress", "done",
    "total"}` lines (bytes), then one `{"type": "done", "image": {...}}`, or `{"type": "error",
    "code", "message", "field", "status"}` when the pull fails after the stream began (a malformed
    reference is a 400 before it)."""
    service.check_reference(body.reference)
    credentials = Credentials(body.auth.username, body.auth.password) if body.auth else None

    async def lines() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
        task = asyncio.create_task(
            service.pull(project, body.reference, credentials, lambda d, t: queue.put_nowait((d, t)))
        )
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (item := await queue.get()) is not None:
                yield _line({"type": "progress", "done": item[0], "total": item[1]})
            try:
                image = task.result()
            except Exception as exc:  # noqa: BLE001 - the status line is sent: the error is the last line
                if describe(exc)["code"] == "INTERNAL":
                    log.exception("image pull failed")
                yield _line(describe(exc))
                return
            yield _line({"type": "done", "image": image.model_dump()})
        finally:
            # A caller that went away: the pull runs on in its thread and its image stays.
            task.cancel()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _line(event: dict[str, object]) -> bytes:
    return json.dumps(event).encode() + b"\n"


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    response_model=ImageInfo,
    # Documented as octet-stream (any tar, plain or compressed; sent as application/x-tar by the SDK).
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def import_image(
    request: Request,
    service: Images,
    project: ProjectId,
    name: Annotated[str, Query(max_length=255, description="The new image's name.")],
    format: Annotated[ImportFormat, Query(description="A rootfs tarball, or a tar of an OCI image layout.")] = "rootfs",
    ref: Annotated[str | None, Query(max_length=255, description="The tag to take from an OCI layout.")] = None,
) -> ImageInfo:
    """Imports the request body (streamed; plain, gzip, bzip2 or xz) as a one-layer image, or an
    OCI image layout's layers; both through the refusing extractor (sandboxd.tarsafe)."""
    return await service.import_(project, name, _body(request), format, ref)


@router.post("/gc", response_model=Collected)
async def collect_garbage(service: Images, project: ProjectId) -> Collected:
    """Deletes blobs and layers that no image (of any project), build cache or sandbox uses;
    never an image."""
    del project  # any project's key may: it removes only what nothing refers to
    return Collected(removed=await service.gc())


@router.get("/{name:path}", response_model=ImageInfo)
async def inspect_image(name: str, service: Images, project: ProjectId) -> ImageInfo:
    """404 for an image the project does not see (another project's reads as absent)."""
    return await service.inspect(project, name)


@router.delete("/{name:path}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def remove_image(name: str, service: Images, project: ProjectId, principal: CurrentPrincipal) -> Response:
    """Removes the project's reference; the image goes with it unless another project holds it.
    Refused (409) while a sandbox is built on it. Its layers stay until gc."""
    await service.remove(project, name, operator=principal.operator)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
