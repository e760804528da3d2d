"""Vercel facade: interactive PTY sessions (`POST …/sessions/{sessionId}/interactive` -> `{url, token}`).

The URL is a WebSocket on this facade; the SDK connects to it with `?token=` (it first tries
`https://<host>/health` a few times and goes on when that fails). The protocol, as the SDK 0.10.0
speaks it (vercel/sandbox/_internal/interactive_session.py):
- client -> server: a text frame `{"type": "start", "command", "args", "env": ["K=V"], "cwd",
  "cols", "rows"}` first (a `sudo` session's argv starts with "sudo": it runs as root here, without
  a sudo binary), then binary frames = keystrokes, and text `{"type": "resize", "cols", "rows"}`;
- server -> client: binary frames = terminal output, and `{"type": "exit", "code": N}` at the end.
The program runs as a native terminal session (its per-sandbox limit applies); closing the
WebSocket hangs it up.

The token is an HMAC under the server's key of the session id, the sandbox's traffic token and an
expiry: it opens this one session's PTY only, once (the SDK connects once per token; a token seen
in a log or a proxy cannot open a second terminal), and it is void once it expires or the
sandbox's traffic token changes. Only the spent tokens are kept, until they expire. The caller's
key never goes into a URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandboxd.api.facades.vercel.command_shapes import ended_code
from sandboxd.api.facades.vercel.common import LiveSession
from sandboxd.api.state import api_state
from sandboxd.api.terminal_relay import Wire, relay
from sandboxd.domain import ExitInfo, Sandbox
from sandboxd.errors import SandboxdError
from sandboxd.services.requests import RunCommand
from sandboxd.services.terminals import TerminalService

router = APIRouter()
TOKEN_SECONDS = 600  # a token opens its PTY within this long
MAX_SPENT = 1000  # tokens one session may spend in a TOKEN_SECONDS window; past that, its connections wait
MAX_SESSIONS = 10_000  # sessions with spent tokens kept before the expired ones are swept
START_WAIT = 30.0  # seconds the client has to send its start frame


class StartIn(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the SDK's start frame may grow fields: a PTY is still a PTY

    type: str
    command: str = Field(min_length=1, max_length=4096)
    args: list[str] = Field(default_factory=list, max_length=10_000)
    env: list[str] = Field(default_factory=list, max_length=10_000)
    cwd: str | None = None
    cols: int = Field(80, ge=1, le=1000)
    rows: int = Field(24, ge=1, le=1000)


def _mac(key: str, sandbox: Sandbox, expires: int) -> str:
    message = f"vercel:interactive:{sandbox.id}:{sandbox.traffic_token}:{expires}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def token(key: str, sandbox: Sandbox, now: float | None = None) -> str:
    expires = int(now if now is not None else time.time()) + TOKEN_SECONDS
    return f"{expires}.{_mac(key, sandbox, expires)}"


def valid(presented: str, key: str, sandbox: Sandbox) -> bool:
    expires, _, mac = presented.partition(".")
    if not expires.isdigit() or len(expires) > 12 or int(expires) < time.time():
        return False
    return hmac.compare_digest(mac.encode(), _mac(key, sandbox, int(expires)).encode())


class Spent:
    """The tokens already used, per session, each until it expires (then its MAC refuses it anyway).
    Kept per session so that a caller spending tokens fast on its own session blocks only that
    session's terminals, never another tenant's."""

    def __init__(self) -> None:
        self._until: dict[str, dict[str, int]] = {}

    def take(self, session_id: str, presented: str) -> bool:
        """True the first time a (valid) token is presented, False after."""
        now = time.time()
        spent = self._until.setdefault(session_id, {})
        if len(spent) >= MAX_SPENT:
            spent = self._until[session_id] = {t: e for t, e in spent.items() if e >= now}
        if len(self._until) > MAX_SESSIONS:  # sessions whose tokens have all expired go
            self._until = {sid: kept for sid, kept in self._until.items() if any(e >= now for e in kept.values())}
            self._until.setdefault(session_id, spent)
        if presented in spent or len(spent) >= MAX_SPENT:
            return False
        spent[presented] = int(presented.partition(".")[0])
        return True


def spent(websocket: WebSocket) -> Spent:
    state = websocket.app.state  # the facade's own app
    found = getattr(state, "vercel_spent_tokens", None)
    if found is None:
        found = state.vercel_spent_tokens = Spent()
    assert isinstance(found, Spent)
    return found


@router.post("/interactive")
async def open_interactive(session_id: str, request: Request, session: LiveSession) -> dict[str, Any]:
    from sandboxd.api.facades import public_base  # the package imports this module: not at import time

    sandbox = session.sandbox
    scheme = "wss" if request.url.scheme == "https" else "ws"
    url = f"{scheme}://{public_base(request.scope)}/v2/sandboxes/sessions/{sandbox.id}/interactive/connect"
    return {"url": url, "token": token(session.services.settings.resolved_api_key(), sandbox)}


def _command(start: StartIn) -> RunCommand:
    argv = [start.command, *start.args]
    user = None
    if argv[0] == "sudo" and len(argv) > 1:  # the SDK's way to ask for root
        argv, user = argv[1:], "root"
    env = dict(item.partition("=")[::2] for item in start.env if "=" in item)
    return RunCommand(command=argv, env=env, cwd=start.cwd or None, user=user)


@router.websocket("/interactive/connect")
async def connect(websocket: WebSocket, session_id: str, token: str = "") -> None:
    services = api_state(websocket.scope).services
    try:  # any project's: the token, made for one sandbox of the caller's project, decides
        found = await services.sandboxes.get(None, session_id)
    except SandboxdError:
        found = None
    if (
        found is None
        or not valid(token, services.settings.resolved_api_key(), found)
        or not spent(websocket).take(found.id, token)
    ):
        await websocket.close(code=4401)  # before accept: the handshake is refused (403)
        return
    await websocket.accept()
    try:
        async with asyncio.timeout(START_WAIT):
            start = StartIn.model_validate(json.loads(await websocket.receive_text()))
        terminals: TerminalService = services.terminals
        cmd = _command(start)
        held, attachment, term = await terminals.open(found.project_id, found.id, cmd, start.rows, start.cols)
    except WebSocketDisconnect:
        return  # gone before its start frame: nothing was opened
    except (TimeoutError, ValueError, ValidationError, SandboxdError, KeyError) as exc:
        message = exc.message if isinstance(exc, SandboxdError) else "expected a start frame first"
        with contextlib.suppress(Exception):
            await websocket.send_text(json.dumps({"type": "error", "message": message}))
            await websocket.close(code=4400)
        return
    await relay(websocket, terminals, held, attachment, term, WIRE)


def _exit_frame(end: ExitInfo | None) -> dict[str, Any]:
    return {"type": "exit", "code": None if end is None else ended_code(end)}


# Vercel's client cannot attach again: whatever ended the connection hangs the PTY up.
WIRE = Wire(exit_frame=_exit_frame, hang_up=lambda code: True)
