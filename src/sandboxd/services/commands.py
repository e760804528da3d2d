"""Commands in a sandbox: run to completion, stream, or leave running in the background.

The agent inside the sandbox owns every process, so background processes and their output survive
a restart of the server.
"""

from __future__ import annotations

import json
import signal as signals
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sandboxd.domain import Sandbox
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
            "cwd": cmd.cwd or sandbox.spec.cwd,
            "user": cmd.user,
            "timeout": cmd.timeout,
            # Background processes keep a stdin pipe for later writes; others read /dev/null.
            "stdin": cmd.stdin is not None or cmd.background,
            **extra,
        }

    async def stream(self, sandbox_id: str, cmd: RunCommand) -> AsyncIterator[Output | Exit]:
        """Starts a command and yields its output as it comes, then its exit."""
        sandbox, agent = self.sandboxes.agent(sandbox_id)
        oom_before = self.sandboxes.runtime.oom_kills(sandbox_id)
        conn, info = await agent.open("spawn", **self._spawn_args(sandbox, cmd, attach=True))
        try:
            if cmd.stdin is not None:
                await conn.send(proto.STDIN, cmd.stdin.encode())
                await conn.send(proto.EOF)
            async for item in self._frames(conn):
                if isinstance(item, Exit):
                    # A shell reports its child's SIGKILL as exit 137 rather than dying of it.
                    killed = item.info.get("signal") == signals.SIGKILL or item.info.get("exit_code") == 137
                    oom = killed and self.sandboxes.runtime.oom_kills(sandbox_id) > oom_before
                    item.info["oom_killed"] = oom and not item.info.get("timed_out")
                yield item
        finally:
            await conn.close()

    async def run(self, sandbox_id: str, cmd: RunCommand) -> CommandResult:
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        kept = {"stdout": 0, "stderr": 0}
        truncated = False
        info: dict[str, Any] = {}
        async for item in self.stream(sandbox_id, cmd):
            if isinstance(item, Output):
                # The server holds a synchronous result in memory: keep the head of each stream and
                # leave the rest to the process log (offsets), which stream instead.
                room = MAX_SYNC_OUTPUT - kept[item.stream]
                if len(item.data) > room:
                    truncated = True
                out[item.stream].append(item.data[: max(room, 0)])
                kept[item.stream] += min(len(item.data), max(room, 0))
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
            await agent.call("stdin", id=info["id"], data=cmd.stdin, eof=True)
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

    async def logs(self, sandbox_id: str, process_id: str, offset: int, follow: bool) -> AsyncIterator[Output | Exit]:
        """Output from offset on; with follow, until the process ends."""
        _, agent = self.sandboxes.agent(sandbox_id)
        conn, _ = await agent.open("status", id=process_id)  # 404 before any streaming starts
        await conn.close()
        conn = await agent.connect()
        try:
            await conn.request("attach", id=process_id, offset=offset, follow=follow)
            async for item in self._frames(conn, start=offset):
                yield item
        finally:
            await conn.close()

    async def terminal(self, sandbox_id: str, cmd: RunCommand, rows: int, cols: int) -> AgentConnection:
        """Starts a process on a PTY; the caller relays STDIN/RESIZE frames and reads output."""
        sandbox, agent = self.sandboxes.agent(sandbox_id)
        args = self._spawn_args(sandbox, cmd, attach=True, pty=True, rows=rows, cols=cols)
        args["env"].setdefault("TERM", "xterm-256color")
        conn, _ = await agent.open("spawn", **args)
        return conn

    @staticmethod
    async def _frames(conn: AgentConnection, start: int = 0) -> AsyncIterator[Output | Exit]:
        offset = start
        while True:
            kind, payload = await conn.recv()
            if kind in STREAMS:
                offset += len(payload)
                yield Output(STREAMS[kind], payload, offset)
            elif kind == proto.EXIT:
                yield Exit(json.loads(payload))
                return
            elif kind == proto.ERROR:
                proto.raise_agent_error(payload)
