"""AgentPort: typed calls to one sandbox's agent. Services use this and nothing below it: no
opcode, frame kind or agent JSON key leaves src/sandboxd/agent/.

Everything the agent answers is checked here (shapes, types, times, offsets) and turned into the
domain's values; what does not hold together is the agent's failure (AgentFailure, 502)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from sandboxd.agent.connection import (
    AgentClosed,
    AgentConnection,
    AgentFailure,
    Connector,
    agent_json,
    raise_agent_error,
)
from sandboxd.agent.protocol import Frame, Op
from sandboxd.domain import ExitInfo, FileInfo, Gap, Output, ProcessInfo

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Release = Callable[[AgentConnection, bool], Awaitable[None]]  # (connection, cleanly done)
TIME_FIELDS = ("started_at", "ended_at", "modified_at")
LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: a datetime can hold no later time
STREAMS: dict[int, Literal["stdout", "stderr"]] = {Frame.STDOUT: "stdout", Frame.STDERR: "stderr"}
READ_BATCH = 1024 * 1024  # a file read is passed on in pieces of this size (the agent sends 64 KiB)
# An offset past any output a process can have (the agent's offsets are int64): an attachment from
# there sends no output, only the exit once the process has ended (its output drained).
PAST_OUTPUT = 2**62
STDIN_WAIT = 10.0  # the agent's default wait for a process to read what is written to its stdin
# What a non-follow attach may send: the agent keeps 16 MiB of a process's output (agent/procs.go
# outputCap); more, with slack for what is written while it answers, is a hostile agent's.
MAX_PAST_OUTPUT = (16 << 20) + (1 << 20)
ANSWER_GRACE = 30.0  # seconds past an agent's own deadline before its silence is its failure


def _when(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise AgentFailure("the sandbox agent sent a malformed time")
    if not 0 <= value <= LATEST:
        raise AgentFailure("the sandbox agent sent a time out of range")
    return datetime.fromtimestamp(value, UTC)


def parse(model: type[M], raw: object) -> M:
    """An agent's JSON object as model: Unix times become datetimes, anything else malformed fails."""
    if not isinstance(raw, dict):
        raise AgentFailure("the sandbox agent sent a malformed message")
    body = {k: _when(v) if k in TIME_FIELDS else v for k, v in raw.items()}
    try:
        return model.model_validate(body, strict=False)
    except ValidationError:
        raise AgentFailure(f"the sandbox agent sent a malformed {model.__name__}") from None


def parse_list(model: type[M], raw: object, limit: int) -> list[M]:
    if not isinstance(raw, list):
        raise AgentFailure("the sandbox agent sent a malformed list")
    return [parse(model, item) for item in raw[:limit]]


@dataclass(frozen=True)
class Spawn:
    """What to start: the request's values, already merged with the sandbox's defaults."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str | int | None = None
    timeout: float | None = None
    keep_stdin: bool = False  # a pipe for later writes; otherwise stdin is /dev/null
    home_set: bool = False  # the caller set HOME: a user's own home does not replace it

    def args(self) -> dict[str, Any]:
        return {
            "argv": self.argv,
            "env": self.env,
            "home_set": self.home_set,
            "cwd": self.cwd,
            "user": self.user,
            "timeout": self.timeout,
            "stdin": self.keep_stdin,
        }


class ProcessStream:
    """An attached process: its output as Output and Gap items, then one ExitInfo, read in the one
    loop that reads process frames; meanwhile stdin, resize and signals go the other way. Iterate
    once. At the exit the host sends END, after which the agent reads the connection for its next
    request: it goes back to the port then (or is closed, when the iteration ends early or on
    close()), and what is still written to the process is dropped, as the agent drops late frames."""

    def __init__(
        self,
        conn: AgentConnection,
        offset: int,
        start: int,
        process: ProcessInfo | None = None,
        release: Release | None = None,
        limit: int | None = None,
    ) -> None:
        self._conn = conn
        self._limit = limit  # bytes of output it may send in all (a non-follow attach's bound)
        self._offset = offset  # where the reader asked to start
        self._start = start  # where the agent said its output starts
        self.process = process  # the spawned process, for a stream started by spawn
        self._release = release
        self._done = False

    async def _send(self, kind: Frame, payload: bytes | dict[str, Any] = b"") -> None:
        if not self._done:
            await self._conn.send(kind, payload)

    async def write(self, data: bytes) -> None:
        await self._send(Frame.STDIN, data)

    async def close_stdin(self) -> None:
        await self._send(Frame.EOF)

    async def resize(self, rows: int, cols: int) -> None:
        await self._send(Frame.RESIZE, {"rows": rows, "cols": cols})

    async def signal(self, number: int) -> None:
        await self._send(Frame.SIGNAL, {"signal": number})

    async def close(self) -> None:
        await self._finish(False)

    async def _finish(self, clean: bool) -> None:
        if self._done:
            return
        self._done = True
        if self._release is not None:
            await self._release(self._conn, clean)
        else:
            await self._conn.close()

    def __aiter__(self) -> AsyncGenerator[Output | Gap | ExitInfo]:
        return self._items()

    async def _items(self) -> AsyncGenerator[Output | Gap | ExitInfo]:
        offset, received = self._offset, 0
        try:
            if self._start > offset:
                yield Gap(offset, self._start)
                offset = self._start
            while True:
                kind, payload = await self._conn.recv()
                if kind in STREAMS:
                    offset, received = offset + len(payload), received + len(payload)
                    if self._limit is not None and received > self._limit:
                        raise AgentFailure("the sandbox agent sent more of a process's output than it keeps")
                    yield Output(STREAMS[kind], payload, offset)
                elif kind == Frame.GAP:
                    gap = _gap(payload, offset)
                    offset = gap.end
                    yield gap
                elif kind == Frame.EXIT:
                    end = parse(ExitInfo, agent_json(payload))
                    # Before the yield: a reader may stop at the exit.
                    try:
                        await self._conn.send(Frame.END)
                    except AgentFailure:
                        await self._finish(False)
                    await self._finish(True)
                    yield end
                    return
                elif kind == Frame.ERROR:
                    raise_agent_error(payload, self._conn.op)
                else:
                    raise AgentFailure(f"unexpected frame {kind} from the sandbox agent")
        finally:
            await self._finish(False)


def _gap(payload: bytes, offset: int) -> Gap:
    """A GAP frame, checked: what the agent says must at least hold together (from the reader's
    position, forwards)."""
    body = agent_json(payload)
    start, end = (body.get("from"), body.get("to")) if isinstance(body, dict) else (None, None)
    if not (type(start) is int and type(end) is int):
        raise AgentFailure("the sandbox agent sent a malformed gap frame")
    if not start == offset < end:
        raise AgentFailure(f"the sandbox agent sent a gap that does not follow offset {offset}")
    return Gap(start, end)


class AgentPort:
    """One sandbox's agent. With pool > 0 it keeps up to that many idle connections for the next
    calls (a connection is kept only after its answer was read to its end, never after an error);
    close() closes them, and the port then keeps none."""

    def __init__(self, connect: Connector, pool: int = 0) -> None:
        self.connect = connect
        self.pool = pool
        self._idle: list[AgentConnection] = []
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    async def _connection(self) -> tuple[AgentConnection, bool]:
        """An idle connection (True) or a new one (False)."""
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn, True
            await conn.close()
        return await self.connect(), False

    async def _release(self, conn: AgentConnection, clean: bool) -> None:
        if clean and not self._closed and len(self._idle) < self.pool and conn.usable():
            self._idle.append(conn)
        else:
            await conn.close()

    async def _begin(self, op: Op, args: dict[str, Any]) -> tuple[AgentConnection, Any]:
        """Sends the request and reads the first answer. A kept connection the agent closed
        meanwhile (an agent from before connections were kept answers one request each) is
        replaced once by a new one: an agent that closed it never read the request."""
        conn, kept = await self._connection()
        while True:
            try:
                await conn.request(op, **args)
                return conn, await conn.reply()
            except AgentClosed:
                await conn.close()
                if not kept:
                    raise
                conn, kept = await self.connect(), False
            except BaseException:
                await conn.close()
                raise

    async def _call(self, op: Op, into: Callable[[Any], T], **args: Any) -> T:
        """One request, one reply, read as into() reads it; a reply it refuses costs the connection."""
        conn, reply = await self._begin(op, args)
        try:
            value = into(reply)
        except BaseException:
            await conn.close()
            raise
        await self._release(conn, True)
        return value

    async def _open(self, op: Op, **args: Any) -> tuple[AgentConnection, Any]:
        """Starts a streaming request; returns the connection after its first reply."""
        return await self._begin(op, args)

    async def _upload(self, op: Op, chunks: AsyncIterator[bytes], **args: Any) -> Any:
        """Streams chunks as DATA frames. The agent may refuse midway (a bad path, a hostile
        archive) and hang up: its ERROR frame then explains, not the broken pipe. Always on a new
        connection: a body cannot be sent twice, so a kept one that turned out closed could not
        be replaced."""
        conn = await self.connect()
        clean = False
        try:
            await conn.request(op, **args)
            try:
                await conn.send_chunks(chunks)
                clean = True
            except AgentFailure:
                pass
            reply = await conn.reply()
        except BaseException:
            await conn.close()
            raise
        await self._release(conn, clean)
        return reply

    # -- processes -------------------------------------------------------------------------------

    async def spawn(self, spec: Spawn) -> ProcessInfo:
        """Starts a process in the background."""
        return await self._call(Op.SPAWN, lambda r: parse(ProcessInfo, r), **spec.args())

    async def run(self, spec: Spawn, stdin: bytes | None = None) -> ProcessStream:
        """Starts a process and streams its output from the start; stdin, if given, is written
        and closed (spec.keep_stdin must then be set). Errors raise here, before any output."""
        conn, reply = await self._open(Op.SPAWN, **spec.args(), attach=True)
        stream = ProcessStream(conn, 0, 0, await self._spawned(conn, reply), self._release)
        try:
            if stdin is not None:
                await stream.write(stdin)
                await stream.close_stdin()
        except BaseException:
            await stream.close()
            raise
        return stream

    async def terminal(self, spec: Spawn, rows: int, cols: int) -> ProcessStream:
        """Starts a process on a PTY of rows x cols; its output is all stdout."""
        conn, reply = await self._open(Op.SPAWN, **spec.args(), attach=True, pty=True, rows=rows, cols=cols)
        return ProcessStream(conn, 0, 0, await self._spawned(conn, reply), self._release)

    async def attach(self, process_id: str, offset: int = 0, follow: bool = True) -> ProcessStream:
        """A process's output from offset on (after a Gap up to the oldest kept, if that was
        dropped); with follow, until it ends. An unknown process raises here."""
        conn, first = await self._open(Op.ATTACH, id=process_id, offset=offset, follow=follow)
        start = first.get("offset") if isinstance(first, dict) else None
        if type(start) is not int or start < offset:
            await conn.close()
            raise AgentFailure(f"the sandbox agent answered an attach with a bad offset: {start!r:.40}")
        limit = None if follow else MAX_PAST_OUTPUT  # what is there now: a bound the agent keeps to
        return ProcessStream(conn, offset, start, release=self._release, limit=limit)

    async def wait(self, process_id: str, timeout: float) -> ProcessInfo:
        """The process's status once it has ended (its output complete), or after timeout seconds
        while it still runs, whichever comes first. An unknown process raises. The attach and the
        final status are bounded too (ANSWER_GRACE past the timeout, all told): an agent that
        never answers them holds the request no longer than that."""
        try:
            async with asyncio.timeout(timeout + ANSWER_GRACE):
                return await self._wait(process_id, timeout)
        except TimeoutError:
            raise AgentFailure("the sandbox agent did not answer a wait in time") from None

    async def _wait(self, process_id: str, timeout: float) -> ProcessInfo:
        stream = await self.attach(process_id, PAST_OUTPUT, follow=True)
        items = aiter(stream)
        try:
            async with asyncio.timeout(timeout):
                async for item in items:
                    if isinstance(item, ExitInfo):
                        return ProcessInfo.model_validate(item.model_dump(exclude={"offset", "oom_killed"}))
                    # Output or a gap from past every process's output is the agent's fault.
                    raise AgentFailure("the sandbox agent sent output past where it was asked to start")
        except TimeoutError:
            pass  # the inner bound only: the outer one's expiry is a cancellation until wait sees it
        finally:
            await items.aclose()
            await stream.close()  # the hang-up ends the agent's side of the wait
        return await self.process(process_id)

    @staticmethod
    async def _spawned(conn: AgentConnection, reply: Any) -> ProcessInfo:
        try:
            return parse(ProcessInfo, reply)
        except BaseException:
            await conn.close()
            raise

    async def processes(self) -> list[ProcessInfo]:
        return await self._call(Op.LIST, lambda r: parse_list(ProcessInfo, r, 100_000))

    async def process(self, process_id: str) -> ProcessInfo:
        return await self._call(Op.STATUS, lambda r: parse(ProcessInfo, r), id=process_id)

    async def signal(self, process_id: str, signal: int) -> ProcessInfo:
        """Sends signal to the process and everything it started."""
        return await self._call(Op.SIGNAL, lambda r: parse(ProcessInfo, r), id=process_id, signal=signal)

    async def stdin(self, process_id: str, data: str | bytes, eof: bool = False) -> ProcessInfo:
        text = data.decode(errors="replace") if isinstance(data, bytes) else data
        return await self._call(Op.STDIN, lambda r: parse(ProcessInfo, r), id=process_id, data=text, eof=eof)

    async def write_stdin(
        self, process_id: str, data: bytes, eof: bool = False, timeout: float | None = None
    ) -> tuple[ProcessInfo, int]:
        """Writes data, bytes as they are, to the process's stdin; eof closes it after. Returns the
        process and how many bytes it took: fewer than sent when it did not read them within
        timeout seconds (the agent's default: 10), and stdin is then left open."""

        async def body() -> AsyncIterator[bytes]:
            yield data

        try:  # the agent answers by its timeout; one that does not is not waited on for ever
            async with asyncio.timeout((timeout or STDIN_WAIT) + ANSWER_GRACE):
                reply = await self._upload(Op.WRITE_STDIN, body(), id=process_id, eof=eof, timeout=timeout)
        except TimeoutError:
            raise AgentFailure("the sandbox agent did not answer a stdin write in time") from None
        written = reply.get("written") if isinstance(reply, dict) else None
        if type(written) is not int or not 0 <= written <= len(data):
            raise AgentFailure(f"the sandbox agent answered a stdin write with a bad count: {written!r:.40}")
        return parse(ProcessInfo, reply), written

    async def wait_entrypoint(self) -> ExitInfo:
        """Returns once the sandbox's entrypoint has ended and its output is in the log; raises
        AgentFailure if the agent goes away first (the sandbox died)."""
        conn, _ = await self._open(Op.WAIT_ENTRYPOINT)
        try:
            return parse(ExitInfo, await conn.reply())
        finally:
            await conn.close()

    # -- files (paths are resolved inside the sandbox, by its agent) -----------------------------

    async def stat(self, path: str) -> FileInfo:
        return await self._call(Op.STAT, lambda r: parse(FileInfo, r), path=path)

    async def list_dir(self, path: str, limit: int, after: str | None = None) -> list[FileInfo]:
        """Entries sorted by name, at most limit, those after the name given."""
        return await self._call(
            Op.LIST_DIR, lambda r: parse_list(FileInfo, r, limit), path=path, limit=limit, after=after
        )

    async def read(self, path: str) -> tuple[int | None, AsyncIterator[bytes]]:
        """The file's size (None where it says nothing, as in /proc) and its content; errors
        surface here, before the first byte."""
        conn, reply = await self._open(Op.READ, path=path)
        size = reply.get("size") if isinstance(reply, dict) else None
        if size is not None and (type(size) is not int or size < 0):
            await conn.close()
            raise AgentFailure("the sandbox agent sent a malformed size")
        if size is None:
            return None, _chunks(conn, self._release)
        return size, _batched(conn, size, self._release)

    async def write(self, path: str, chunks: AsyncIterator[bytes], mode: int = 0o644, parents: bool = True) -> FileInfo:
        return parse(FileInfo, await self._upload(Op.WRITE, chunks, path=path, mode=mode, parents=parents))

    async def mkdir(self, path: str, mode: int = 0o755) -> FileInfo:
        """Makes the directory and its parents; an existing directory is fine."""
        return await self._call(Op.MKDIR, lambda r: parse(FileInfo, r), path=path, mode=mode)

    async def remove(self, path: str, recursive: bool = False) -> None:
        await self._call(Op.REMOVE, lambda r: None, path=path, recursive=recursive)

    async def move(self, source: str, destination: str) -> FileInfo:
        return await self._call(Op.MOVE, lambda r: parse(FileInfo, r), source=source, destination=destination)

    async def tar_get(self, path: str) -> AsyncIterator[bytes]:
        """path (a directory or a file) as an uncompressed tar stream."""
        conn, _ = await self._open(Op.TAR_GET, path=path)
        return _chunks(conn, self._release)

    async def tar_put(self, path: str, chunks: AsyncIterator[bytes]) -> FileInfo:
        """Unpacks a tar stream into the directory path; the agent refuses absolute names, '..'
        and links out."""
        return parse(FileInfo, await self._upload(Op.TAR_PUT, chunks, path=path))


async def _chunks(conn: AgentConnection, release: Release) -> AsyncIterator[bytes]:
    clean = False
    try:
        async for chunk in conn.data():
            yield chunk
        clean = True
    finally:
        await release(conn, clean)  # a reader that stopped early leaves frames unread: closed


async def _batched(conn: AgentConnection, size: int, release: Release) -> AsyncIterator[bytes]:
    """A file of known size in pieces of up to READ_BATCH: the agent's 64 KiB frames passed on one
    by one cost a trip through the ASGI stack and a socket write each. The agent sends a regular
    file as the size it announced; more is its failure (less: the file shrank meanwhile)."""
    pending: list[bytes] = []
    held = sent = 0
    clean = False
    try:
        async for chunk in conn.data():
            held += len(chunk)
            if sent + held > size:
                raise AgentFailure("the sandbox agent sent more of a file than its size")
            pending.append(chunk)
            if held >= READ_BATCH:
                yield b"".join(pending)
                pending.clear()
                sent, held = sent + held, 0
        clean = True
        if pending:
            yield b"".join(pending)
    finally:
        await release(conn, clean)
