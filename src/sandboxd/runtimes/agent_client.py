"""The host side of the agent protocol (the agent is agent/ at the top of the repository): one request per connection.

Any runtime whose sandboxes run the agent hands out connections to it; exec, files and terminals
are built on this and never on a particular runtime.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sandboxd.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NoSpace,
    NotFoundInSandbox,
    RuntimeFailure,
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


def raise_agent_error(payload: bytes) -> None:
    body = json.loads(payload)
    code, message = body.get("code"), body.get("message", "")
    if code == "NOT_FOUND":
        raise NotFoundInSandbox(message)
    if code == "BAD_REQUEST":
        raise InvalidRequest(body.get("field") or "path", message)
    if code == "NO_SPACE":
        raise NoSpace(message)
    if code == "CONFLICT":
        raise Conflict(message)
    if code == "FORBIDDEN":
        raise Forbidden(message)
    if code == "EXHAUSTED":
        raise SandboxExhausted(message)
    raise RuntimeFailure(f"agent: {message}")


class AgentConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, kind: int, payload: bytes | dict[str, Any] = b"") -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        self.writer.write(HEADER.pack(kind, len(data)) + data)
        await self.writer.drain()

    async def recv(self) -> tuple[int, bytes]:
        try:
            kind, size = HEADER.unpack(await self.reader.readexactly(HEADER.size))
            if size > MAX_FRAME:
                raise RuntimeFailure(f"the sandbox agent sent an oversized frame ({size} bytes)")
            return kind, await self.reader.readexactly(size) if size else b""
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise RuntimeFailure("the sandbox agent closed the connection") from exc

    async def request(self, op: str, **args: Any) -> None:
        await self.send(REQ, {"op": op, **args})

    async def reply(self) -> Any:
        kind, payload = await self.recv()
        if kind == ERROR:
            raise_agent_error(payload)
        if kind != REPLY:
            raise RuntimeFailure(f"unexpected frame {kind} from the sandbox agent")
        return json.loads(payload)

    async def data(self) -> AsyncIterator[bytes]:
        """DATA frames until END."""
        while True:
            kind, payload = await self.recv()
            if kind == END:
                return
            if kind == ERROR:
                raise_agent_error(payload)
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
            except ConnectionError:
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
        raise RuntimeFailure("the sandbox agent is not reachable") from exc
    return AgentConnection(reader, writer)
