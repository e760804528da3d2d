"""Response bodies of the native API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from sandboxd.domain import (
    CommandResult,
    ExitInfo,
    FileInfo,
    HibernateMemory,
    ProcessInfo,
    Sandbox,
    State,
    TerminalSession,
    TimeoutAction,
)

# The agent's values are the domain's, rendered as they are (times in RFC 3339).
__all__ = [
    "CommandResult",
    "ExitInfo",
    "FileInfo",
    "Hibernation",
    "MoveIn",
    "PathIn",
    "ProcessInfo",
    "ProcessLogs",
    "Removed",
    "RenewTimeout",
    "SandboxList",
    "SandboxOut",
    "SandboxStatus",
    "SignalIn",
    "StdinIn",
    "StdinOut",
    "TerminalSession",
]


class SandboxStatus(BaseModel):
    state: State
    reason: str
    message: str
    changed_at: datetime


class Hibernation(BaseModel):
    memory_kept: bool = Field(
        description="Whether its processes' memory was saved (they go on at resume) or only its disk "
        "(resume boots it again: processes from before are gone)."
    )
    at: datetime


class WarmPoolCheckout(BaseModel):
    hit: bool = Field(description="A ready sandbox was taken from the pool.")
    id: str | None = Field(description="The pool that fitted; null when none did.")


class SandboxOut(BaseModel):
    id: str
    name: str | None = Field(None, description="Its name, usable wherever its id is (until it ends).")
    status: SandboxStatus
    image: str
    entrypoint: list[str] | None
    env: dict[str, str]
    cwd: str | None = Field(description="Working directory; the image's until the sandbox has started.")
    user: str | None = Field(description="Default user of commands and the entrypoint; root if none.")
    template: str | None = Field(description="name:version of the template it was started from.")
    metadata: dict[str, str]
    cpu: float
    memory_mb: int
    pids: int
    disk_mb: int | None = Field(description="What it may write, in MB; null for sandboxes from before disk limits.")
    timeout: int
    timeout_action: TimeoutAction = Field(
        description="What happens when the timeout passes: destroy, pause, stop or hibernate."
    )
    auto_resume: bool = Field(description="Requests to it while paused, stopped or hibernated resume it first.")
    internet_access: bool
    egress: dict[str, Any] | None = Field(description="The egress policy; null: allow all.")
    transforms: list[dict[str, Any]] = Field(description="Credential brokering; injected values are not shown.")
    ports: list[int]
    public_traffic: bool
    traffic_token: str | None = Field(
        description="Send as X-Sandbox-Token (or ?sbx_token=) to reach its ports. Shown to keys that may "
        "write only: it admits every method, a read key's own requests through the proxy only GET."
    )
    created_at: datetime
    expires_at: datetime | None
    volumes: list[dict[str, Any]] = Field(
        default_factory=list, description="Its volume mounts: {type, host_path|name, mount_path, read_only}."
    )
    hibernation: Hibernation | None = Field(None, description="While hibernated: what was kept, since when.")
    persistent: bool = Field(False, description="Its files are kept as its name's snapshot when it ends.")
    resumed_from: str | None = Field(
        None, description="The snapshot of its name it resumed from (persistent); null: it started fresh."
    )
    warm_pool_checkout: WarmPoolCheckout | None = Field(
        None, description="In a create's answer: whether a warm pool gave the sandbox (hit) and which pool."
    )

    @classmethod
    def of(cls, sb: Sandbox, show_token: bool = True) -> SandboxOut:
        spec = sb.spec
        return cls(
            id=sb.id,
            name=sb.name,
            status=SandboxStatus(**sb.status.model_dump()),
            image=spec.image,
            entrypoint=spec.entrypoint,
            env=spec.env,
            cwd=spec.cwd,
            user=spec.user,
            template=spec.template,
            metadata=spec.metadata,
            cpu=spec.limits.cpu,
            memory_mb=spec.limits.memory_mb,
            pids=spec.limits.pids,
            disk_mb=spec.limits.disk_mb,
            timeout=spec.timeout,
            timeout_action=spec.timeout_action,
            auto_resume=spec.auto_resume,
            internet_access=spec.internet_access,
            egress=spec.egress,
            transforms=[
                {**t, "inject_headers": dict.fromkeys(t.get("inject_headers", {}), "***")} for t in spec.transforms
            ],
            ports=spec.ports,
            public_traffic=spec.public_traffic,
            traffic_token=sb.traffic_token if show_token else None,
            created_at=sb.created_at,
            expires_at=sb.expires_at,
            volumes=[{k: v for k, v in m.items() if k != "volume_id"} for m in spec.volumes],
            persistent=spec.persistent,
            resumed_from=spec.resumed_from,
            hibernation=Hibernation(memory_kept=bool(sb.status.memory_kept), at=sb.status.changed_at)
            if sb.status.state == State.HIBERNATED
            else None,
        )


class SandboxList(BaseModel):
    items: list[SandboxOut]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page.")


class HibernateRequest(BaseModel):
    memory: HibernateMemory = Field(
        HibernateMemory.AUTO,
        description="auto: its memory is saved where this server can checkpoint (GET /api/v1/capabilities), else "
        "disk only; require: saved, or a 409 (CHECKPOINT_FAILED) saying why and the sandbox runs on; never: disk only.",
    )


class RenewTimeout(BaseModel):
    timeout: int = Field(ge=1, description="Seconds from now until the sandbox is destroyed.")


class ProcessLogs(BaseModel):
    stdout: str
    stderr: str
    next_offset: int
    dropped: int = Field(
        0,
        description="Bytes between `offset` and `next_offset` that are missing from stdout and stderr: "
        "they were no longer kept (only the newest 16 MiB of a process's output is).",
    )
    process: ProcessInfo = Field(description="The process's status when the read ended.")


MAX_STDIN = 7 * 1024 * 1024  # bytes one stdin write may carry: in base64, under the 10 MiB JSON body limit


class StdinIn(BaseModel):
    data: str = Field("", max_length=MAX_STDIN, description="Text to write (sent as UTF-8).")
    data_base64: str | None = Field(
        None,
        max_length=(MAX_STDIN + 2) // 3 * 4,
        description="Bytes to write, base64-encoded: any bytes (NUL, not UTF-8). Instead of `data`.",
    )
    eof: bool = Field(False, description="Close stdin after the data (once all of it was written).")
    timeout: float | None = Field(
        None,
        gt=0,
        le=600,
        description="Seconds the process has to read the data (default 10); what it has not read by "
        "then is not written, and `written` says how much was.",
    )


class StdinOut(ProcessInfo):
    written: int = Field(description="Bytes of the data written to the process's stdin.")


class SignalIn(BaseModel):
    signal: str | int = "SIGTERM"


class Removed(BaseModel):
    removed: str = Field(description="The path removed.")


class PathIn(BaseModel):
    path: str
    mode: int = Field(0o755, ge=0, le=0o7777)


class MoveIn(BaseModel):
    source: str
    destination: str
