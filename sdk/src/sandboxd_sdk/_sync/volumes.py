"""Named volumes on a sandboxd server: client.volumes (create, list, get, delete). A volume
outlives sandboxes and may be mounted by several at once:
``Sandbox.create(volumes=[{"type": "volume", "name": "cache", "mount_path": "/cache"}])``.
GENERATED from ../_async by scripts/unasync.py: do not edit."""

from __future__ import annotations

import builtins
from typing import Any

import httpx

from sandboxd_sdk._sync._http import _check, segment


class Volumes:
    """client.volumes: the project's named volumes."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def create(self, name: str, size_mb: int = 1024) -> dict[str, Any]:
        """A volume that holds at most size_mb (a write past it fails in the sandbox with EDQUOT).
        SandboxError CONFLICT if the project has a volume of that name."""
        r = _check(self._http.post("/api/v1/volumes", json={"name": name, "size_mb": size_mb}))
        return dict(r.json())

    def list(self) -> builtins.list[dict[str, Any]]:
        """{name, size_mb, created_at, in_use_by: [sandbox ids]} by name."""
        return list((_check(self._http.get("/api/v1/volumes"))).json()["items"])

    def get(self, name: str) -> dict[str, Any]:
        return dict((_check(self._http.get(f"/api/v1/volumes/{segment(name)}"))).json())

    def delete(self, name: str) -> None:
        """With everything in it; SandboxError CONFLICT while a sandbox that has not ended mounts it."""
        _check(self._http.delete(f"/api/v1/volumes/{segment(name)}"))


def bind(host_path: str, mount_path: str, read_only: bool = False) -> dict[str, Any]:
    """A volumes= entry binding a host directory (under the server's bind_allow) into the sandbox."""
    return {"type": "bind", "host_path": host_path, "mount_path": mount_path, "read_only": read_only}


def volume(name: str, mount_path: str, read_only: bool = False) -> dict[str, Any]:
    """A volumes= entry mounting the project's named volume."""
    return {"type": "volume", "name": name, "mount_path": mount_path, "read_only": read_only}
