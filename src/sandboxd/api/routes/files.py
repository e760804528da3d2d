from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from sandboxd.api.deps import Files, ProjectId, Sandboxes
from sandboxd.api.models import FileInfo, MoveIn, PathIn, Removed
from sandboxd.api.params import Offset
from sandboxd.api.routing import CheckedRoute

router = APIRouter(prefix="/api/v1/sandboxes/{sandbox_id}", tags=["files"], route_class=CheckedRoute)
MAX_LISTING = 100_000
INLINE_READ = 1024 * 1024  # files up to this size are read whole before the answer starts
PathQ = Annotated[str, Query(description="Absolute path inside the sandbox.")]


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


@router.get("/files", response_class=StreamingResponse, responses={200: {"content": {"application/octet-stream": {}}}})
async def read_file(sandbox_id: str, path: PathQ, service: Files, project: ProjectId) -> Response:
    """A file's content as a byte stream."""
    size, chunks = await service.read(project, sandbox_id, path)
    if size is not None and size <= INLINE_READ:
        # Whole: one write, no streaming task beside it, and an error midway is still an error
        # response rather than a cut-off body.
        return Response(b"".join([chunk async for chunk in chunks]), media_type="application/octet-stream")
    headers = {"Content-Length": str(size)} if size is not None else {}  # /proc files: read to the end
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)


@router.put("/files", response_model=FileInfo)
async def write_file(
    sandbox_id: str,
    path: PathQ,
    request: Request,
    service: Files,
    project: ProjectId,
    mode: Annotated[str, Query(pattern="^[0-7]{3,4}$", description="Octal permissions.")] = "644",
) -> FileInfo:
    """Writes the request body to the file (streamed), creating parent directories."""
    return await service.write(project, sandbox_id, path, _body(request), int(mode, 8))


@router.delete("/files", response_model=Removed)
async def remove_file(
    sandbox_id: str, path: PathQ, service: Files, project: ProjectId, recursive: bool = False
) -> Removed:
    """Removes a file, or a directory with everything in it."""
    return Removed(removed=await service.remove(project, sandbox_id, path, recursive))


@router.get("/files/list", response_model=list[FileInfo])
async def list_dir(
    sandbox_id: str,
    path: PathQ,
    service: Files,
    project: ProjectId,
    limit: Annotated[int, Query(ge=1, le=MAX_LISTING, description="At most this many entries, by name.")] = 10_000,
    after: Annotated[str | None, Query(description="Names sorted after this one: the last page's last.")] = None,
) -> list[FileInfo]:
    """A directory's entries sorted by name, a page at a time: a huge directory never sits whole
    in the server's memory."""
    return await service.list_dir(project, sandbox_id, path, limit, after)  # the agent's answer is bounded too


@router.get("/files/stat", response_model=FileInfo)
async def stat_file(sandbox_id: str, path: PathQ, service: Files, project: ProjectId) -> FileInfo:
    """A file's type, size, mode, owner and modification time."""
    return await service.stat(project, sandbox_id, path)


@router.post("/files/mkdir", response_model=FileInfo)
async def make_dir(sandbox_id: str, body: PathIn, service: Files, project: ProjectId) -> FileInfo:
    """Creates a directory, with its parents."""
    return await service.mkdir(project, sandbox_id, body.path, body.mode)


@router.post("/files/move", response_model=FileInfo)
async def move(sandbox_id: str, body: MoveIn, service: Files, project: ProjectId) -> FileInfo:
    """Moves (renames) a file or directory within the sandbox."""
    return await service.move(project, sandbox_id, body.source, body.destination)


@router.get("/archive", response_class=StreamingResponse, responses={200: {"content": {"application/x-tar": {}}}})
async def download_archive(sandbox_id: str, path: PathQ, service: Files, project: ProjectId) -> StreamingResponse:
    """A directory (or file) as an uncompressed tar stream."""
    return StreamingResponse(await service.download_tar(project, sandbox_id, path), media_type="application/x-tar")


@router.put("/archive", response_model=FileInfo)
async def upload_archive(
    sandbox_id: str, path: PathQ, request: Request, service: Files, project: ProjectId
) -> FileInfo:
    """Unpacks a tar stream into the directory; absolute names, '..' and links out are refused."""
    return await service.upload_tar(project, sandbox_id, path, _body(request))


@router.get("/logs", response_class=StreamingResponse, responses={200: {"content": {"text/plain": {}}}})
async def entrypoint_logs(
    sandbox_id: str, service: Sandboxes, project: ProjectId, offset: Offset = 0
) -> StreamingResponse:
    """Output of the sandbox's entrypoint (stdout and stderr interleaved), from a byte offset."""
    return StreamingResponse(await service.entrypoint_logs(project, sandbox_id, offset), media_type="text/plain")
