"""The host side of the agent protocol (the agent is agent/ at the top of the repository): one request per connection.

Any runtime whose sandboxes run the agent hands out connections to it; exec, files and terminals
are built on this and never on a particular runtime.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

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

REQ, STDOUT, STDERR, EXIT, STDIN, EOF, SIGNAL, RESIZE, DATA, END, REPLY, ERROR, GAP = range(1, 14)
# GAP: {"from": a, "to": b} before output that starts at b when the reader's position was a (the
# agent keeps a bounded buffer per process and drops its oldest output when a reader falls behind).
HEADER = struct.Struct(">BI")
CHUNK = 65536
# The agent runs inside the sandbox, so what it sends is untrusted: a frame may not make the
# server allocate more than this.
MAX_FRAME = 64 * 1024 * 1024


# What the agent says is the sandbox's word: an error it reports is the sandbox refusing the
# request (422, or the known codes below), never the server failing (500). Its message is shown
# to the caller, bounded and without control characters; its field only if it looks like one.
MAX_MESSAGE = 500
FIELD = re.compile(r"[a-z_][a-z0-9_.]{0,63}")
KNOWN: dict[str, type[SandboxdError]] = {
    "NOT_FOUND": NotFoundInSandbox,
    "NO_SPACE": NoSpace,
    "CONFLICT": Conflict,
    "FORBIDDEN": Forbidden,
    "EXHAUSTED": SandboxExhausted,
}
# The argument a failed operation is most likely about, when the agent names none.
OP_FIELDS = {"spawn": "command", "stdin": "data", "signal": "signal", "attach": "process_id", "move": "destination"}


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
    if code == "BAD_REQUEST":
        raise InvalidRequest(field, message)
    known = KNOWN.get(code) if isinstance(code, str) else None
    if known is not None:
        raise known(message, field)
    raise SandboxRefused(f"the sandbox refused: {message}" if message else "the sandbox refused", field)


class AgentConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.op = ""  # the request's, for the field an error is about

    async def send(self, kind: int, payload: bytes | dict[str, Any] = b"") -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        try:
            self.writer.write(HEADER.pack(kind, len(data)) + data)
            await self.writer.drain()
        except ConnectionError as exc:  # an agent that exits (or is killed) as we write
            raise AgentFailure("the sandbox agent closed the connection") from exc

    async def recv(self) -> tuple[int, bytes]:
        try:
            kind, size = HEADER.unpack(await self.reader.readexactly(HEADER.size))
            if size > MAX_FRAME:
                raise AgentFailure(f"the sandbox agent sent an oversized frame ({size} bytes)")
            return kind, await self.reader.readexactly(size) if size else b""
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise AgentFailure("the sandbox agent closed the connection") from exc

    async def request(self, op: str, **args: Any) -> None:
        self.op = op
        await self.send(REQ, {"op": op, **args})

    async def reply(self) -> Any:
        kind, payload = await self.recv()
        if kind == ERROR:
            raise_agent_error(payload, self.op)
        if kind != REPLY:
            raise AgentFailure(f"unexpected frame {kind} from the sandbox agent")
        return agent_json(payload)

    async def data(self) -> AsyncIterator[bytes]:
        """DATA frames until END."""
        while True:
            kind, payload = await self.recv()
            if kind == END:
                return
            if kind == ERROR:
                raise_agent_error(payload, self.op)
            yield payload

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


Connector = Callable[[], Awaitable[AgentConnection]]


class Agent:
    """Typed calls to one sandbox's agent."""

    def __init__(self, connect: Connector) -> None:
        self.connect = connect

    async def call(self, op: str, **args: Any) -> Any:
        conn = await self.connect()
        try:
            await conn.request(op, **args)
            return await conn.reply()
        finally:
            await conn.close()

    async def upload(self, body: AsyncIterator[bytes], op: str, **args: Any) -> Any:
        """Streams body as DATA frames for an upload op. The agent may refuse midway (a bad
        path, a hostile archive) and hang up: its ERROR frame then explains, not the broken pipe."""
        conn = await self.connect()
        try:
            await conn.request(op, **args)
            try:
                async for chunk in body:
                    for start in range(0, len(chunk), CHUNK):
                        await conn.send(DATA, chunk[start : start + CHUNK])
                await conn.send(END)
            except AgentFailure:
                pass
            return await conn.reply()
        finally:
            await conn.close()

    async def open(self, op: str, **args: Any) -> tuple[AgentConnection, Any]:
        """Starts a streaming request and returns the connection after its first reply."""
        conn = await self.connect()
        try:
            await conn.request(op, **args)
            return conn, await conn.reply()
        except BaseException:
            await conn.close()
            raise


async def unix_connector(path: str) -> AgentConnection:
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=4 * CHUNK)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise AgentFailure("the sandbox agent is not reachable") from exc
    return AgentConnection(reader, writer)
