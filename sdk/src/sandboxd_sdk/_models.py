from __future__ import annotations

from dataclasses import dataclass


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
class ProcessInfo:
    id: str
    pid: int
    running: bool
    exit_code: int | None
    signal: int | None
    timed_out: bool
    started_at: float
    ended_at: float | None
    duration_ms: float
    output_size: int
