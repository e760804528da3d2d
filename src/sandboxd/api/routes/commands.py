from __future__ import annotations

import base64
import binascii
import codecs
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import StreamingResponse

from sandboxd.api.deps import Commands, ProjectId
from sandboxd.api.models import (
    MAX_STDIN,
    CommandResult,
    ExitInfo,
    ProcessInfo,
    ProcessLogs,
    SignalIn,
    StdinIn,
    StdinOut,
)
from sandboxd.api.params import Offset
from sandboxd.api.routing import CheckedRoute
from sandboxd.domain import Gap, Output
from sandboxd.errors import InvalidRequest, RuntimeFailure
from sandboxd.services.requests import RunCommand, signal_number

router = APIRouter(prefix="/api/v1/sandboxes/{sandbox_id}", tags=["commands"], route_class=CheckedRoute)

MAX_WAIT = 3600.0  # seconds a wait may hold its request open

SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'Server-Sent Events: `stdout` and `stderr` events carry {"data"}, with `id:` '
        "the byte offset to resume from; a final `exit` event carries the result. A reader that falls "
        "more than the output kept per process (16 MiB) behind loses the oldest output: a `gap` event "
        '{"from", "to", "dropped"} (its `id:` is `to`) says which bytes are missing before the output '
        "goes on, so offsets stay real and every byte is either delivered or accounted for. A command "
        "started by this request first gets a `start` event with the process (its `id` and `pid`), "
        "before any output.",
        "content": {"text/event-stream": {}},
    }
}


async def _sse(items: AsyncIterator[ProcessInfo | Output | Gap | ExitInfo]) -> AsyncIterator[str]:
    # One decoder per stream: a character split between two reads is not mangled.
    decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")}
    async for item in items:
        if isinstance(item, Output):
            data = json.dumps({"data": decoders[item.stream].decode(item.data)})
            yield f"event: {item.stream}\nid: {item.offset}\ndata: {data}\n\n"
        elif isinstance(item, Gap):
            for decoder in decoders.values():
                decoder.reset()  # a character cut by the gap is not glued to what follows
            data = json.dumps({"from": item.start, "to": item.end, "dropped": item.dropped})
            yield f"event: gap\nid: {item.end}\ndata: {data}\n\n"
        elif isinstance(item, ExitInfo):
            yield f"event: exit\ndata: {item.model_dump_json()}\n\n"
        else:  # the process started: its id and pid come before any output
            yield f"event: start\nid: 0\ndata: {item.model_dump_json()}\n\n"


@router.post("/commands", response_model=CommandResult | ProcessInfo)
async def run_command(
    sandbox_id: str, body: RunCommand, service: Commands, project: ProjectId, response: Response
) -> CommandResult | ProcessInfo:
    """Runs a command to completion; with `background` returns 202 and the process at once."""
    if body.background:
        response.status_code = status.HTTP_202_ACCEPTED
        return await service.start(project, sandbox_id, body)
    return await service.run(project, sandbox_id, body)


@router.post("/commands/stream", responses=SSE_DOC, response_class=StreamingResponse)
async def stream_command(sandbox_id: str, body: RunCommand, service: Commands, project: ProjectId) -> StreamingResponse:
    """Runs a command and streams its output as Server-Sent Events: `stdout` and `stderr` events as it comes, then
    one `exit` event with the exit code."""
    return StreamingResponse(_sse(await service.stream(project, sandbox_id, body)), media_type="text/event-stream")


@router.get("/processes", response_model=list[ProcessInfo])
async def list_processes(sandbox_id: str, service: Commands, project: ProjectId) -> list[ProcessInfo]:
    """The sandbox's background processes, running and finished."""
    return await service.list(project, sandbox_id)


@router.get("/processes/{process_id}", response_model=ProcessInfo)
async def get_process(sandbox_id: str, process_id: str, service: Commands, project: ProjectId) -> ProcessInfo:
    """One background process: its command, state and exit code once it has ended."""
    return await service.status(project, sandbox_id, process_id)


@router.get("/processes/{process_id}/logs", response_model=ProcessLogs, responses=SSE_DOC)
async def process_logs(
    sandbox_id: str,
    process_id: str,
    service: Commands,
    project: ProjectId,
    offset: Offset = 0,
    follow: Annotated[bool, Query(description="Stream as SSE until the process ends.")] = False,
) -> ProcessLogs | StreamingResponse:
    """A background process's output from a byte offset: as JSON (stdout, stderr, the next offset), or with
    `follow=true` as Server-Sent Events until the process ends."""
    items = await service.logs(project, sandbox_id, process_id, offset, follow)
    if follow:
        return StreamingResponse(_sse(items), media_type="text/event-stream")
    out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    end, dropped = offset, 0
    process: ProcessInfo | None = None
    async for item in items:
        if isinstance(item, Output):
            out[item.stream].append(item.data)
        elif isinstance(item, Gap):
            dropped += item.dropped
        else:
            end = item.offset if item.offset is not None else end
            process = ProcessInfo.model_validate(item.model_dump(exclude={"offset", "oom_killed"}))
    if process is None:  # the agent's stream ends with the process's status, or raises
        raise RuntimeFailure("the sandbox agent ended a process's output without its status")
    return ProcessLogs(
        stdout=b"".join(out["stdout"]).decode(errors="replace"),
        stderr=b"".join(out["stderr"]).decode(errors="replace"),
        next_offset=end,
        dropped=dropped,
        process=process,
    )


@router.post("/processes/{process_id}/wait", response_model=ProcessInfo)
async def wait_process(
    sandbox_id: str,
    process_id: str,
    service: Commands,
    project: ProjectId,
    timeout: Annotated[
        float, Query(ge=0, le=MAX_WAIT, description="Seconds to wait at most; 0 answers at once.")
    ] = 30.0,
) -> ProcessInfo:
    """Waits until a background process ends (and its output is complete), at most `timeout` seconds.
    The answer is the process: `running: false` with its `exit_code` once it ended, or `running: true`
    if it was still running when the timeout passed."""
    return await service.wait(project, sandbox_id, process_id, timeout)


@router.post("/processes/{process_id}/stdin", response_model=StdinOut)
async def write_stdin(
    sandbox_id: str, process_id: str, body: StdinIn, service: Commands, project: ProjectId
) -> StdinOut:
    """Writes to a background process's standard input, text (`data`) or any bytes (`data_base64`);
    `eof` closes it after. The answer is the process and how many bytes were `written`: fewer than
    sent if the process did not read them within `timeout` (stdin then stays open)."""
    data = body.data.encode()
    if body.data_base64 is not None:
        if body.data:
            raise InvalidRequest("data_base64", "give data or data_base64, not both")
        try:
            data = base64.b64decode(body.data_base64, validate=True)
        except binascii.Error:
            raise InvalidRequest("data_base64", "not valid base64") from None
    if len(data) > MAX_STDIN:
        raise InvalidRequest("data", f"at most {MAX_STDIN} bytes per write")
    info, written = await service.write_stdin(project, sandbox_id, process_id, data, body.eof, body.timeout)
    return StdinOut(**info.model_dump(), written=written)


@router.post("/processes/{process_id}/signal", response_model=ProcessInfo)
async def signal_process(
    sandbox_id: str, process_id: str, body: SignalIn, service: Commands, project: ProjectId
) -> ProcessInfo:
    """Sends a signal (a name such as `SIGTERM` or a number) to a background process."""
    try:
        number = signal_number(body.signal)
    except ValueError as exc:
        raise InvalidRequest("signal", str(exc)) from None
    return await service.signal(project, sandbox_id, process_id, number)


@router.delete("/processes/{process_id}", response_model=ProcessInfo)
async def kill_process(sandbox_id: str, process_id: str, service: Commands, project: ProjectId) -> ProcessInfo:
    """Kills a background process (SIGKILL)."""
    return await service.signal(project, sandbox_id, process_id, 9)
