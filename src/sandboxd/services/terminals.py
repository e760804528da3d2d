"""Terminal sessions: a shell on a PTY that outlives a dropped WebSocket.

The sandbox's agent owns the process and keeps its recent output (per process, bounded), so a
session here is only bookkeeping: which process, whose, whether a client holds it, and when it
ends without one. Reattaching reads the agent's output from terminal_scrollback_kb before its
end (the scrollback), then follows it live. One client at a time: a new attach takes the session
over and the client it replaces is told so. A session with no client for terminal_grace_seconds
is killed (its process tree, SIGKILL); a sandbox that stops or ends takes its sessions with it.

Sessions live in this server's memory: after a server restart they are gone (their shells run
on until the sandbox ends, as a terminal did before sessions)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal as signals
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sandboxd.config import Settings
from sandboxd.domain import State, TerminalSession, new_id, utcnow
from sandboxd.errors import Conflict, SandboxdError
from sandboxd.services.commands import CommandService, Terminal
from sandboxd.services.lifecycle import SandboxService
from sandboxd.services.requests import RunCommand

__all__ = ["Attachment", "Session", "TerminalNotFound", "TerminalService"]

log = logging.getLogger("sandboxd")


class TerminalNotFound(SandboxdError):
    """No such session in this sandbox for this project (another project's reads the same)."""

    code = "TERMINAL_NOT_FOUND"
    status = 404

    def __init__(self, session_id: str) -> None:
        super().__init__(f"terminal session {session_id} not found (it ended, or its grace period ran out)", "session")


class Attachment:
    """One client's hold on a session. ended is set when the client must let go: another client
    took the session over, or the session was ended (killed, expired, its sandbox gone)."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.reason = ""

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()


@dataclass(eq=False)
class Session:
    id: str
    sandbox_id: str
    project_id: str
    process_id: str
    created_at: datetime = field(default_factory=utcnow)
    attachment: Attachment | None = None
    detached_at: datetime | None = None
    expires_at: datetime | None = None
    reaper: asyncio.Task[None] | None = None

    def info(self) -> TerminalSession:
        return TerminalSession(
            id=self.id,
            sandbox_id=self.sandbox_id,
            process_id=self.process_id,
            created_at=self.created_at,
            attached=self.attachment is not None,
            detached_at=self.detached_at,
            expires_at=self.expires_at,
        )


class TerminalService:
    def __init__(self, settings: Settings, sandboxes: SandboxService, commands: CommandService) -> None:
        self.grace = settings.terminal_grace_seconds
        self.scrollback = settings.terminal_scrollback_kb * 1024
        self.limit = settings.terminal_max_sessions
        self.sandboxes = sandboxes
        self.commands = commands
        self._sessions: dict[str, Session] = {}
        self._opening: dict[str, int] = {}  # sandbox id -> opens in flight, counted against the limit
        self._tasks: set[asyncio.Task[None]] = set()
        sandboxes.on_transition.append(self._on_transition)

    def _of(self, sandbox_id: str) -> list[Session]:
        return [s for s in self._sessions.values() if s.sandbox_id == sandbox_id]

    def _get(self, project_id: str, sandbox_id: str, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None or session.sandbox_id != sandbox_id or session.project_id != project_id:
            raise TerminalNotFound(session_id)
        return session

    async def open(
        self, project_id: str, sandbox_id: str, cmd: RunCommand, rows: int, cols: int
    ) -> tuple[Session, Attachment, Terminal]:
        """Starts a program on a PTY as a new session, attached to the caller."""
        await self.sandboxes.get(project_id, sandbox_id)  # another project's sandbox: 404 before the count
        if len(self._of(sandbox_id)) + self._opening.get(sandbox_id, 0) >= self.limit:
            raise Conflict(
                f"sandbox {sandbox_id} has {self.limit} terminal sessions, its limit: end one first "
                "(DELETE .../terminals/{session_id})",
                "session",
            )
        self._opening[sandbox_id] = self._opening.get(sandbox_id, 0) + 1
        try:
            term = await self.commands.terminal(project_id, sandbox_id, cmd, rows, cols)
        finally:
            self._opening[sandbox_id] -= 1
            if not self._opening[sandbox_id]:
                del self._opening[sandbox_id]
        assert term.process_id is not None  # a spawned stream always names its process
        attachment = Attachment()
        session = Session(new_id("term_"), sandbox_id, project_id, term.process_id, attachment=attachment)
        self._sessions[session.id] = session
        return session, attachment, term

    async def attach(
        self, project_id: str, sandbox_id: str, session_id: str, rows: int | None, cols: int | None
    ) -> tuple[Session, Attachment, Terminal]:
        """Attaches the caller to a session: its scrollback first, then live output. A client
        already attached is told it was taken over and let go."""
        session = self._get(project_id, sandbox_id, session_id)
        status = await self.commands.status(project_id, sandbox_id, session.process_id)
        offset = max(status.output_size - self.scrollback, 0)
        stream = await self.commands.attach_terminal(project_id, sandbox_id, session.process_id, offset)
        term = Terminal(stream)
        if self._sessions.get(session_id) is not session:  # ended while the agent answered
            await term.detach()
            raise TerminalNotFound(session_id)
        previous, attachment = session.attachment, Attachment()
        session.attachment, session.detached_at, session.expires_at = attachment, None, None
        if session.reaper is not None:
            session.reaper.cancel()
            session.reaper = None
        if previous is not None:
            previous.end("another client attached to this terminal session")
        if rows is not None and cols is not None:
            with contextlib.suppress(SandboxdError):
                await term.resize(rows, cols)
        return session, attachment, term

    async def release(self, session: Session, attachment: Attachment, exited: bool, hang_up: bool = False) -> None:
        """The client of attachment let go: the session ends if its process did, or is hung up
        (SIGHUP, as a closed terminal window does) if the client closed it; else it waits the
        grace period for a client. A client that was taken over changes nothing."""
        if session.attachment is not attachment:
            return
        session.attachment = None
        if exited or hang_up:
            if self._sessions.pop(session.id, None) is not None and hang_up:
                with contextlib.suppress(SandboxdError):
                    pid = session.process_id
                    await self.commands.signal(session.project_id, session.sandbox_id, pid, signals.SIGHUP)
            return
        if self._sessions.get(session.id) is not session:
            return
        session.detached_at = utcnow()
        session.expires_at = session.detached_at + timedelta(seconds=self.grace)
        session.reaper = self._spawn(self._expire(session))

    async def end(self, project_id: str, sandbox_id: str, session_id: str) -> TerminalSession:
        """Ends a session now: its process tree is killed, an attached client told."""
        session = self._get(project_id, sandbox_id, session_id)
        info = session.info()
        await self._end(session, "the terminal session was ended")
        return info

    def list(self, project_id: str, sandbox_id: str) -> list[TerminalSession]:
        return [s.info() for s in self._of(sandbox_id) if s.project_id == project_id]

    async def _expire(self, session: Session) -> None:
        await asyncio.sleep(self.grace)
        while session.attachment is None and self._sessions.get(session.id) is session:
            try:
                state = (await self.sandboxes.get(session.project_id, session.sandbox_id)).status.state
            except SandboxdError:
                state = State.TERMINATED
            if state != State.PAUSED:  # a paused sandbox is not resumed to kill: checked again later
                session.reaper = None
                await self._end(session, "the terminal session's grace period ran out")
                return
            await asyncio.sleep(self.grace)

    async def _end(self, session: Session, reason: str) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        self._drop(session, reason)
        with contextlib.suppress(SandboxdError):  # a sandbox gone or stopped took the process with it
            await self.commands.signal(session.project_id, session.sandbox_id, session.process_id, signals.SIGKILL)
        log.info("terminal session %s ended: %s", session.id, reason, extra={"sandbox_id": session.sandbox_id})

    def _drop(self, session: Session, reason: str) -> None:
        if session.reaper is not None and session.reaper is not asyncio.current_task():
            session.reaper.cancel()
        session.reaper = None
        if session.attachment is not None:
            session.attachment.end(reason)

    def _on_transition(self, sandbox_id: str, state: State) -> None:
        """A sandbox that is no longer running or paused has no processes: its sessions go."""
        if state in (State.RUNNING, State.PAUSED):
            return
        for session in self._of(sandbox_id):
            del self._sessions[session.id]
            self._drop(session, f"the sandbox is {state.value}")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self) -> None:
        for session in list(self._sessions.values()):
            self._drop(session, "the server is shutting down")
        self._sessions.clear()
        tasks, self._tasks = set(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
