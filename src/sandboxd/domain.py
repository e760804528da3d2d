"""The core's vocabulary: what a sandbox is asked to be, and what it is. Shared by every layer."""

from __future__ import annotations

import enum
import os
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str = "sbx_") -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, so ids sort by creation time."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return prefix + "".join(reversed(chars)).lower()


def utcnow() -> datetime:
    return datetime.now(UTC)


class State(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    TERMINATED = "terminated"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self in (State.TERMINATED, State.FAILED)


# Allowed transitions; later lifecycle states (paused, hibernated) slot in here.
TRANSITIONS: dict[State, set[State]] = {
    State.PENDING: {State.RUNNING, State.STOPPING, State.FAILED},
    State.RUNNING: {State.STOPPING, State.FAILED, State.TERMINATED},
    State.STOPPING: {State.TERMINATED, State.FAILED},
    State.TERMINATED: set(),
    State.FAILED: set(),
}


class Limits(BaseModel):
    cpu: float
    memory_mb: int
    pids: int


class SandboxSpec(BaseModel):
    """A create request after defaults and validation: what the runtime is asked to build."""

    image: str
    entrypoint: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str = "/"
    metadata: dict[str, str] = Field(default_factory=dict)
    limits: Limits
    timeout: int
    internet_access: bool = True
    source: dict[str, Any] | None = None  # a services.sources.Source, as given


class Status(BaseModel):
    state: State
    reason: str
    message: str = ""
    changed_at: datetime


class Sandbox(BaseModel):
    id: str
    spec: SandboxSpec
    status: Status
    created_at: datetime
    expires_at: datetime | None
    runtime: dict[str, object] = Field(default_factory=dict)  # the runtime handle's record
