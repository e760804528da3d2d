from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


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
    started_at: datetime
    ended_at: datetime | None
    duration_ms: float
    output_size: int

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ProcessInfo:
        """The server's JSON (times in RFC 3339); fields a newer server adds are ignored."""
        ended = body.get("ended_at")
        return cls(
            id=body["id"],
            pid=body["pid"],
            running=body["running"],
            exit_code=body["exit_code"],
            signal=body["signal"],
            timed_out=body["timed_out"],
            started_at=datetime.fromisoformat(body["started_at"]),
            ended_at=datetime.fromisoformat(ended) if ended else None,
            duration_ms=body["duration_ms"],
            output_size=body["output_size"],
        )
