"""sandboxd's records in Vercel's shapes: sandbox, session, route, snapshot, drive (camelCase,
integer ms epoch times, durations in ms)."""

from __future__ import annotations

from typing import Any

from sandboxd.api.facades.translate import epoch_ms
from sandboxd.api.facades.vercel.common import (
    KEEP_LAST_EXPIRATION_LABEL,
    KEEP_LAST_LABEL,
    REGION,
    RUNTIME_LABEL,
    SANDBOX_LABEL,
    SNAPSHOT_EXPIRATION_LABEL,
    TAG_PREFIX,
    count_label,
)
from sandboxd.api.facades.vercel.models import MiB
from sandboxd.domain import Sandbox, Snapshot, State, Volume
from sandboxd.services.ports import PortService

# A session is one native sandbox: its state in Vercel's words. sandboxd never pauses a Vercel
# session; a hibernated or ended one is stopped (a persistent one resumes from its files).
_STATUS = {
    State.PENDING: "pending",
    State.RUNNING: "running",
    State.PAUSED: "running",
    State.STOPPING: "stopping",
    State.STOPPED: "stopped",
    State.HIBERNATED: "stopped",
    State.TERMINATED: "stopped",
    State.FAILED: "failed",
}


def status(sandbox: Sandbox) -> str:
    return _STATUS[sandbox.status.state]


def _ms(sandbox: Sandbox) -> int:
    return epoch_ms(sandbox.created_at) or 0


def network_policy(sandbox: Sandbox) -> dict[str, Any]:
    egress = sandbox.spec.egress or {}
    if not sandbox.spec.internet_access or egress.get("mode") == "deny_all":
        return {"mode": "deny-all"}
    if egress.get("mode") != "custom":
        return {"mode": "allow-all"}
    denied = [r["target"] for r in egress.get("rules", []) if r.get("action") == "deny"]
    return {
        "mode": "custom",
        "allowedDomains": list(egress.get("allowed_domains", [])),
        "allowedCIDRs": list(egress.get("allowed_cidrs", [])),
        "deniedCIDRs": denied,
    }


def timeout_ms(sandbox: Sandbox) -> int:
    """The session's time limit: while it runs, from its (re)start to when it is stopped."""
    if sandbox.status.state == State.RUNNING and sandbox.expires_at is not None:
        return max(0, round((sandbox.expires_at - sandbox.status.changed_at).total_seconds() * 1000))
    return sandbox.spec.timeout * 1000


def session(sandbox: Sandbox) -> dict[str, Any]:
    state = sandbox.status.state
    changed = epoch_ms(sandbox.status.changed_at)
    body: dict[str, Any] = {
        "id": sandbox.id,
        "sourceSandboxName": sandbox.spec.metadata.get(SANDBOX_LABEL),
        "projectId": sandbox.project_id,
        "memory": sandbox.spec.limits.memory_mb,
        "vcpus": max(1, round(sandbox.spec.limits.cpu)),
        "region": REGION,
        "runtime": sandbox.spec.metadata.get(RUNTIME_LABEL),
        "timeout": timeout_ms(sandbox),
        "status": status(sandbox),
        "requestedAt": _ms(sandbox),
        "createdAt": _ms(sandbox),
        "updatedAt": changed,
        "cwd": sandbox.spec.cwd or "/",
        "networkPolicy": network_policy(sandbox),
        "sourceSnapshotId": sandbox.spec.snapshot or sandbox.spec.resumed_from,
    }
    if state == State.RUNNING:
        body["startedAt"] = changed
    if state in (State.STOPPED, State.HIBERNATED) or state.ended:
        body["stoppedAt"] = changed
        body["duration"] = max(0, (changed or 0) - _ms(sandbox))
    if state == State.FAILED:
        body["abortedAt"] = changed
    return body


def _tags(sandbox: Sandbox) -> dict[str, str]:
    return {k.removeprefix(TAG_PREFIX): v for k, v in sandbox.spec.metadata.items() if k.startswith(TAG_PREFIX)}


def sandbox(name: str, sessions: list[Sandbox], current_snapshot: str | None = None) -> dict[str, Any]:
    """A Vercel sandbox from its sessions (oldest first): the newest one speaks for it."""
    first, last = sessions[0], sessions[-1]
    labels = last.spec.metadata
    body: dict[str, Any] = {
        "name": name,
        "projectId": last.project_id,
        "persistent": last.spec.persistent,
        "createdAt": _ms(first),
        "updatedAt": epoch_ms(last.status.changed_at),
        "statusUpdatedAt": epoch_ms(last.status.changed_at),
        "currentSessionId": last.id,
        "status": status(last),
        "region": REGION,
        "vcpus": max(1, round(last.spec.limits.cpu)),
        "memory": last.spec.limits.memory_mb,
        "runtime": labels.get(RUNTIME_LABEL),
        "timeout": last.spec.timeout * 1000,
        "networkPolicy": network_policy(last),
        "cwd": last.spec.cwd or "/",
        "tags": _tags(last),
        "mounts": {
            str(v["mount_path"]): {"drive": v["name"], "mode": "read-only" if v.get("read_only") else "read-write"}
            for v in last.spec.volumes
            if v.get("type") == "volume"
        },
        "currentSnapshotId": current_snapshot,
    }
    if last.expires_at is not None and last.status.state == State.RUNNING:
        body["expiresAt"] = epoch_ms(last.expires_at)
    if (expiration := count_label(last, SNAPSHOT_EXPIRATION_LABEL)) is not None:
        body["snapshotExpiration"] = expiration
    if (count := count_label(last, KEEP_LAST_LABEL)) is not None:
        keep: dict[str, Any] = {"count": count, "deleteEvicted": True}
        if (expiration := count_label(last, KEEP_LAST_EXPIRATION_LABEL)) is not None:
            keep["expiration"] = expiration
        body["keepLastSnapshots"] = keep
    return body


def routes(ports: PortService, sandbox: Sandbox) -> list[dict[str, Any]]:
    found = []
    for port in sandbox.spec.ports:
        url = str(ports.describe(sandbox, port)["url"])
        host = url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
        found.append({"url": url.rstrip("/"), "subdomain": host.split(".", 1)[0], "port": port})
    return found


def snapshot(found: Snapshot) -> dict[str, Any]:
    created = epoch_ms(found.created_at) or 0
    return {
        "id": found.id,
        "sourceSessionId": found.sandbox_id,
        "region": REGION,
        "status": "created",
        # sandboxd records a snapshot's disk limit, not the bytes it holds: an upper bound.
        "sizeBytes": found.disk_mb * MiB,
        "createdAt": created,
        "updatedAt": created,
        "expiresAt": epoch_ms(found.expires_at),
        "creationMethod": "snapshot",
    }


def drive(volume: Volume, user: Sandbox | None) -> dict[str, Any]:
    """A drive is a named volume; `user`: a session that mounts it now."""
    created = epoch_ms(volume.created_at) or 0
    return {
        "id": volume.id,
        "name": volume.name,
        "projectId": volume.project_id,
        "region": REGION,
        "maxSizeBytes": volume.size_mb * MiB,
        "createdAt": created,
        "updatedAt": created,
        "currentSessionId": user.id if user else None,
        "currentSandboxName": user.spec.metadata.get(SANDBOX_LABEL) if user else None,
    }
