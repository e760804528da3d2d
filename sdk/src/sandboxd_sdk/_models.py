from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal, NamedTuple


@dataclass(frozen=True, repr=False)
class FileEntry:
    """A file in a sandbox, as files.list, files.stat and files.write return it. ``mode`` holds
    the permission bits (0o644), shown in octal. ``entry["name"]`` works as well as
    ``entry.name``: these were dicts before, and code that indexes them keeps working."""

    name: str
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    uid: int
    gid: int
    modified_at: datetime
    target: str | None = None  # where a symlink points

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FileEntry:
        """The server's JSON (time in RFC 3339); fields a newer server adds are ignored. An answer
        that is not a file entry (another server on that port, one of another version) is a
        SandboxError BAD_RESPONSE, not a KeyError out of the caller's code."""
        try:
            return cls(
                name=body["name"],
                path=body["path"],
                type=body["type"],
                size=body["size"],
                mode=body["mode"],
                uid=body["uid"],
                gid=body["gid"],
                modified_at=datetime.fromisoformat(body["modified_at"]),
                target=body.get("target"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            from sandboxd_sdk._errors import SandboxError  # _errors imports this module

            raise SandboxError("BAD_RESPONSE", f"the server's answer is not a file entry: {exc!r:.200}") from None

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name):#o}" if f.name == "mode" else f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
        )
        return f"FileEntry({shown})"


class _LogsTuple(NamedTuple):
    stdout: str
    stderr: str
    next_offset: int


class Logs(_LogsTuple):
    """A background process's output so far: pass next_offset as offset to get only what follows.
    Unpacks as the (stdout, stderr, next_offset) tuple it used to be. ``dropped``: bytes between the
    offset asked for and next_offset that are missing from stdout and stderr because the server no
    longer kept them (it keeps the newest 16 MiB of a process's output); 0 when nothing is missing."""

    dropped: int = 0

    @classmethod
    def of(cls, stdout: str, stderr: str, next_offset: int, dropped: int = 0) -> Logs:
        logs = cls(stdout, stderr, next_offset)
        logs.dropped = dropped
        return logs


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


class Copied(NamedTuple):
    """What a directory copy moved: entries other than directories, bytes of regular files, and
    entries left out (a download's device nodes, fifos and links that would lead out of the copy)."""

    files: int
    size: int
    skipped: int = 0


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


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass
class Organization:
    id: str
    name: str
    created_at: datetime

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Organization:
        return cls(id=body["id"], name=body["name"], created_at=datetime.fromisoformat(body["created_at"]))


@dataclass
class Project:
    id: str
    org_id: str
    name: str
    created_at: datetime

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Project:
        return cls(
            id=body["id"],
            org_id=body["org_id"],
            name=body["name"],
            created_at=datetime.fromisoformat(body["created_at"]),
        )


@dataclass
class ApiKey:
    """A key as the server lists it: never its secret, which is shown once, at creation."""

    id: str
    name: str
    org_id: str
    project_id: str | None  # None: a key of the whole organization
    scopes: list[str]  # "admin", "write", "read"
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ApiKey:
        return cls(
            id=body["id"],
            name=body["name"],
            org_id=body["org_id"],
            project_id=body["project_id"],
            scopes=list(body["scopes"]),
            created_at=datetime.fromisoformat(body["created_at"]),
            expires_at=_time(body["expires_at"]),
            last_used_at=_time(body["last_used_at"]),
            revoked_at=_time(body["revoked_at"]),
        )


@dataclass
class CreatedKey(ApiKey):
    """A key just made, with the secret to present as SANDBOXD_API_KEY. The server keeps only its
    hash: this is the only time it is seen. Left out of repr() so that a logged record shows none."""

    key: str = field(default="", repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> CreatedKey:
        record = ApiKey.from_json(body)
        return cls(**{**record.__dict__, "key": body["key"]})


@dataclass(frozen=True)
class SandboxEvent:
    """One state transition of a sandbox: client.events() yields these, sb.history() lists them.
    ``to_state`` is a plain string: a newer server may have states this SDK does not know."""

    id: int
    sandbox_id: str
    from_state: str | None  # None for the sandbox's creation
    to_state: str
    reason: str
    message: str
    changed_at: datetime

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> SandboxEvent:
        try:
            return cls(
                id=int(body["id"]),
                sandbox_id=str(body["sandbox_id"]),
                from_state=None if body.get("from_state") is None else str(body["from_state"]),
                to_state=str(body["to_state"]),
                reason=str(body["reason"]),
                message=str(body.get("message", "")),
                changed_at=datetime.fromisoformat(body["changed_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            from sandboxd_sdk._errors import SandboxError  # _errors imports this module

            raise SandboxError("BAD_RESPONSE", f"the server's answer is not a sandbox event: {exc!r:.200}") from None
