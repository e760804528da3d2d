"""OpenSandbox facade: the execd API's files, over the file service (and, for chmod, the command
service: the agent has no chmod of its own). Modes travel as execd has them: the octal digits
read as a decimal int (755 is rwxr-xr-x)."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from sandboxd.api.facades import translate
from sandboxd.api.facades.opensandbox import file_walk, multipart
from sandboxd.api.facades.opensandbox.access import ExecdSandbox, commands, files
from sandboxd.domain import FileInfo, Sandbox
from sandboxd.errors import InvalidRequest, SandboxdError
from sandboxd.services.commands import CommandService
from sandboxd.services.files import FileService
from sandboxd.services.requests import RunCommand

router = APIRouter()
Files = Annotated[FileService, Depends(files)]
Commands = Annotated[CommandService, Depends(commands)]
Paths = Annotated[list[str], Query(alias="path", min_length=1)]
MAX_METADATA = 64 * 1024
MAX_REPLACE = 16 * 1024 * 1024  # bytes of a file rewritten in memory by /files/replace, before and after
MAX_REPLACE_FILES = 64  # files one /files/replace may name
MAX_REPLACEMENTS = 64  # {old, new} pairs one file may be given
TYPES = {"file": "file", "dir": "directory", "symlink": "symlink", "other": "other"}


def mode_in(value: int | None, field: str, default: int = 0o755) -> int:
    """execd's mode (octal digits as a decimal int) as a mode."""
    if value is None:
        return default
    digits = str(value)
    if value < 0 or len(digits) > 4 or any(d not in "01234567" for d in digits):
        raise InvalidRequest(field, f"{field} must be octal digits (such as 755), got {value}")
    return int(digits, 8)


def file_info(info: FileInfo) -> dict[str, object]:
    when = translate.rfc3339(info.modified_at)
    return {
        "path": info.path,
        "type": TYPES[info.type],
        "size": info.size,
        "modified_at": when,
        "created_at": when,  # no birth time natively: the modification time stands in
        "owner": str(info.uid),
        "group": str(info.gid),
        "mode": int(oct(info.mode & 0o7777)[2:]),
    }


class Permission(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: int | None = None
    owner: str | None = None
    group: str | None = None

    def checked(self, field: str) -> int:
        for name in ("owner", "group"):
            if getattr(self, name) is not None:
                raise InvalidRequest(f"{field}.{name}", f"{name}: changing a file's {name} is not supported")
        return mode_in(self.mode, f"{field}.mode")


class Move(BaseModel):
    model_config = ConfigDict(extra="forbid")

    src: str
    dest: str


class Replacement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    old: str
    new: str


@router.post("/files/upload")
async def upload(request: Request, sandbox: ExecdSandbox, service: Files) -> Response:
    """Pairs of parts, `metadata` (JSON: path, mode, owner, group) then `file`, each file streamed
    to the sandbox as it arrives."""
    reader = multipart.MultipartReader(request.stream(), multipart.boundary(request.headers.get("content-type")))
    target: tuple[str, int] | None = None
    while (headers := await reader.next_part()) is not None:
        name = multipart.field_name(headers)
        if name == "metadata":
            target = _upload_target(await reader.read_all(MAX_METADATA))
        elif name == "file":
            if target is None:
                raise InvalidRequest("metadata", "each file part must follow its metadata part")
            await service.write(sandbox.project_id, sandbox.id, target[0], reader.body(), target[1])
            target = None
        else:
            raise InvalidRequest("body", f"unexpected part {name!r}: parts are metadata and file")
    if target is not None:
        raise InvalidRequest("file", "a metadata part has no file part after it")
    return Response(status_code=200)


def _upload_target(raw: bytes) -> tuple[str, int]:
    try:
        meta = json.loads(raw)
    except ValueError:
        raise InvalidRequest("metadata", "the metadata part is not JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("path"), str) or not meta["path"]:
        raise InvalidRequest("metadata.path", "the metadata part needs a path")
    mode = meta.get("mode")
    if mode is not None and not isinstance(mode, int):
        raise InvalidRequest("metadata.mode", "mode must be an integer of octal digits (such as 755)")
    extra = set(meta) - {"path", "mode", "owner", "group"}
    if extra:
        raise InvalidRequest(f"metadata.{sorted(extra)[0]}", f"unknown metadata field {sorted(extra)[0]!r}")
    permission = Permission(mode=mode, owner=meta.get("owner"), group=meta.get("group"))
    return meta["path"], permission.checked("metadata")


def _range(header: str, size: int) -> tuple[int, int]:
    """One `bytes=a-b`, `a-` or `-n` range over size bytes: (start, end exclusive)."""
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or not dash or "," in spec or not (first.isdigit() or last.isdigit()):
        raise InvalidRequest("Range", "Range must be one bytes=start-end range")
    if not first:
        start, end = max(size - int(last), 0), size
    else:
        start, end = int(first), min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        raise RangeNotSatisfiable(f"range {spec} is outside the file's {size} bytes")
    return start, end


class RangeNotSatisfiable(SandboxdError):
    code = "RANGE_NOT_SATISFIABLE"
    status = 416


async def _slice(chunks: AsyncIterator[bytes], start: int, end: int) -> AsyncIterator[bytes]:
    at = 0
    async for chunk in chunks:
        piece = chunk[max(start - at, 0) : max(end - at, 0)]
        at += len(chunk)
        if piece:
            yield piece
        if at >= end:
            break


@router.get("/files/download", response_class=StreamingResponse)
async def download(
    request: Request,
    sandbox: ExecdSandbox,
    service: Files,
    path: str,
    offset: int | None = None,
    limit: int | None = None,
) -> Response:
    """The file's bytes; one `Range` gives 206 (416 outside the file)."""
    for name, value in (("offset", offset), ("limit", limit)):
        if value is not None:
            raise InvalidRequest(name, f"{name}: line-sliced downloads are not supported; use a Range header")
    size, chunks = await service.read(sandbox.project_id, sandbox.id, path)
    headers = {"Accept-Ranges": "bytes"}
    wanted = request.headers.get("range")
    if wanted is None or size is None:
        if size is not None:
            headers["Content-Length"] = str(size)
        return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)
    try:
        start, end = _range(wanted, size)
    except RangeNotSatisfiable:
        headers["Content-Range"] = f"bytes */{size}"
        raise
    headers |= {"Content-Range": f"bytes {start}-{end - 1}/{size}", "Content-Length": str(end - start)}
    return StreamingResponse(
        _slice(chunks, start, end), status_code=206, media_type="application/octet-stream", headers=headers
    )


@router.get("/files/info")
async def info(sandbox: ExecdSandbox, service: Files, paths: Paths) -> dict[str, object]:
    return {p: file_info(await service.stat(sandbox.project_id, sandbox.id, p)) for p in paths}


@router.get("/directories/list")
async def list_directory(
    sandbox: ExecdSandbox, service: Files, path: str, depth: Annotated[int, Query(ge=1, le=32)] = 1
) -> list[dict[str, object]]:
    found = await file_walk.walk(service, sandbox, path, depth)
    return [file_info(item) for item in found]


@router.get("/files/search")
async def search(sandbox: ExecdSandbox, service: Files, path: str, pattern: str = "*") -> list[dict[str, object]]:
    """Files under path (at any depth, up to the walk's bounds) whose name matches the glob."""
    found = await file_walk.walk(service, sandbox, path, file_walk.MAX_DEPTH, pattern)
    return [file_info(item) for item in found if item.type != "dir"]


@router.post("/directories")
async def make_dirs(body: dict[str, Permission], sandbox: ExecdSandbox, service: Files) -> Response:
    modes = {path: perm.checked(path) for path, perm in body.items()}
    for path, mode in modes.items():
        await service.mkdir(sandbox.project_id, sandbox.id, path, mode)
    return Response(status_code=200)


@router.delete("/files")
async def remove_files(sandbox: ExecdSandbox, service: Files, paths: Paths) -> Response:
    for path in paths:
        await service.remove(sandbox.project_id, sandbox.id, path, recursive=False)
    return Response(status_code=200)


@router.delete("/directories")
async def remove_dirs(sandbox: ExecdSandbox, service: Files, paths: Paths) -> Response:
    for path in paths:
        await service.remove(sandbox.project_id, sandbox.id, path, recursive=True)
    return Response(status_code=200)


@router.post("/files/mv")
async def move(body: list[Move], sandbox: ExecdSandbox, service: Files) -> Response:
    for item in body:
        await service.move(sandbox.project_id, sandbox.id, item.src, item.dest)
    return Response(status_code=200)


@router.post("/files/permissions")
async def permissions(body: dict[str, Permission], sandbox: ExecdSandbox, service: Commands) -> Response:
    """chmod, run in the sandbox as a command (the agent has no chmod); owner and group: 400."""
    modes = {path: perm.checked(path) for path, perm in body.items()}
    for path, mode in modes.items():
        await chmod(service, sandbox, path, mode)
    return Response(status_code=200)


async def chmod(service: CommandService, sandbox: Sandbox, path: str, mode: int) -> None:
    try:
        # An argv, not a shell line; "--" ends options, and the path is absolute anyway.
        cmd = RunCommand(command=["chmod", f"{mode:o}", "--", path], timeout=30, user="0")
    except ValueError as exc:
        raise InvalidRequest("path", str(exc)) from None
    result = await service.run(sandbox.project_id, sandbox.id, cmd)
    if result.exit_code != 0:
        if result.signal == signal.SIGKILL or result.timed_out:
            raise SandboxdError(f"chmod of {path} did not finish")
        # The sandbox's own chmod said why; bounded, it goes back to the caller who owns the sandbox.
        raise InvalidRequest("path", f"chmod {path}: {result.stderr.strip()[:300]}")


@router.post("/files/replace")
async def replace(
    body: dict[str, Replacement | list[Replacement]], sandbox: ExecdSandbox, service: Files, verbose: bool = False
) -> dict[str, object]:
    """Replaces text in each file, every occurrence (one {old, new}, as the SDK sends, or a list of
    them applied in order); answers the count per file, `verbose` or not."""
    if len(body) > MAX_REPLACE_FILES:
        raise InvalidRequest("body", f"at most {MAX_REPLACE_FILES} files at once")
    counts: dict[str, object] = {}
    for path, given in body.items():
        items = given if isinstance(given, list) else [given]
        if len(items) > MAX_REPLACEMENTS:
            raise InvalidRequest(path, f"at most {MAX_REPLACEMENTS} replacements a file")
        if any(not item.old for item in items):
            raise InvalidRequest("old", "old must not be empty")
        stat = await service.stat(sandbox.project_id, sandbox.id, path)
        if stat.type != "file" or stat.size > MAX_REPLACE:
            raise InvalidRequest("path", f"{path} is not a regular file of at most {MAX_REPLACE} bytes")
        _, chunks = await service.read(sandbox.project_id, sandbox.id, path)
        parts, size = [], 0
        async for chunk in chunks:
            size += len(chunk)
            if size > MAX_REPLACE:  # the file grew since its stat
                raise InvalidRequest("path", f"{path} is larger than {MAX_REPLACE} bytes")
            parts.append(chunk)
        try:
            text = b"".join(parts).decode()
        except UnicodeDecodeError:
            raise InvalidRequest("path", f"{path} is not UTF-8 text") from None
        del parts
        count = 0
        for item in items:
            found = text.count(item.old)
            # What the text would grow to, known before it is built: a few bytes of request must
            # not make the server build terabytes (a -> aa, applied again and again).
            if len(text) + found * (len(item.new) - len(item.old)) > MAX_REPLACE:
                raise InvalidRequest(path, f"the result would be larger than {MAX_REPLACE} bytes")
            count += found
            text = text.replace(item.old, item.new)
        if count:
            data = text.encode()
            if len(data) > MAX_REPLACE:
                raise InvalidRequest(path, f"the result would be larger than {MAX_REPLACE} bytes")
            await service.write(sandbox.project_id, sandbox.id, path, _one(data), stat.mode & 0o7777)
        counts[path] = {"replacedCount": count}
    return counts


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
