"""Vercel facade: files of a session (`/v2/sandboxes/sessions/{sessionId}/fs/…`).

write: the body is a gzipped tar whose member names are relative to the `x-cwd` header. It is
gunzipped here as it streams (bounded pieces: a gzip bomb costs the sandbox's disk, not the
server's memory) straight into the native archive upload, which the sandbox's agent unpacks
beneath that directory: absolute names, '..', links out, devices and setuid bits are refused
there, and nothing is ever unpacked on the host. An archive refused midway keeps the members
before the refused one, as a tar would.

read and mkdir take `{path, cwd?}`: a relative path is joined to `cwd` (else the session's working
directory). A missing file is 404 `file_not_found`, which the SDK turns into its path-not-found
error.
"""

from __future__ import annotations

import posixpath
import zlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from sandboxd.api.facades.vercel.common import LiveSession, Session, VercelError, translated
from sandboxd.domain import Sandbox
from sandboxd.errors import InvalidRequest
from sandboxd.services.files import sandbox_path

router = APIRouter(prefix="/v2/sandboxes/sessions/{session_id}/fs")
PIECE = 1024 * 1024  # bytes of gunzipped output made at a time
INLINE_READ = 1024 * 1024  # files up to this size are answered whole (an error is still an error)


class PathIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=4096)
    cwd: str | None = Field(None, max_length=4096)


class MkdirIn(PathIn):
    recursive: bool = True


def resolve(sandbox: Sandbox, path: str, cwd: str | None, field: str = "path") -> str:
    """An absolute path inside the sandbox ('..' folded lexically: it cannot climb above its root)."""
    base = cwd or sandbox.spec.cwd or "/"
    if not base.startswith("/"):
        raise VercelError(400, "bad_request", "cwd: must be an absolute path", "cwd")
    try:
        return sandbox_path(posixpath.normpath(posixpath.join(base, path)), field)
    except InvalidRequest as exc:
        raise VercelError(400, "bad_request", exc.message, field) from None


async def gunzipped(request: Request) -> AsyncIterator[bytes]:
    """The request body, gunzipped as it comes; a body that is not gzip is refused in the answer."""
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        async for chunk in request.stream():
            data = chunk
            while data:
                out = inflate.decompress(data, PIECE)
                if out:
                    yield out
                data = inflate.unconsumed_tail
        while not inflate.eof and (out := inflate.decompress(b"", PIECE)):
            yield out
    except zlib.error as exc:
        raise VercelError(400, "bad_request", f"the body is not a valid gzip stream: {exc}", "body") from None
    if not inflate.eof:
        raise VercelError(400, "bad_request", "the gzip stream ends early", "body")


@router.post("/write")
async def write(session_id: str, request: Request, session: LiveSession) -> dict[str, Any]:
    """Unpacks the gzipped tar beneath x-cwd (the directory is made if missing)."""
    sandbox = session.sandbox
    target = resolve(sandbox, ".", request.headers.get("x-cwd"), "x-cwd")
    async with _fs_errors(session, session_id):
        await session.services.files.upload_tar(session.project, session_id, target, gunzipped(request))
    return {}


@router.post("/read", response_model=None)
async def read(session_id: str, body: PathIn, session: LiveSession) -> Response:
    """The file's bytes as they are."""
    sandbox = session.sandbox
    path = resolve(sandbox, body.path, body.cwd)
    async with _fs_errors(session, session_id):
        size, chunks = await session.services.files.read(session.project, session_id, path)
        if size is not None and size <= INLINE_READ:
            return Response(b"".join([chunk async for chunk in chunks]), media_type="application/octet-stream")
    headers = {"Content-Length": str(size)} if size is not None else {}
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)


@router.post("/mkdir")
async def mkdir(session_id: str, body: MkdirIn, session: LiveSession) -> dict[str, Any]:
    """Makes the directory; with recursive=false its parent must exist already."""
    sandbox = session.sandbox
    path = resolve(sandbox, body.path, body.cwd)
    async with _fs_errors(session, session_id):
        if not body.recursive and path != "/":
            parent = await session.services.files.stat(session.project, session_id, posixpath.dirname(path))
            if parent.type != "dir":
                raise VercelError(400, "bad_request", f"{parent.path} is not a directory", "path")
        await session.services.files.mkdir(session.project, session_id, path)
    return {}


def _fs_errors(session: Session, session_id: str) -> AbstractAsyncContextManager[None]:
    return translated(session, "file_not_found")
