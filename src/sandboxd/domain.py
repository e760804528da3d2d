"""The core's vocabulary: what a sandbox is asked to be, and what it is. Shared by every layer."""

from __future__ import annotations

import enum
import hashlib
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

# The tenant every record made before organizations existed belongs to, and the one a single-key
# server keeps using: its key is this organization's admin key.
DEFAULT_ORG = "org_default"
DEFAULT_PROJECT = "prj_default"
DEFAULT_PROJECT_NAME = "default"  # every organization has a project of this name
# Where templates the operator defines (shipped or configured definitions, runtimes) are built:
# every project uses them, none owns them.
SHARED_PROJECT = "prj_shared"


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
    PAUSED = "paused"  # every process frozen (cgroup freezer), memory kept; resume thaws it
    STOPPING = "stopping"
    STOPPED = "stopped"  # no processes, no network; its writable layer kept for a start
    # No processes held, only disk (and, where the host can checkpoint, the processes' memory
    # saved on it: Status.memory_kept says which); resume boots (or restores) it.
    HIBERNATED = "hibernated"
    TERMINATED = "terminated"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self in (State.TERMINATED, State.FAILED)


# Allowed transitions; later lifecycle states (paused, hibernated) slot in here.
TRANSITIONS: dict[State, set[State]] = {
    State.PENDING: {State.RUNNING, State.STOPPING, State.FAILED},
    State.RUNNING: {State.STOPPING, State.FAILED, State.TERMINATED, State.STOPPED, State.PAUSED, State.HIBERNATED},
    # A start that fails leaves it stopped (its files kept); running again only once booted.
    State.STOPPED: {State.RUNNING, State.STOPPING, State.FAILED},
    State.PAUSED: {State.RUNNING, State.STOPPING, State.FAILED, State.TERMINATED},
    # Like stopped: a failed resume leaves it hibernated, running again only once booted.
    State.HIBERNATED: {State.RUNNING, State.STOPPING, State.FAILED},
    State.STOPPING: {State.TERMINATED, State.FAILED},
    State.TERMINATED: set(),
    State.FAILED: set(),
}


class HibernateMemory(enum.StrEnum):
    """What a hibernate does with the sandbox's memory (services/hibernation.py)."""

    AUTO = "auto"  # saved where the server can checkpoint (its capabilities say), else disk only
    REQUIRE = "require"  # saved, or the hibernate fails (409) and the sandbox runs on
    NEVER = "never"  # disk only, even where memory could be saved


class TimeoutAction(enum.StrEnum):
    """What happens to a running sandbox when its timeout passes. New actions (stop, hibernate)
    are added here and handled in the supervisor's reaper; the API's enum follows this one."""

    DESTROY = "destroy"
    PAUSE = "pause"
    STOP = "stop"  # processes end, files kept (stopped_retention_seconds)
    HIBERNATE = "hibernate"  # like stop, memory saved too where the host can checkpoint


# The kernel refuses a CFS quota under 1 ms (per 100 ms period), and a quota of 0 leaves runc
# setting no limit at all: the smallest share of a CPU a sandbox can be given.
MIN_CPU = 0.01


class Limits(BaseModel):
    cpu: float
    memory_mb: int
    pids: int
    disk_mb: int | None = None  # its writable layer, data and metadata; None only in older records


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SandboxSpec(BaseModel):
    """A create request after defaults and validation: what the runtime is asked to build.

    Fields left unset (cwd, user, entrypoint, ready_check, env entries) take the image's config:
    ``resolved`` fills them in once the image is known (it may first have to be pulled)."""

    image: str
    layers: list[str] = Field(default_factory=list)  # more layers over the image's (template builds)
    entrypoint: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    ready_check: dict[str, Any] | None = None  # {command, interval, timeout}, from a template
    image_start: bool = True  # take the image's start command and readiness check (not in builds)
    metadata: dict[str, str] = Field(default_factory=dict)
    limits: Limits
    timeout: int
    timeout_action: TimeoutAction = TimeoutAction.DESTROY
    auto_resume: bool = False  # a request to it while paused resumes it first (else a 409)
    internet_access: bool = True  # False is the same as egress {"mode": "deny_all"}
    egress: dict[str, Any] | None = None  # a services.requests.EgressPolicy as given; None: allow all
    # What runtimes enforce: {"rules": [[action, target], ...], "default": "allow"|"deny"}.
    egress_rules: dict[str, Any] | None = None
    transforms: list[dict[str, Any]] = Field(default_factory=list)  # credential brokering rules
    ports: list[int] = Field(default_factory=list)  # reachable through the server's port proxy
    public_traffic: bool = False  # ports reachable without the sandbox's traffic token
    source: dict[str, Any] | None = None  # a services.sources.Source, as given
    template: str | None = None  # "name:version" when started from a template
    # services.requests.VolumeMount entries as checked; a named volume's also carry its volume_id.
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    snapshot: str | None = None  # snp_<ulid>: its writable layer starts as a copy of this snapshot
    persistent: bool = False  # its files are kept as its name's snapshot when it ends (services/persistence.py)
    resumed_from: str | None = None  # snp_<ulid>: the name's snapshot it resumed from

    def resolved(self, image_config: dict[str, Any]) -> SandboxSpec:
        """This spec over the image's defaults; the request wins wherever it said something."""
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", **image_config.get("env", {}), **self.env}
        return self.model_copy(
            update={
                "env": env,
                "cwd": self.cwd or image_config.get("cwd") or "/",
                "user": self.user or image_config.get("user"),
                "entrypoint": self.entrypoint or (image_config.get("entrypoint") if self.image_start else None),
                # The image's readiness check is about its own start command: not a caller's.
                "ready_check": self.ready_check
                or (image_config.get("ready_check") if self.image_start and not self.entrypoint else None),
            }
        )


class Status(BaseModel):
    state: State
    reason: str
    message: str = ""
    changed_at: datetime
    # Hibernated only: whether the processes' memory was saved (a checkpoint) or only the disk.
    memory_kept: bool | None = None


class Sandbox(BaseModel):
    id: str
    spec: SandboxSpec
    status: Status
    created_at: datetime
    expires_at: datetime | None
    runtime: dict[str, object] = Field(default_factory=dict)  # the runtime handle's record
    traffic_token: str = ""  # required on port traffic unless spec.public_traffic
    project_id: str = DEFAULT_PROJECT
    version: int = 0  # bumped by the store on every update: the compare-and-set token
    name: str | None = None  # unique among the project's sandboxes that have not ended
    idempotency_key: str | None = None  # a create retried with this key returns the first sandbox


class Volume(BaseModel):
    """A named volume: a quota-limited directory of its own that outlives sandboxes and can be
    mounted by several at once."""

    id: str  # vol_<ulid>: what the runtime names its storage after
    project_id: str
    name: str  # unique within its project
    size_mb: int
    created_at: datetime


class Snapshot(BaseModel):
    """A sandbox's writable layer as it was at created_at, stacked on its image's layers. It
    exists only complete: its record is written once its storage is."""

    id: str  # snp_<ulid>: what the runtime names its storage after
    project_id: str
    sandbox_id: str  # the sandbox it was taken of (which may be gone since)
    name: str | None = None
    image: str  # the catalog image and the layers over it that a sandbox made from it runs on
    layers: list[str] = Field(default_factory=list)
    disk_mb: int  # the disk limit a sandbox made from it gets unless its create says otherwise
    created_at: datetime
    expires_at: datetime | None = None  # None: kept until deleted
    # The persistent sandbox name it holds the files of (one per name and project); None: a user's.
    persistent_name: str | None = None


class WarmPool(BaseModel):
    """A warm pool: ready sandboxes of one image and limits, kept started for one project's creates
    (services/pools.py). Its sandboxes belong to no project until one is checked out."""

    id: str  # wp_<ulid>
    project_id: str  # the only project whose creates take from it
    image: str  # as the project names it; "" for a template's pool
    limits: Limits  # a create fits only with exactly these
    target: int  # ready sandboxes to keep
    # A template's pool: the template as the pool names it (name or name:version; a runtime's is
    # its template), and what that last resolved to in the pool's project (name:version and its
    # image): pooled sandboxes of anything else are not handed out (services/pool_templates.py).
    template: str | None = None
    template_ref: str | None = None
    template_image: str | None = None
    hits: int = 0
    misses: int = 0
    created_at: datetime


class BuildState(enum.StrEnum):
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"


class TemplateVersion(BaseModel):
    """One build of a template: its recipe as given, and the image it made."""

    name: str
    version: int
    definition: dict[str, Any]  # a services.requests.CreateTemplate, as given
    state: BuildState
    message: str = ""
    image: str | None = None  # the local image, once built
    steps_cached: int = 0  # steps whose layer came from the cache
    created_at: datetime
    finished_at: datetime | None = None
    project_id: str = DEFAULT_PROJECT  # names are unique per project

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


# -- Tenancy: who owns what, and who may do what -------------------------------------------------


class Scope(enum.StrEnum):
    ADMIN = "admin"  # everything, tenancy included
    WRITE = "write"
    READ = "read"


class Organization(BaseModel):
    id: str  # org_<ulid>
    name: str
    created_at: datetime


class Project(BaseModel):
    id: str  # prj_<ulid>
    org_id: str
    name: str  # unique within its organization
    created_at: datetime


class ImageRef(BaseModel):
    """A project's name for an image in the shared catalog (whose layers are content-addressed and
    stored once): what the project lists, inspects, removes and starts sandboxes from."""

    project_id: str
    name: str  # unique within its project: what the caller says
    image: str  # the catalog's name for it (shared: several projects may refer to one image)
    created_at: datetime


class ApiKey(BaseModel):
    """A key of a project, or of a whole organization when project_id is None.

    Only a hash of the secret is kept: sha256 suffices for a secret of 256 random bits (nothing to
    brute-force, so no slow hash is needed), and the secret cannot be shown again after creation."""

    id: str  # key_<ulid>
    name: str
    org_id: str
    project_id: str | None
    scopes: list[Scope]
    secret_hash: str  # hash_secret(secret)
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


def hash_secret(secret: str) -> str:
    """The stored form of a key's secret (hex sha256)."""
    return hashlib.sha256(secret.encode()).hexdigest()


# -- what runs and what is stored inside a sandbox (read through its agent) ---------------------------


class ProcessInfo(BaseModel):
    """A process started in a sandbox, as its agent reports it."""

    id: str
    pid: int
    running: bool
    exit_code: int | None
    signal: int | None
    timed_out: bool
    started_at: datetime
    ended_at: datetime | None
    duration_ms: float
    output_size: int = Field(description="Bytes of output it has written so far (stdout and stderr).")


class ExitInfo(ProcessInfo):
    """The end of a stream of a process's output: the process's status then (ended, unless a read
    without follow ended first), where its output ends, and whether the OOM killer ended it."""

    offset: int | None = Field(None, description="Byte offset after the last output sent.")
    oom_killed: bool = False


class TerminalSession(BaseModel):
    """A terminal (a process on a PTY) that outlives its WebSocket for a grace period."""

    id: str = Field(description="term_<ulid>: attach again with ?session=ID on the terminal WebSocket.")
    sandbox_id: str
    process_id: str = Field(description="The agent's process id of the terminal's program.")
    created_at: datetime
    attached: bool = Field(description="Whether a client is attached now.")
    detached_at: datetime | None = Field(None, description="Since when no client is attached.")
    expires_at: datetime | None = Field(None, description="When it ends unless a client attaches first.")


class CommandResult(BaseModel):
    """A command run to completion."""

    process_id: str
    stdout: str
    stderr: str
    exit_code: int
    duration_ms: float
    timed_out: bool
    signal: int | None
    oom_killed: bool
    truncated: bool = Field(
        False, description="Output past 8 MiB per stream was left out; read it from the process logs."
    )


class FileInfo(BaseModel):
    name: str
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    uid: int
    gid: int
    modified_at: datetime
    target: str | None = Field(None, description="Where a symlink points.")


@dataclass(frozen=True)
class Output:
    """One piece of a process's output: the stream it came from and where it ends in the log."""

    stream: Literal["stdout", "stderr"]
    data: bytes
    offset: int


@dataclass(frozen=True)
class Gap:
    """Output between start and end (byte offsets) that is no longer kept: the reader fell behind
    the bounded buffer of the process's output. The next Output continues at end."""

    start: int
    end: int

    @property
    def dropped(self) -> int:
        return self.end - self.start


class SandboxEvent(BaseModel):
    """One state transition of a sandbox, as the store recorded it: the history and the event
    stream. ``id`` increases with every event the store writes (never reused), so a reader resumes
    after the last one it saw. States are plain strings: a reader passes through states it does
    not know."""

    id: int
    sandbox_id: str
    project_id: str
    from_state: str | None  # None for the first event (the sandbox's creation)
    to_state: str
    reason: str
    message: str = ""
    changed_at: datetime
    labels: dict[str, str] = Field(default_factory=dict)  # the sandbox's labels, for filtering


@dataclass(frozen=True)
class IdempotentCall:
    """A POST made with an Idempotency-Key, by project and key: what it was (``fingerprint``: its
    method, path, query and body), and once done, what it answered, to be given again to a retry."""

    project_id: str
    key: str
    fingerprint: str
    method: str
    path: str
    created_at: datetime
    done: bool = False
    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None  # None when done: the answer was larger than the cap, not kept
    expires_at: datetime | None = None  # set when done: the retention starts then
    owner: str | None = None  # the server that claimed it (its restart releases its claims only)
