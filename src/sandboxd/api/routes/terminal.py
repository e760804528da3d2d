"""A PTY over WebSocket. Binary frames are channel-prefixed: 0x00 + bytes is stdin from the client,
0x01 + bytes is terminal output to it. Text frames are JSON control: {"type": "resize", "cols",
"rows"} and {"type": "signal", "signal"} from the client; {"type": "exit", ...} ends the session.

Sessions: the first frame to the client is {"type": "session", "id", "process_id", "reattached",
"grace_seconds"}. A client that closes the WebSocket normally (code 1000) hangs the terminal up,
as closing a terminal window does; a connection that drops (any other close, or none) leaves the
program running for grace_seconds, and ?session=ID attaches to it again: the last output
(scrollback) first, then live. One client at a time: a new attach takes the session over, and
the client it replaces gets {"type": "detached", "reason"} and close code 4001; a session ended
meanwhile (DELETE, expiry, the sandbox stopped) closes with 4002. Errors before the session:
{"type": "error", "code", "message"} and close code 4000 + the HTTP status (4404: no such
session, or another project's)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, WebSocket

from sandboxd.api.deps import WebSocketProjectId
from sandboxd.api.state import api_state
from sandboxd.api.terminal_relay import Wire, relay
from sandboxd.config import Settings
from sandboxd.domain import ExitInfo
from sandboxd.errors import SandboxdError
from sandboxd.services.requests import RunCommand
from sandboxd.services.terminals import Attachment, Session, TerminalService

router = APIRouter(prefix="/api/v1/sandboxes/{sandbox_id}", tags=["terminal"])
STDIN, OUTPUT = 0, 1
# The default program: bash if the image has it, else sh; a login shell, interactive (-i) with job
# control, its stderr on the terminal. Bash is interactive only when stdin and stderr are ttys, so
# no redirect may follow the exec'd shell (`exec bash -l 2>/dev/null` made a silent, promptless
# bash that Ctrl-C ended). `command -v` picks the program first because a failed `exec` ends a
# non-interactive sh before any `|| exec sh` fallback could run.
LOGIN_SHELL = "if command -v bash >/dev/null 2>&1; then exec bash -il; else exec sh -il; fi"


TAKEN_OVER, SESSION_GONE = 4001, 4002
HANG_UP = 1000  # the client's normal close: the terminal is closed, not dropped


def _exit_frame(end: ExitInfo | None) -> dict[str, Any]:
    return {"type": "exit", **(end.model_dump(mode="json") if end is not None else {})}


async def _close(websocket: WebSocket, held: Session, attachment: Attachment) -> None:
    """A client whose session was taken over or ended meanwhile is told why."""
    if attachment.ended.is_set():
        await websocket.send_text(json.dumps({"type": "detached", "reason": attachment.reason}))
        taken = held.attachment is not None and held.attachment is not attachment
        await websocket.close(code=TAKEN_OVER if taken else SESSION_GONE)
    else:
        await websocket.close()


WIRE = Wire(
    exit_frame=_exit_frame,
    hang_up=lambda code: code == HANG_UP,  # a drop or a takeover leaves the program for the next client
    stdin_prefix=bytes([STDIN]),
    output_prefix=bytes([OUTPUT]),
    signals=True,
    close=_close,
)


@router.websocket("/terminal")
async def terminal(
    websocket: WebSocket,
    sandbox_id: str,
    project: WebSocketProjectId,
    cols: Annotated[int | None, Query(ge=1, le=1000)] = None,
    rows: Annotated[int | None, Query(ge=1, le=1000)] = None,
    command: str = "",
    argv: Annotated[list[str], Query(description="A program and its arguments, run without a shell")] = [],  # noqa: B006
    user: str | None = None,
    session: Annotated[str | None, Query(max_length=64, description="A session to attach to again")] = None,
) -> None:
    services = api_state(websocket.scope).services
    terminals: TerminalService = services.terminals
    settings: Settings = services.settings
    if not argv:  # an image without a shell still gets a terminal through argv
        argv = ["/bin/sh", "-c", command or LOGIN_SHELL]
    await websocket.accept()
    try:
        if session:
            held, attachment, term = await terminals.attach(project, sandbox_id, session, rows, cols)
        else:
            cmd = RunCommand(command=argv, user=user)
            held, attachment, term = await terminals.open(project, sandbox_id, cmd, rows or 24, cols or 80)
    except SandboxdError as exc:
        await websocket.send_text(json.dumps({"type": "error", "code": exc.code, "message": exc.message}))
        await websocket.close(code=4000 + exc.status if 400 <= exc.status < 600 else 4500)
        return
    hello = {"id": held.id, "process_id": held.process_id, "reattached": bool(session)}
    try:
        grace = settings.terminal_grace_seconds
        await websocket.send_text(json.dumps({"type": "session", **hello, "grace_seconds": grace}))
    except Exception:  # noqa: BLE001  gone already: the session waits for it
        await term.detach()
        await terminals.release(held, attachment, exited=False)
        return
    await relay(websocket, terminals, held, attachment, term, WIRE)
