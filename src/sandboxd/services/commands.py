"""Commands in a sandbox: run to completion, stream, or leave running in the background.

The agent inside the sandbox owns every process, so background processes and their output survive
a restart of the server.
"""

from __future__ import annotations

import contextlib
import signal as signals
from collections.abc import AsyncIterator

from sandboxd.agent import AgentFailure, AgentPort, ProcessStream, Spawn
from sandboxd.domain import CommandResult, ExitInfo, Gap, Output, ProcessInfo, Sandbox
from sandboxd.errors import QuotaExceeded
from sandboxd.services.lifecycle import SandboxService
from sandboxd.services.requests import RunCommand

__all__ = ["CommandService", "Gap", "Output", "Terminal"]

MAX_SYNC_OUTPUT = 8 * 1024 * 1024  # bytes per stream in a synchronous result
MAX_WAITS = 16  # long-poll process waits held open at once per sandbox (each holds an agent connection)


class CommandService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.sandboxes = sandboxes
        self._waits: dict[str, int] = {}  # sandbox id -> its waits under way

    async def _agent(self, project_id: str | None, sandbox_id: str) -> tuple[Sandbox, AgentPort]:
        return await self.sandboxes.agent(project_id, sandbox_id)

    @staticmethod
    def _spawn(sandbox: Sandbox, cmd: RunCommand, **defaults: str) -> Spawn:
        return Spawn(
            argv=cmd.argv(),
            env={**defaults, **sandbox.spec.env, **cmd.env},
            home_set="HOME" in cmd.env,  # else a user's own home replaces the sandbox's
            cwd=cmd.cwd or sandbox.spec.cwd,
            user=cmd.user or sandbox.spec.user,
            timeout=cmd.timeout,
            # Background processes keep a stdin pipe for later writes; others read /dev/null.
            keep_stdin=cmd.stdin is not None or cmd.background,
        )

    async def stream(
        self, project_id: str | None, sandbox_id: str, cmd: RunCommand
    ) -> AsyncIterator[ProcessInfo | Output | Gap | ExitInfo]:
        """Starts a command (errors raise here, before any output) and returns the process started
        (its id and pid, before any output), its output as it comes, then its exit (an ExitInfo,
        itself a ProcessInfo: test for ExitInfo first)."""
        sandbox, agent = await self._agent(project_id, sandbox_id)
        oom_before = await self.sandboxes.oom_kills(sandbox)
        stdin = cmd.stdin.encode() if cmd.stdin is not None else None
        stream = await agent.run(self._spawn(sandbox, cmd), stdin)
        return self._marked(stream, sandbox, oom_before)

    async def _marked(
        self, stream: ProcessStream, sandbox: Sandbox, oom_before: int
    ) -> AsyncIterator[ProcessInfo | Output | Gap | ExitInfo]:
        if stream.process is not None:
            yield stream.process
        async for item in stream:
            if isinstance(item, ExitInfo):
                # A shell reports its child's SIGKILL as exit 137 rather than dying of it.
                killed = item.signal == signals.SIGKILL or item.exit_code == 137
                oom = killed and await self.sandboxes.oom_kills(sandbox) > oom_before
                item = item.model_copy(update={"oom_killed": oom and not item.timed_out})
            yield item

    async def run(self, project_id: str | None, sandbox_id: str, cmd: RunCommand) -> CommandResult:
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        kept = {"stdout": 0, "stderr": 0}
        truncated = False
        end: ExitInfo | None = None
        async for item in await self.stream(project_id, sandbox_id, cmd):
            if isinstance(item, Gap):
                truncated = True  # output in the middle is gone, whatever the cap
            elif isinstance(item, Output):
                # The server holds a synchronous result in memory: keep the head of each stream and
                # leave the rest to the process log (offsets), which streams instead.
                room = max(MAX_SYNC_OUTPUT - kept[item.stream], 0)
                truncated = truncated or len(item.data) > room
                out[item.stream].append(item.data[:room])
                kept[item.stream] += min(len(item.data), room)
            elif isinstance(item, ExitInfo):
                end = item
        if end is None or end.exit_code is None:  # a stream ends with the process's exit, or raises
            raise AgentFailure("the sandbox agent ended a command's output without its exit code")
        return CommandResult(
            stdout=b"".join(out["stdout"]).decode(errors="replace"),
            stderr=b"".join(out["stderr"]).decode(errors="replace"),
            exit_code=end.exit_code,
            duration_ms=end.duration_ms,
            timed_out=end.timed_out,
            signal=end.signal,
            oom_killed=end.oom_killed,
            process_id=end.id,
            truncated=truncated,
        )

    async def start(self, project_id: str | None, sandbox_id: str, cmd: RunCommand) -> ProcessInfo:
        """Starts a background process; returns its status with the id to address it by."""
        sandbox, agent = await self._agent(project_id, sandbox_id)
        info = await agent.spawn(self._spawn(sandbox, cmd))
        if cmd.stdin is not None:
            try:
                await agent.stdin(info.id, cmd.stdin, eof=True)
            except BaseException:
                await agent.signal(info.id, signals.SIGKILL)
                raise
        return info

    async def list(self, project_id: str | None, sandbox_id: str) -> list[ProcessInfo]:
        return await (await self._agent(project_id, sandbox_id))[1].processes()

    async def status(self, project_id: str | None, sandbox_id: str, process_id: str) -> ProcessInfo:
        return await (await self._agent(project_id, sandbox_id))[1].process(process_id)

    async def signal(self, project_id: str | None, sandbox_id: str, process_id: str, signal: int) -> ProcessInfo:
        return await (await self._agent(project_id, sandbox_id))[1].signal(process_id, signal)

    async def wait(self, project_id: str | None, sandbox_id: str, process_id: str, timeout: float) -> ProcessInfo:
        """The process once it has ended, or as it is after timeout seconds (still running). At
        most MAX_WAITS at once per sandbox (a 429 past that): each holds a connection to its agent."""
        sandbox, agent = await self._agent(project_id, sandbox_id)
        held = self._waits.get(sandbox.id, 0)
        if held >= MAX_WAITS:
            raise QuotaExceeded(f"sandbox {sandbox.id} has {held} process waits open, the most it may: retry later")
        self._waits[sandbox.id] = held + 1
        try:
            return await agent.wait(process_id, timeout)
        finally:
            if (left := self._waits[sandbox.id] - 1) > 0:
                self._waits[sandbox.id] = left
            else:
                del self._waits[sandbox.id]

    async def write_stdin(
        self, project_id: str | None, sandbox_id: str, process_id: str, data: bytes, eof: bool, timeout: float | None
    ) -> tuple[ProcessInfo, int]:
        """Writes bytes to a process's stdin; returns it and how many bytes it took in time."""
        agent = (await self._agent(project_id, sandbox_id))[1]
        return await agent.write_stdin(process_id, data, eof, timeout)

    async def logs(
        self, project_id: str | None, sandbox_id: str, process_id: str, offset: int, follow: bool
    ) -> AsyncIterator[Output | Gap | ExitInfo]:
        """Output from offset on (after a Gap up to the oldest kept, if that was dropped); with
        follow, until the process ends. An unknown process raises here, before any output."""
        stream = await (await self._agent(project_id, sandbox_id))[1].attach(process_id, offset, follow)
        return aiter(stream)

    async def terminal(
        self, project_id: str | None, sandbox_id: str, cmd: RunCommand, rows: int, cols: int
    ) -> Terminal:
        """Starts a process on a PTY."""
        sandbox, agent = await self._agent(project_id, sandbox_id)
        spawn = self._spawn(sandbox, cmd, TERM="xterm-256color")
        return Terminal(await agent.terminal(spawn, rows, cols))

    async def attach_terminal(
        self, project_id: str | None, sandbox_id: str, process_id: str, offset: int
    ) -> ProcessStream:
        """A terminal's process again: its output from offset on, then live, until it ends."""
        return await (await self._agent(project_id, sandbox_id))[1].attach(process_id, offset, follow=True)


class Terminal:
    """A process on a PTY: write keystrokes, resize, signal, read output until its exit."""

    def __init__(self, stream: ProcessStream) -> None:
        self._stream = stream
        self._items = aiter(stream)
        self.exit: ExitInfo | None = None
        # The agent's id of the process (a stream started by attach has none: its session knows it).
        self.process_id = stream.process.id if stream.process is not None else None

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)

    async def resize(self, rows: int, cols: int) -> None:
        await self._stream.resize(rows, cols)

    async def signal(self, number: int) -> None:
        await self._stream.signal(number)

    async def read(self) -> bytes | None:
        """The next output, or None once the process has exited (its status is in .exit)."""
        if self.exit is not None:
            return None
        item = await anext(self._items, None)
        if isinstance(item, Output):
            return item.data
        if isinstance(item, Gap):  # the screen would be wrong without a word: say what is missing
            return f"\r\n[sandboxd: {item.dropped} bytes of output dropped here]\r\n".encode()
        if item is None:
            raise AgentFailure("the sandbox agent ended a terminal without its exit")
        self.exit = item
        return None

    async def close(self) -> None:
        if self.exit is None:
            # The client left first: hang up as a closed terminal would.
            with contextlib.suppress(Exception):
                await self.signal(signals.SIGHUP)
        await self.detach()

    async def detach(self) -> None:
        """Stops reading; the process goes on (a terminal session may be attached again)."""
        await self._items.aclose()
        await self._stream.close()
