"""A PTY over WebSocket. Binary frames are channel-prefixed: 0x00 + bytes is stdin from the client,
0x01 + bytes is terminal output to it. Text frames are JSON control: {"type": "resize", "cols",
"rows"} and {"type": "signal", "signal"} from the client; {"type": "exit", ...} ends the session."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket

from sandboxd.api.deps import WebSocketProjectId
from sandboxd.api.state import api_state
from sandboxd.errors import SandboxdError
from sandboxd.services.commands import CommandService
from sandboxd.services.requests import RunCommand

router = APIRouter(prefix="/api/v1/sandboxes/{sandbox_id}", tags=["terminal"])
STDIN, OUTPUT = 0, 1
# The default program: bash if the image has it, else sh; a login shell, interactive (-i) with job
# control, its stderr on the terminal. Bash is interactive only when stdin and stderr are ttys, so
# no redirect may follow the exec'd shell (`exec bash -l 2>/dev/null` made a silent, promptless
# bash that Ctrl-C ended). `command -v` picks the program first because a failed `exec` ends a
# non-interactive sh before any `|| exec sh` fallback could run.
LOGIN_SHELL = "if command -v bash >/dev/null 2>&1; then exec bash -il; else exec sh -il; fi"


@router.websocket("/terminal")
async def terminal(
    websocket: WebSocket,
    sandbox_id: str,
    project: WebSocketProjectId,
    cols: Annotated[int, Query(ge=1, le=1000)] = 80,
    rows: Annotated[int, Query(ge=1, le=1000)] = 24,
    command: str = "",
    argv: Annotated[list[str], Query(description="A program and its arguments, run without a shell")] = [],  # noqa: B006
    user: str | None = None,
) -> None:
    commands: CommandService = api_state(websocket.scope).services.commands
    if not argv:  # an image without a shell still gets a terminal through argv
        argv = ["/bin/sh", "-c", command or LOGIN_SHELL]
    await websocket.accept()
    try:
        term = await commands.terminal(project, sandbox_id, RunCommand(command=argv, user=user), rows, cols)
    except SandboxdError as exc:
        await websocket.send_text(json.dumps({"type": "error", "code": exc.code, "message": exc.message}))
        await websocket.close(code=4404 if exc.status == 404 else 4400)
        return

    async def from_client() -> None:
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes"):
                if msg["bytes"][0] == STDIN:
                    await term.write(msg["bytes"][1:])
            elif msg.get("text"):
                try:
                    control = json.loads(msg["text"])
                    if control.get("type") == "resize":
                        await term.resize(int(control["rows"]), int(control["cols"]))
                    elif control.get("type") == "signal":
                        await term.signal(int(control["signal"]))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # a malformed control frame is ignored, not the end of the session

    async def to_client() -> None:
        while (data := await term.read()) is not None:
            await websocket.send_bytes(bytes([OUTPUT]) + data)
        exit_info = term.exit.model_dump(mode="json") if term.exit is not None else {}
        await websocket.send_text(json.dumps({"type": "exit", **exit_info}))

    reader = asyncio.create_task(from_client())
    writer = asyncio.create_task(to_client())
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, writer):
            task.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
        await term.close()  # hangs up the shell unless it already exited
        with contextlib.suppress(Exception):
            await websocket.close()
