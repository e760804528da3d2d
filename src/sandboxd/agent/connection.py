"""The transport to one sandbox's agent: connect (unix socket, or TCP with the sandbox's token),
frame, and read what comes back with bounds. Requests follow one another on a connection (the
port keeps idle ones), each begun only once the last answer was read to its end.

The agent runs inside the sandbox, so everything it sends is hostile input: a frame may not make
the server allocate more than MAX_FRAME, a malformed message is the agent's failure (502), and an
error it reports is the sandbox refusing (its message bounded and without control characters).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn
from urllib.parse import urlsplit

from sandboxd.agent.protocol import AUTH_TIMEOUT_MS, CHUNK, HEADER, MAX_FRAME, MAX_TOKEN, MIN_TOKEN, ErrorCode, Frame
from sandboxd.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NoSpace,
    NotFoundInSandbox,
    RuntimeFailure,
    SandboxdError,
    SandboxExhausted,
)

# What the agent says is the sandbox's word: an error it reports is the sandbox refusing the
# request (422, or the known codes below), never the server failing (500). Its message is shown
# to the caller, bounded and without control characters; its field only if it looks like one.
MAX_MESSAGE = 500
FIELD = re.compile(r"[a-z_][a-z0-9_.]{0,63}")
KNOWN: dict[str, type[SandboxdError]] = {
    ErrorCode.NOT_FOUND: NotFoundInSandbox,
    ErrorCode.NO_SPACE: NoSpace,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.EXHAUSTED: SandboxExhausted,
}
# The argument a failed operation is most likely about, when the agent names none.
OP_FIELDS = {
    "spawn": "command",
    "stdin": "data",
    "write_stdin": "data",
    "signal": "signal",
    "attach": "process_id",
    "move": "destination",
}


class SandboxRefused(SandboxdError):
    """The sandbox's agent could not do it, for a reason of its own (an errno, a crash)."""

    code = "SANDBOX_REFUSED"
    status = 422


class AgentFailure(RuntimeFailure):
    """The agent hung up, is gone, or answered something that is not the protocol: the
    sandbox's failure (it may have killed or replaced its agent), an upstream's to the API.
    A RuntimeFailure still for whoever waits on an agent to come up."""

    code = "SANDBOX_AGENT_ERROR"
    status = 502


class AgentClosed(AgentFailure):
    """The connection was closed (or reset) under a read or a write."""

    def __init__(self) -> None:
        super().__init__("the sandbox agent closed the connection")


def agent_json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        raise AgentFailure("the sandbox agent sent a malformed message") from None


def bounded(text: object) -> str:
    value = text if isinstance(text, str) else ""
    value = "".join(c if c.isprintable() else " " for c in value[: MAX_MESSAGE + 1])
    return value[:MAX_MESSAGE] + ("..." if len(value) > MAX_MESSAGE else "")


def raise_agent_error(payload: bytes, op: str = "") -> NoReturn:
    body = agent_json(payload)
    if not isinstance(body, dict):
        raise AgentFailure("the sandbox agent sent a malformed error")
    code, message = body.get("code"), bounded(body.get("message"))
    given = body.get("field")
    field = given if isinstance(given, str) and FIELD.fullmatch(given) else OP_FIELDS.get(op, "path")
    if code == ErrorCode.BAD_REQUEST:
        raise InvalidRequest(field, message)
    if code == ErrorCode.UNAUTHORIZED:  # the connector's token is wrong: the server's setup, not the caller's
        raise AgentFailure("the sandbox agent refused the connection's token")
    known = KNOWN.get(code) if isinstance(code, str) else None
    if known is not None:
        raise known(message, field)
    raise SandboxRefused(f"the sandbox refused: {message}" if message else "the sandbox refused", field)


class AgentConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.op = ""  # the request's, for the field an error is about

    async def send(self, kind: Frame, payload: bytes | dict[str, Any] = b"") -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        try:
            self.writer.write(HEADER.pack(kind, len(data)) + data)
            await self.writer.drain()
        except ConnectionError as exc:  # an agent that exits (or is killed) as we write
            raise AgentClosed from exc

    async def send_chunks(self, body: AsyncIterator[bytes]) -> None:
        """body as DATA frames of at most CHUNK bytes, then END."""
        async for chunk in body:
            for start in range(0, len(chunk), CHUNK):
                await self.send(Frame.DATA, chunk[start : start + CHUNK])
        await self.send(Frame.END)

    async def recv(self) -> tuple[int, bytes]:
        try:
            kind, size = HEADER.unpack(await self.reader.readexactly(HEADER.size))
            if size > MAX_FRAME:
                raise AgentFailure(f"the sandbox agent sent an oversized frame ({size} bytes)")
            return kind, await self.reader.readexactly(size) if size else b""
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise AgentClosed from exc

    async def request(self, op: str, **args: Any) -> None:
        self.op = op
        await self.send(Frame.REQ, {"op": op, **args})

    async def reply(self) -> Any:
        kind, payload = await self.recv()
        if kind == Frame.ERROR:
            raise_agent_error(payload, self.op)
        if kind != Frame.REPLY:
            raise AgentFailure(f"unexpected frame {kind} from the sandbox agent")
        return agent_json(payload)

    async def data(self) -> AsyncIterator[bytes]:
        """DATA frames until END."""
        while True:
            kind, payload = await self.recv()
            if kind == Frame.END:
                return
            if kind == Frame.ERROR:
                raise_agent_error(payload, self.op)
            if kind != Frame.DATA:
                raise AgentFailure(f"unexpected frame {kind} from the sandbox agent")
            yield payload

    def usable(self) -> bool:
        """Whether an idle connection may carry another request: neither end has closed it."""
        return not self.writer.is_closing() and not self.reader.at_eof()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


Connector = Callable[[], Awaitable[AgentConnection]]


async def unix_connector(path: str) -> AgentConnection:
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=4 * CHUNK)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise AgentFailure("the sandbox agent is not reachable") from exc
    return AgentConnection(reader, writer)


def check_token(token: bytes) -> bytes:
    if not MIN_TOKEN <= len(token) <= MAX_TOKEN or b"\n" in token or b"\r" in token:
        raise ValueError(f"an agent token is {MIN_TOKEN} to {MAX_TOKEN} bytes, without line breaks")
    return token


async def tcp_connector(host: str, port: int, token: bytes) -> AgentConnection:
    """A connection to an agent listening on TCP (--listen tcp:ADDR), after its AUTH frame. A wrong
    token is not noticed here: the agent answers the request with ERROR UNAUTHORIZED and hangs up."""
    check_token(token)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=4 * CHUNK), AUTH_TIMEOUT_MS / 1000
        )
    except (OSError, TimeoutError) as exc:
        raise AgentFailure("the sandbox agent is not reachable") from exc
    conn = AgentConnection(reader, writer)
    await conn.send(Frame.AUTH, token)
    return conn


def connector(address: str, token: bytes | None = None) -> Connector:
    """A connector for `unix:///path` (or a plain path) or `tcp://host:port` (which needs token)."""
    url = urlsplit(address)
    if url.scheme == "tcp":
        if token is None:
            raise ValueError("an agent on TCP takes a token")
        checked, host, port = check_token(token), url.hostname, url.port
        if host is None or port is None:
            raise ValueError(f"not host:port: {address!r}")
        return lambda: tcp_connector(host, port, checked)
    if url.scheme not in ("", "unix"):
        raise ValueError(f"unknown agent address {address!r}")
    path = url.path
    return lambda: unix_connector(path)
