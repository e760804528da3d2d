"""sandboxd's states as OpenSandbox names them, and the sandbox and snapshot bodies built from records.

OpenSandbox: Pending, Running, Pausing, Paused, Resuming, Stopping, Terminated, Failed. sandboxd's
pause and resume are done when their call answers, so Pausing and Resuming are never seen. A
stopped or hibernated sandbox keeps its disk and comes back with resume, as a paused one does: all
three are Paused here, their native state kept in the reason."""

from __future__ import annotations

import platform

from sandboxd.api.facades.opensandbox.models import ImageSpec, Platform, SandboxOut, SnapshotOut, Status
from sandboxd.api.facades.translate import rfc3339
from sandboxd.domain import Sandbox, Snapshot, State

TO_OPENSANDBOX = {
    State.PENDING: "Pending",
    State.RUNNING: "Running",
    State.PAUSED: "Paused",
    State.STOPPED: "Paused",
    State.HIBERNATED: "Paused",
    State.STOPPING: "Stopping",
    State.TERMINATED: "Terminated",
    State.FAILED: "Failed",
}
# A state filter of list: the native states each OpenSandbox name stands for (transient names
# sandboxd never shows match nothing).
FROM_OPENSANDBOX: dict[str, list[State]] = {
    "pending": [State.PENDING],
    "running": [State.RUNNING],
    "pausing": [],
    "paused": [State.PAUSED, State.STOPPED, State.HIBERNATED],
    "resuming": [],
    "stopping": [State.STOPPING],
    "terminated": [State.TERMINATED],
    "failed": [State.FAILED],
}

# Labels the facade keeps for itself: OpenSandbox reserves this prefix (a caller's metadata may
# not use it), so extensions are stored under it without colliding with anyone's metadata.
RESERVED_PREFIX = "opensandbox.io/"
EXTENSION_PREFIX = RESERVED_PREFIX + "ext."
# The server's own labels (services/requests.py refuses them in a create's metadata).
SERVER_PREFIX = "sandboxd."

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def host_arch() -> str:
    machine = platform.machine().lower()
    return _ARCH.get(machine, machine)


def host_platform() -> Platform:
    return Platform(os="linux", arch=host_arch())


def status(sandbox: Sandbox) -> Status:
    st = sandbox.status
    reason = st.reason if st.state not in (State.STOPPED, State.HIBERNATED) else f"{st.state.value}: {st.reason}"
    return Status(
        state=TO_OPENSANDBOX[st.state],
        reason=reason,
        message=st.message or None,
        last_transition_at=rfc3339(st.changed_at),
    )


def metadata(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if not k.startswith(RESERVED_PREFIX)}


def extensions(labels: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix(EXTENSION_PREFIX): v for k, v in labels.items() if k.startswith(EXTENSION_PREFIX)}


def sandbox_out(sandbox: Sandbox, full: bool = True) -> SandboxOut:
    """The Sandbox body; full=False: the create answer (no image, as upstream's)."""
    spec = sandbox.spec
    image = None
    if full and spec.snapshot is None:
        image = ImageSpec(uri=spec.template or spec.image) if (spec.template or spec.image) else None
    return SandboxOut(
        id=sandbox.id,
        status=status(sandbox),
        entrypoint=list(spec.entrypoint or []),
        created_at=rfc3339(sandbox.created_at) or "",
        image=image,
        snapshot_id=spec.snapshot if full else None,
        platform=host_platform(),
        metadata=metadata(spec.metadata),
        extensions=extensions(spec.metadata) or None,
        expires_at=rfc3339(sandbox.expires_at),
    )


def snapshot_out(snapshot: Snapshot) -> SnapshotOut:
    """A snapshot exists only once complete (services/snapshots.py): always Ready."""
    return SnapshotOut(
        id=snapshot.id,
        sandbox_id=snapshot.sandbox_id,
        name=snapshot.name,
        status=Status(state="Ready", reason="SNAPSHOT_READY", last_transition_at=rfc3339(snapshot.created_at)),
        created_at=rfc3339(snapshot.created_at) or "",
    )
