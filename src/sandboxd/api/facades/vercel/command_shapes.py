"""Vercel's command object, and what the facade remembers of the commands it started.

A native process carries no argv, cwd or stdin position, and Vercel's command object needs the
first two (`name`, `args`, `cwd`) and its stdin calls the third (`bytesWritten`, offsets). The facade
keeps them in memory, per (session, command), bounded; a command it did not start, or started
before the server restarted, shows an empty `name`/`args` and `cwd` "" (its id, state and exit code
are the agent's and stay exact), and its stdin position is taken from the client's offset.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sandboxd.api.facades.translate import epoch_ms
from sandboxd.domain import ProcessInfo

MAX_PER_SESSION = 4096  # commands remembered per session; its oldest go first
MAX_SESSIONS = 10_000  # sessions remembered; the least recently used go first


class RunIn(BaseModel):
    """POST …/cmd. A field Vercel has and sandboxd cannot honour would be refused by name: none
    is left (extra="forbid" names any other)."""

    model_config = ConfigDict(extra="forbid")

    command: str = Field(min_length=1, max_length=4096)
    args: list[str] = Field(default_factory=list, max_length=10_000)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    sudo: bool = False
    timeout: int | None = Field(None, gt=0, description="ms; the command is killed after.")
    attach_stdin: bool = Field(False, alias="attachStdin")
    wait: bool = False
    logs: bool = False


class KillIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signal: int = Field(15, ge=1, le=64)


class StdinIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str | None = Field(None, description="base64")
    offset: int | None = Field(None, ge=0)
    close: bool = False


@dataclass
class Known:
    name: str
    args: list[str]
    cwd: str
    stdin: bool  # started with attachStdin: its stdin takes writes
    written: int | None = 0  # bytes its stdin took so far; None: unknown (not started by this server)
    closed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one stdin write at a time, in order


class Registry:
    """Bounded per session (a session's many commands push out only its own oldest) and in sessions
    (the least recently used go first), so that no project's commands evict another's."""

    def __init__(self, per_session: int = MAX_PER_SESSION, sessions: int = MAX_SESSIONS) -> None:
        self._sessions: OrderedDict[str, OrderedDict[str, Known]] = OrderedDict()
        self._per_session = per_session
        self._max_sessions = sessions

    def add(self, session_id: str, command_id: str, known: Known) -> None:
        commands = self._sessions.setdefault(session_id, OrderedDict())
        self._sessions.move_to_end(session_id)
        commands[command_id] = known
        while len(commands) > self._per_session:
            commands.popitem(last=False)
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)

    def get(self, session_id: str, command_id: str) -> Known | None:
        commands = self._sessions.get(session_id)
        return None if commands is None else commands.get(command_id)

    def obtain(self, session_id: str, command_id: str) -> Known:
        """What is known of a command (the caller has checked that it exists), or a record for one
        this server did not start: its stdin taken as open, at a position only the client knows."""
        found = self.get(session_id, command_id)
        if found is None:
            found = Known("", [], "", stdin=True, written=None)
            self.add(session_id, command_id, found)
        return found


def ended_code(info: ProcessInfo) -> int:
    """An ended process's code; one a signal ended has none of its own: 128 + the signal, as a
    shell reports it (the SDK needs an integer once the command has ended)."""
    if info.exit_code is not None:
        return info.exit_code
    return 128 + (info.signal or 0)


def exit_code(info: ProcessInfo) -> int | None:
    """None while it runs, else its ended_code."""
    return None if info.running else ended_code(info)


def command(session_id: str, info: ProcessInfo, known: Known | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": info.id,
        "name": known.name if known else "",
        "args": list(known.args) if known else [],
        "cwd": known.cwd if known else "",
        "sessionId": session_id,
        "exitCode": exit_code(info),
        "startedAt": epoch_ms(info.started_at),
    }
    if not info.running:
        body["durationMs"] = round(info.duration_ms)
    return body
