"""Commands in a sandbox: run to completion, stream, or leave running in the background.

The agent inside the sandbox owns every process, so background processes and their output survive
a restart of the server.
"""

from __future__ import annotations

import contextlib
import json
import signal as signals
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sandboxd.domain import Sandbox
from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes import agent_client as proto
from sandboxd.runtimes.agent_client import AgentConnection
from sandboxd.services.requests import RunCommand
from sandboxd.services.sandboxes import SandboxService


@dataclass
class Output:
    """One piece of a process's output: the stream it came from and where it ends in the log."""

    stream: str  # "stdout" | "stderr"
    data: bytes
    offset: int


@dataclass
class Gap:
    """Output between start and end (byte offsets) that is no longer kept: the reader fell behind
    the bounded buffer of the process's output. The next Output continues at end."""

    start: int
    end: int

    @property
    def dropped(self) -> int:
        return self.end - self.start


@dataclass
class CommandResult:
    stdout: str
    stderr: str
    exit_code: int
    duration_ms: float
    timed_out: bool
    signal: int | None
    oom_killed: bool
    process_id: str
    truncated: bool = False


@dataclass
class Exit:
    info: dict[str, Any] = field(default_factory=dict)


STREAMS = {proto.STDOUT: "stdout", proto.STDERR: "stderr"}
MAX_SYNC_OUTPUT = 8 * 1024 * 1024  # bytes per stream in a synchronous result


class CommandService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.sandboxes = sandboxes

    @staticmethod
    def _spawn_args(sandbox: Sandbox, cmd: RunCommand, **extra: Any) -> dict[str, Any]:
        return {
            "argv": cmd.argv(),
            "env": {**sandbox.spec.env, **cmd.env},
            "home_set": "HOME" in cmd.env,  # else a user's own home replaces the sandbox's
            "cwd": cmd.cwd or sandbox.spec.cwd,
            "user": cmd.user or sandbox.spec.user,
            "timeout": cmd.timeout,
            # Background processes keep a stdin pipe for later writes; others read /dev/null.
            "stdin": cmd.stdin is not None or cmd.background,
            **extra,
        }

    async def stream(self, sandbox_id: str, cmd: RunCommand) -> AsyncIterator[Output | Gap | Exit]:
        """Starts a command (errors raise here, before any output) and returns its output as it
        comes, then its exit."""
        sandbox, agent = self.sandboxes.agent(sandbox_id)
        oom_before = await self.sandboxes.oom_kills(sandbox_id)
        conn, _ = await agent.open("spawn", **self._spawn_args(sandbox, cmd, attach=True))
        try:
            if cmd.stdin is not None:
                await conn.send(proto.STDIN, cmd.stdin.encode())
                await conn.send(proto.EOF)
        except BaseException:
            await conn.close()
            raise
        return self._frames(conn, 0, lambda info: self._mark_oom(sandbox_id, oom_before, info))

    async def _mark_oom(self, sandbox_id: str, before: int, info: dict[str, Any]) -> None:
        # A shell reports its child's SIGKILL as exit 137 rather than dying of it.
        killed = info.get("signal") == signals.SIGKILL or info.get("exit_code") == 137
        oom = killed and await self.sandboxes.oom_kills(sandbox_id) > before
        info["oom_killed"] = oom and not info.get("timed_out")

    async def run(self, sandbox_id: str, cmd: RunCommand) -> CommandResult:
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        kept = {"stdout": 0, "stderr": 0}
        truncated = False
        info: dict[str, Any] = {}
        async for item in await self.stream(sandbox_id, cmd):
            if isinstance(item, Gap):
                truncated = True  # output in the middle is gone, whatever the cap
            elif isinstance(item, Output):
                # The server holds a synchronous result in memory: keep the head of each stream and
                # leave the rest to the process log (offsets), which streams instead.
                room = max(MAX_SYNC_OUTPUT - kept[item.stream], 0)
                truncated = truncated or len(item.data) > room
                out[item.stream].append(item.data[:room])
                kept[item.stream] += min(len(item.data), room)
            else:
                info = item.info
        return CommandResult(
            stdout=b"".join(out["stdout"]).decode(errors="replace"),
            stderr=b"".join(out["stderr"]).decode(errors="replace"),
            exit_code=info["exit_code"],
            duration_ms=info["duration_ms"],
            timed_out=info["timed_out"],
            signal=info["signal"],
            oom_killed=info["oom_killed"],
            process_id=info["id"],
            truncated=truncated,
        )

    async def start(self, sandbox_id: str, cmd: RunCommand) -> dict[str, Any]:
        """Starts a background process; returns its status with the id to address it by."""
        sandbox, agent = self.sandboxes.agent(sandbox_id)
        info = await agent.call("spawn", **self._spawn_args(sandbox, cmd))
        if cmd.stdin is not None:
            try:
                await agent.call("stdin", id=info["id"], data=cmd.stdin, eof=True)
            except BaseException:
                await agent.call("signal", id=info["id"], signal=signals.SIGKILL)
                raise
        return dict(info)

    async def list(self, sandbox_id: str) -> list[dict[str, Any]]:
        _, agent = self.sandboxes.agent(sandbox_id)
        return list(await agent.call("list"))

    async def status(self, sandbox_id: str, process_id: str) -> dict[str, Any]:
        _, agent = self.sandboxes.agent(sandbox_id)
        return dict(await agent.call("status", id=process_id))

    async def signal(self, sandbox_id: str, process_id: str, signal: int) -> dict[str, Any]:
        _, agent = self.sandboxes.agent(sandbox_id)
        return dict(await agent.call("signal", id=process_id, signal=signal))

    async def write_stdin(self, sandbox_id: str, process_id: str, data: str, eof: bool) -> dict[str, Any]:
        _, agent = self.sandboxes.agent(sandbox_id)
        return dict(await agent.call("stdin", id=process_id, data=data, eof=eof))

    async def logs(
        self, sandbox_id: str, process_id: str, offset: int, follow: bool
    ) -> AsyncIterator[Output | Gap | Exit]:
        """Output from offset on (after a Gap up to the oldest kept, if that was dropped); with
        follow, until the process ends. An unknown process raises here, before any output."""
        _, agent = self.sandboxes.agent(sandbox_id)
        conn, first = await agent.open("attach", id=process_id, offset=offset, follow=follow)
        start = first.get("offset") if isinstance(first, dict) else None
        if type(start) is not int or start < offset:
            await conn.close()
            raise RuntimeFailure(f"the sandbox agent answered an attach with a bad offset: {start!r:.40}")
        return self._frames(conn, offset, None, start)

    async def terminal(self, sandbox_id: str, cmd: RunCommand, rows: int, cols: int) -> Terminal:
        """Starts a process on a PTY."""
        sandbox, agent = self.sandboxes.agent(sandbox_id)
        args = self._spawn_args(sandbox, cmd, attach=True, pty=True, rows=rows, cols=cols)
        args["env"].setdefault("TERM", "xterm-256color")
        conn, _ = await agent.open("spawn", **args)
        return Terminal(conn)

    @staticmethod
    async def _frames(
        conn: AgentConnection,
        offset: int,
        on_exit: Callable[[dict[str, Any]], Awaitable[None]] | None,
        start: int | None = None,
    ) -> AsyncIterator[Output | Gap | Exit]:
        """The agent's frames as output (each with the offset it ends at), gaps and the exit.
        offset is where the reader asked to start; start, where the agent said its output starts."""
        try:
            if start is not None and start > offset:
                yield Gap(offset, start)
                offset = start
            while True:
                kind, payload = await conn.recv()
                if kind in STREAMS:
                    offset += len(payload)
                    yield Output(STREAMS[kind], payload, offset)
                elif kind == proto.GAP:
                    gap = _gap(payload, offset)
                    offset = gap.end
                    yield gap
                elif kind == proto.EXIT:
                    info = proto.agent_json(payload)
                    if on_exit is not None:
                        await on_exit(info)
                    yield Exit(info)
                    return
                elif kind == proto.ERROR:
                    proto.raise_agent_error(payload, conn.op)
        finally:
            await conn.close()


def _gap(payload: bytes, offset: int) -> Gap:
    """A GAP frame, checked: the agent is the sandbox's, and what it says must at least hold
    together (from the reader's position, forwards)."""
    try:
        body = json.loads(payload)
        start, end = body["from"], body["to"]
    except (ValueError, TypeError, KeyError):
        raise RuntimeFailure("the sandbox agent sent a malformed gap frame") from None
    if not (type(start) is int and type(end) is int and start == offset < end):
        raise RuntimeFailure(f"the sandbox agent sent a gap that does not follow offset {offset}")
    return Gap(start, end)


class Terminal:
    """A process on a PTY: write keystrokes, resize, signal, read output until its exit."""

    def __init__(self, conn: AgentConnection) -> None:
        self._conn = conn
        self._offset = 0
        self.exit: dict[str, Any] | None = None

    async def write(self, data: bytes) -> None:
        await self._conn.send(proto.STDIN, data)

    async def resize(self, rows: int, cols: int) -> None:
        await self._conn.send(proto.RESIZE, json.dumps({"rows": rows, "cols": cols}).encode())

    async def signal(self, number: int) -> None:
        await self._conn.send(proto.SIGNAL, json.dumps({"signal": number}).encode())

    async def read(self) -> bytes | None:
        """The next output, or None once the process has exited (its status is in .exit)."""
        while True:
            kind, payload = await self._conn.recv()
            if kind == proto.STDOUT:
                self._offset += len(payload)
                return payload
            if kind == proto.GAP:  # the screen would be wrong without a word: say what is missing
                gap = _gap(payload, self._offset)
                self._offset = gap.end
                return f"\r\n[sandboxd: {gap.dropped} bytes of output dropped here]\r\n".encode()
            if kind == proto.EXIT:
                self.exit = proto.agent_json(payload)
                return None
            if kind == proto.ERROR:
                proto.raise_agent_error(payload, self._conn.op)

    async def close(self) -> None:
        if self.exit is None:
            # The client left first: hang up as a closed terminal would.
            with contextlib.suppress(Exception):
                await self.signal(signals.SIGHUP)
        await self._conn.close()
