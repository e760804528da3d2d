"""The runtime protocol: what the service needs from any backend that runs sandboxes."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Protocol

from sandboxd.domain import SandboxSpec
from sandboxd.runtimes.agent_client import Agent


class Liveness(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"  # the sandbox's processes are gone, its resources may remain
    MISSING = "missing"  # the runtime knows nothing of it


class Runtime(Protocol):
    name: str

    async def start(self) -> None:
        """Prepares the host (bridge, directories); called once when the server starts."""

    async def stop(self) -> None:
        """Closes what start opened (listeners); sandboxes keep running."""

    def check(self, spec: SandboxSpec) -> None:
        """Refuses, before anything is made, a spec this runtime cannot run (unknown image ...)."""

    async def create(
        self,
        sandbox_id: str,
        spec: SandboxSpec,
        progress: Callable[[str, str], None] | None = None,
        image_auth: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """Builds and starts a sandbox; returns the record a restarted server re-attaches with.
        progress(step, message) reports long steps (a pull) from any thread; image_auth is
        (username, password) for this pull only.

        On failure everything it made is already removed."""

    async def commit(self, sandbox_id: str, record: dict[str, Any]) -> str:
        """Stops the sandbox and keeps its writable layer as a new layer; returns the layer id.
        destroy must still be called."""

    async def destroy(self, sandbox_id: str, record: dict[str, Any]) -> None:
        """Stops the sandbox and removes all it owns. Safe to call on a half-made sandbox."""

    async def liveness(self, sandbox_id: str, record: dict[str, Any]) -> Liveness: ...

    def adopt(self, sandbox_id: str, record: dict[str, Any]) -> None:
        """Re-attaches to a sandbox started by an earlier server process."""

    async def sweep(self, known: set[str]) -> list[str]:
        """Removes everything of sandboxes not in known; returns their ids."""

    def agent(self, sandbox_id: str, record: dict[str, Any]) -> Agent: ...

    async def set_egress(self, sandbox_id: str, record: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
        """Enforces new egress rules ({"rules", "default"}) on a running sandbox; returns its record."""

    async def egress_refusals(self, sandbox_id: str) -> dict[str, int]:
        """Policy violations so far: refused_packets, refused_lookups."""

    # Images and template layers. A layer cache key names a base image and a chain of build steps.

    async def ensure_image(
        self,
        name: str,
        progress: Callable[[str, str], None] | None = None,
        image_auth: tuple[str, str] | None = None,
    ) -> list[str]:
        """Makes the image available (pulls a registry reference); returns its layer ids."""

    def image_config(self, name: str) -> dict[str, Any]:
        """The defaults a sandbox of this image gets: env, cwd, user, entrypoint, ready_check."""

    def cached_layer(self, key: str) -> str | None: ...

    def cache_layer(self, key: str, layer_id: str) -> None: ...

    def save_image(self, name: str, base: str, layers: list[str], config: dict[str, Any], meta: dict[str, Any]) -> None:
        """Registers an image made of base's layers plus layers, with config for its sandboxes."""

    def delete_image(self, name: str) -> None:
        """Removes an image; Conflict while a sandbox is built on it."""

    def logs_path(self, sandbox_id: str) -> str: ...

    def forget(self, sandbox_id: str) -> None:
        """Drops what outlives a sandbox (its logs) once its record is purged."""

    def oom_kills(self, sandbox_id: str) -> int: ...
