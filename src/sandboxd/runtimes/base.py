"""The runtime protocols: what the services need from any backend that runs sandboxes.

`Runtime` is the lifecycle core every backend implements (the embedded OCI runtime here; a
Kubernetes pod backend can too: nothing in it names a host path). What only some backends can do is
a capability of its own, a `runtime_checkable` protocol that services test with isinstance and
refuse with `Unsupported` when it is missing:

- `EgressControl`: changing a running sandbox's egress policy, and counting its refusals. A backend
  without it must refuse in `check` any spec whose egress policy it cannot enforce.
- `RefusalRecord`: the names and destinations its egress policy refused lately (GET …/egress shows
  none without it).
- `LayerBuilder`: images made of layers, a sandbox's writable layer kept as a new one (template
  builds).
- `StopStart`: ending a sandbox's processes keeping its filesystem, and booting it again.
- `Pausable`: freezing every process of a sandbox with its memory kept, and thawing it.
- `Checkpointing`: saving a sandbox's processes with their memory to disk (CRIU) and restoring
  them (hibernate keeps memory only where a runtime has it and the host's `criu check` passes).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, runtime_checkable

from sandboxd.domain import SandboxSpec
from sandboxd.errors import RuntimeFailure, Unsupported
from sandboxd.runtimes.agent_client import Agent

Progress = Callable[[str, str], None]  # (step, message), callable from any thread
ImageAuth = tuple[str, str]  # (username, password) for one pull


class Liveness(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # its processes are there, frozen
    STOPPED = "stopped"  # the sandbox's processes are gone, its resources may remain
    MISSING = "missing"  # the runtime knows nothing of it


class Runtime(Protocol):
    """The lifecycle core. A record is the JSON-able dict create returns: the server stores it with
    the sandbox and hands it back to every later call, also after a restart."""

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
        progress: Progress | None = None,
        image_auth: ImageAuth | None = None,
    ) -> dict[str, Any]:
        """Builds and starts a sandbox; returns its record. progress reports long steps (a pull);
        image_auth is for this pull only. On failure everything it made is already removed."""

    async def destroy(self, sandbox_id: str, record: dict[str, Any]) -> None:
        """Stops the sandbox and removes all it owns. Safe to call on a half-made sandbox."""

    async def liveness(self, sandbox_id: str, record: dict[str, Any]) -> Liveness: ...

    def adopt(self, sandbox_id: str, record: dict[str, Any]) -> None:
        """Re-attaches to a sandbox started by an earlier server process."""

    async def sweep(self, known: set[str]) -> list[str]:
        """Removes everything of sandboxes not in known; returns their ids."""

    def agent(self, sandbox_id: str, record: dict[str, Any]) -> Agent:
        """The client of the sandbox's agent (its PID 1)."""

    def image_config(self, name: str) -> dict[str, Any]:
        """The defaults a sandbox of this image gets: env, cwd, user, entrypoint, ready_check."""

    def logs(self, sandbox_id: str, offset: int) -> AsyncIterator[bytes]:
        """The entrypoint's output from a byte offset to its current end; it outlives the sandbox
        until forget."""

    async def oom_kills(self, sandbox_id: str, record: dict[str, Any]) -> int:
        """Processes of the sandbox the out-of-memory killer has killed so far."""

    def address(self, sandbox_id: str, record: dict[str, Any]) -> str:
        """The address the server connects to for the sandbox's ports (the port proxy). Raises a
        SandboxdError if the sandbox has none."""

    def forget(self, sandbox_id: str) -> None:
        """Drops what outlives a sandbox (its logs) once its record is purged."""


@runtime_checkable
class EgressControl(Protocol):
    async def set_egress(self, sandbox_id: str, record: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
        """Enforces new egress rules ({"rules", "default"}) on a running sandbox; returns its record."""

    async def egress_refusals(self, sandbox_id: str) -> dict[str, int]:
        """Policy violations so far: refused_packets, refused_lookups."""


@runtime_checkable
class EgressRecords(Protocol):
    """Optional beside EgressControl: the record set_egress will return, known before it runs, so a
    warm pool's checkout writes it in its one compare-and-set rather than in a second write."""

    def egress_record(self, record: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
        """What set_egress(sandbox_id, record, rules) returns once it succeeds; changes nothing."""


@runtime_checkable
class RefusalRecord(Protocol):
    """Optional beside EgressControl: which names and destinations the policy refused lately."""

    async def recent_refusals(self, sandbox_id: str) -> list[dict[str, str]]:
        """The last few refusals, oldest first: {"at" (RFC 3339), "kind" (dns, connection),
        "target" (escaped, bounded: it comes from the sandbox)}."""


@runtime_checkable
class LayerBuilder(Protocol):
    """Images and template layers. A layer cache key names a base image and a chain of build steps."""

    async def ensure_image(
        self, name: str, progress: Progress | None = None, image_auth: ImageAuth | None = None
    ) -> list[str]:
        """Makes the image available (pulls a registry reference); returns its layer ids."""

    def cached_layer(self, key: str) -> str | None: ...

    def cache_layer(self, key: str, layer_id: str) -> None: ...

    def save_image(self, name: str, base: str, layers: list[str], config: dict[str, Any], meta: dict[str, Any]) -> None:
        """Registers an image made of base's layers plus layers, with config for its sandboxes."""

    def delete_image(self, name: str) -> None:
        """Removes an image; Conflict while a sandbox is built on it."""

    async def commit(self, sandbox_id: str, record: dict[str, Any]) -> str:
        """Stops the sandbox and keeps its writable layer as a new layer; returns the layer id.
        destroy must still be called."""


@runtime_checkable
class StopStart(Protocol):
    async def stop_sandbox(self, sandbox_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Ends every process and releases all it holds but its writable layer; returns its record.
        Also safe on a sandbox already stopped, or half started (a restart's reconcile)."""

    async def start_sandbox(self, sandbox_id: str, spec: SandboxSpec, record: dict[str, Any]) -> dict[str, Any]:
        """Boots a stopped sandbox again on its writable layer; returns its record. On failure it
        is stopped again (its layer kept)."""


def stop_start(runtime: Runtime) -> StopStart:
    """The runtime's stop/start capability; Unsupported (501) if it has none."""
    if isinstance(runtime, StopStart):
        return runtime
    raise Unsupported("stopping and starting sandboxes", runtime.name)


@runtime_checkable
class Pausable(Protocol):
    """Freezing a sandbox: its processes stop being scheduled, their memory stays. Both calls are
    idempotent (a restarted server makes the runtime agree with the record by calling them again)."""

    async def pause(self, sandbox_id: str, record: dict[str, Any]) -> None:
        """Returns once every process of the sandbox is frozen; RuntimeFailure (and the sandbox
        thawed again) if that does not happen in time."""

    async def resume(self, sandbox_id: str, record: dict[str, Any]) -> None:
        """Thaws every process of the sandbox."""


class CheckpointFailure(RuntimeFailure):
    """A checkpoint that saved nothing. message (host paths, runc's and CRIU's words) is the
    server log's; public is fixed words an API caller may read; ended: its processes are gone
    anyway (no claim it runs on)."""

    def __init__(self, message: str, public: str, ended: bool = False) -> None:
        super().__init__(message)
        self.public = public
        self.ended = ended


@runtime_checkable
class Checkpointing(Protocol):
    """Saving a running sandbox's processes, memory included, to disk and ending them; restoring
    them later on the same writable layer. A backend built on CRIU answers checkpoint_unavailable
    from runtimes/criu.py's probe."""

    async def checkpoint_unavailable(self) -> str | None:
        """None when it can checkpoint on this host now; otherwise why not (asked once, cached)."""

    async def checkpoint_sandbox(self, sandbox_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Saves and ends its processes, keeping the saved image; returns its record, the rest of
        it (network, mounts) for stop_sandbox. CheckpointFailure if nothing was saved: the
        sandbox still running, unless its ``ended`` says its processes are gone all the same."""

    async def checkpointed(self, sandbox_id: str) -> bool:
        """Whether a complete saved image of it is on disk (a server killed after the dump)."""

    async def restore_sandbox(
        self, sandbox_id: str, spec: SandboxSpec, record: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Brings the saved processes back; on failure it is left stopped (files and image kept).
        Returns its record and whether the processes were restored (False: no saved image was
        left, it was booted afresh on its files): memory is never claimed when it was not."""


def pausable(runtime: Runtime) -> Pausable:
    """The runtime's pause capability; Unsupported (501) if it has none."""
    if isinstance(runtime, Pausable):
        return runtime
    raise Unsupported("pausing sandboxes", runtime.name)


def egress_control(runtime: Runtime) -> EgressControl:
    """The runtime's egress capability; Unsupported (501) if it has none."""
    if isinstance(runtime, EgressControl):
        return runtime
    raise Unsupported("egress control (changing or counting a running sandbox's egress)", runtime.name)


def layer_builder(runtime: Runtime) -> LayerBuilder:
    """The runtime's image-layer capability; Unsupported (501) if it has none."""
    if isinstance(runtime, LayerBuilder):
        return runtime
    raise Unsupported("image layers (template builds)", runtime.name)


@runtime_checkable
class VolumeHost(Protocol):
    """Volumes: host directories bound in (only under the operator's allowed roots) and named,
    size-limited volumes that outlive sandboxes. A spec's volumes are mounted by create."""

    def check_bind(self, host_path: str, field: str) -> None:
        """InvalidRequest(field) unless host_path is a directory under an allowed root, reached
        without leaving it."""

    async def create_volume(self, volume_id: str, size_mb: int) -> None:
        """Storage for a named volume holding at most size_mb (writes past it fail in the sandbox)."""

    async def remove_volume(self, volume_id: str) -> None:
        """Removes its storage with everything in it; nothing if there is none."""

    def volume_ids(self) -> set[str]:
        """The volumes that have storage: what the startup sweep compares with the records."""


def volume_host(runtime: Runtime) -> VolumeHost:
    """The runtime's volume capability; Unsupported (501) if it has none."""
    if isinstance(runtime, VolumeHost):
        return runtime
    raise Unsupported("volumes", runtime.name)


@runtime_checkable
class Snapshotter(Protocol):
    """Snapshots: a sandbox's writable layer kept as it is at one moment, stacked on its image's
    layers; a create whose spec names one (spec.snapshot) starts from a writable copy of it."""

    async def take_snapshot(self, sandbox_id: str, record: dict[str, Any], snapshot_id: str) -> dict[str, Any]:
        """Snapshots a running (frozen meanwhile), paused or stopped sandbox; returns {"image",
        "layers"}: what a sandbox made from it runs on. Nothing of it is left on failure."""

    async def remove_snapshot(self, snapshot_id: str) -> None:
        """Removes its storage; nothing if there is none."""

    def snapshot_ids(self) -> set[str]:
        """The snapshots with storage (whole or partial): what the startup sweep compares with the records."""


def snapshotter(runtime: Runtime) -> Snapshotter:
    """The runtime's snapshot capability; Unsupported (501) if it has none."""
    if isinstance(runtime, Snapshotter):
        return runtime
    raise Unsupported("snapshots", runtime.name)
