"""OpenSandbox facade: the execd API's health and commands, per sandbox at
`/sandboxes/{id}/proxy/44772/…`, over the command service (files: execd_files.py).

A command is a native process: its id is the agent's process id, foreground commands stream
through the service's stream (sse.py re-emits it in execd's dialect), background ones are native
background processes. Admission is by the sandbox's execd access token only (access.py)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandboxd.api.facades import translate
from sandboxd.api.facades.opensandbox import execd_files, execd_metrics, sse
from sandboxd.api.facades.opensandbox.access import ExecdSandbox, commands, files, sandboxes
from sandboxd.domain import Output, ProcessInfo, State
from sandboxd.errors import InvalidRequest, SandboxNotRunning
from sandboxd.services.commands import CommandService
from sandboxd.services.files import FileService
from sandboxd.services.lifecycle import SandboxService
from sandboxd.services.requests import RunCommand

PREFIX = "/sandboxes/{sandbox_id}/proxy/44772"
router = APIRouter(prefix=PREFIX)
router.include_router(execd_files.router)

CURSOR_HEADER = "EXECD-COMMANDS-TAIL-CURSOR"
Commands = Annotated[CommandService, Depends(commands)]
Sandboxes = Annotated[SandboxService, Depends(sandboxes)]
Files = Annotated[FileService, Depends(files)]


class RunIn(BaseModel):
    """execd's RunCommandRequest; a field it does not have is refused by name."""

    model_config = ConfigDict(extra="forbid")

    command: str | None = None
    argv: list[str] | None = None
    cwd: str | None = None
    background: bool = False
    timeout: int | None = Field(None, ge=1, description="Milliseconds.")
    uid: int | None = Field(None, ge=0)
    gid: int | None = Field(None, ge=0)
    envs: dict[str, str] = Field(default_factory=dict)

    def native(self) -> RunCommand:
        if (self.command is None) == (self.argv is None):
            raise InvalidRequest("command", "give exactly one of command (shell text) and argv")
        if self.gid is not None and self.uid is None:
            raise InvalidRequest("gid", "gid needs uid")
        user = None if self.uid is None else f"{self.uid}:{self.gid}" if self.gid is not None else str(self.uid)
        fields = {"command": "command" if self.command is not None else "argv", "env": "envs", "user": "uid"}
        try:
            return RunCommand(
                command=self.command if self.command is not None else self.argv or [],
                env=self.envs,
                cwd=self.cwd,
                user=user,
                timeout=None if self.timeout is None else self.timeout / 1000,
                background=self.background,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else "command"
            message = str(first["msg"]).removeprefix("Value error, ")
            raise InvalidRequest(fields.get(name, name), f"{fields.get(name, name)}: {message}") from None


# How long a ping waits for a sandbox that is still starting. The SDK pings right after create
# (which answers at once, Pending) and, on a 503, sleeps 200 ms before the next: answering the
# moment the sandbox runs saves the caller most of that sleep (a create takes ~50 ms).
PING_WAIT = 5.0
PING_POLL = 0.01


@router.get("/ping")
async def ping(sandbox: ExecdSandbox, service: Sandboxes) -> Response:
    """200 once the sandbox runs (a paused one with auto_resume is resumed, as any native call
    would); one still starting is waited for, up to PING_WAIT; else 503: the SDK pings until it
    answers."""
    deadline = asyncio.get_running_loop().time() + PING_WAIT
    while True:
        try:
            await service.running(sandbox.project_id, sandbox.id)
            return Response(status_code=200)
        except SandboxNotRunning as exc:
            current = await service.get(sandbox.project_id, sandbox.id)
            if current.status.state != State.PENDING or asyncio.get_running_loop().time() >= deadline:
                return JSONResponse({"code": "SANDBOX_NOT_READY", "message": exc.message}, status_code=503)
        await asyncio.sleep(PING_POLL)


@router.post("/command", response_class=StreamingResponse)
async def run_command(body: RunIn, sandbox: ExecdSandbox, service: Commands) -> StreamingResponse:
    """Runs a command; its events stream as execd's SSE. Errors before the first event are JSON."""
    cmd = body.native()
    if cmd.background:
        info = await service.start(sandbox.project_id, sandbox.id, cmd)
        return _sse(_each(sse.background(info)))
    return _sse(sse.command_events(await service.stream(sandbox.project_id, sandbox.id, cmd)))


async def _each(events: list[str]) -> AsyncIterator[str]:
    for item in events:
        yield item


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.delete("/command")
async def interrupt(sandbox: ExecdSandbox, service: Commands, id: Annotated[str, Query(min_length=1)]) -> Response:
    """Interrupts a command: its process is killed, as the native DELETE of a process does."""
    await service.signal(sandbox.project_id, sandbox.id, id, signal.SIGKILL)
    return Response(status_code=200)


def status_body(info: ProcessInfo) -> dict[str, object]:
    body: dict[str, object] = {
        "id": info.id,
        "running": info.running,
        "exit_code": None if info.running else sse.exit_code(info),
        "started_at": translate.rfc3339(info.started_at),
        "finished_at": translate.rfc3339(info.ended_at),
    }
    if not info.running and (info.timed_out or sse.exit_code(info) != 0):
        body["error"] = "timed out" if info.timed_out else f"exit status {sse.exit_code(info)}"
    return body


@router.get("/command/status/{command_id}")
async def command_status(command_id: str, sandbox: ExecdSandbox, service: Commands) -> dict[str, object]:
    return status_body(await service.status(sandbox.project_id, sandbox.id, command_id))


@router.get("/command/{command_id}/logs", response_class=PlainTextResponse)
async def command_logs(
    command_id: str,
    sandbox: ExecdSandbox,
    service: Commands,
    cursor: Annotated[int, Query(ge=0, description="0-based line to start from.")] = 0,
) -> PlainTextResponse:
    """A command's output (stdout and stderr as they came) from line `cursor` on; the header
    EXECD-COMMANDS-TAIL-CURSOR is the cursor to ask from next. The native log is byte-offset: the
    lines are counted here over the output the service keeps (16 MiB per process). A last line
    without its newline is held back while the command runs, so a line is never cut in two."""
    chunks: list[bytes] = []
    running = True
    async for item in await service.logs(sandbox.project_id, sandbox.id, command_id, 0, False):
        if isinstance(item, Output):
            chunks.append(item.data)
        elif isinstance(item, ProcessInfo):
            running = item.running
    data = b"".join(chunks)
    del chunks
    # Lines are counted on the bytes, b"\n" only, and never split into a list: the output is the
    # sandbox's, and short lines as Python strings would cost many times its size.
    end = data.rfind(b"\n") + 1 if running else len(data)  # a running command's last partial line waits
    total = data.count(b"\n", 0, end) + (1 if end > 0 and data[end - 1 : end] != b"\n" else 0)
    start = _after_lines(data, cursor, end)
    text = data[start:end].decode(errors="replace")
    return PlainTextResponse(text, headers={CURSOR_HEADER: str(max(total, cursor))})


def _after_lines(data: bytes, lines: int, end: int, block: int = 1 << 16) -> int:
    """The offset just past the first `lines` lines of data[:end] (end if it has fewer): counted a
    block at a time, then found within the one block that holds it."""
    pos = 0
    while lines > 0 and pos < end:
        stop = min(pos + block, end)
        found = data.count(b"\n", pos, stop)
        if found < lines:
            lines -= found
            pos = stop
            continue
        while lines > 0:
            pos = data.index(b"\n", pos, stop) + 1
            lines -= 1
    return min(pos, end) if lines == 0 else end


@router.get("/metrics")
async def metrics(sandbox: ExecdSandbox, service: Files) -> dict[str, object]:
    """CPU and memory use, from the sandbox's cgroup (execd_metrics.py); /metrics/watch is not served."""
    return await execd_metrics.metrics(service, sandbox)
