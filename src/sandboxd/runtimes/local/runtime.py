"""The embedded runtime: an OCI runtime binary (runc or crun, per sandbox) driven directly, no daemon.

A sandbox is a directory ``sandboxes/<id>`` holding its bundle (config.json), the merged root, the
agent's socket and the FIFO its entrypoint log comes through; a btrfs subvolume ``scratch/<id>``
with a disk quota holding its overlay upper and work dirs (oci/scratch.py); a container of the same
id under its runtime class's state root; cgroups named ``sandboxd-<id>``; and a network namespace
that dies with its processes. Everything is named after the id, so a restarted server can find what
a crash left behind and remove it.

Besides the lifecycle core (here: create, destroy, inspection, the startup sweep) it implements the
capabilities, one module each over parts.py (what they all work with): booting.py (a container booted
on its root, at create, start and restore), stop_start.py (StopStart: a stopped sandbox keeps only its
scratch volume and the image marker in its directory), checkpointing.py (Checkpointing: runc
checkpoint/restore, oci/checkpoints.py), freezing.py (Pausable: the freezer cgroup), storage.py
(VolumeHost, Snapshotter), layers.py (LayerBuilder: images/ does the work); EgressControl is
network/plane.py's, forwarded here.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from sandboxd.domain import SandboxSpec
from sandboxd.errors import Conflict, RuntimeFailure
from sandboxd.runtimes.base import ImageAuth, Liveness, Progress
from sandboxd.runtimes.local import server_process
from sandboxd.runtimes.local.booting import LOG_FIFO
from sandboxd.runtimes.local.checkpointing import CheckpointSupport
from sandboxd.runtimes.local.images.registry import looks_like_reference, parse_reference
from sandboxd.runtimes.local.layers import LayerSupport
from sandboxd.runtimes.local.network.egress import Policy
from sandboxd.runtimes.local.oci import binds, cgroups, rootfs
from sandboxd.runtimes.local.oci.cli import RECORD_KEY
from sandboxd.runtimes.local.parts import log
from sandboxd.runtimes.local.storage import VolumesAndSnapshots


class LocalRuntime(CheckpointSupport, VolumesAndSnapshots, LayerSupport):
    name = "local"

    async def start(self) -> None:
        server_process.prepare()
        self.agent_mount.check()
        server_process.lock_data_dir(self.root.parent, self.root)
        try:  # the data dir exists now: a root holding it is refused, whatever its path says
            binds.check_roots(self.bind_allow, self._private())
        except ValueError as exc:
            raise RuntimeFailure(str(exc)) from None
        self.agent_mount.mount()
        self.root.mkdir(parents=True, exist_ok=True)
        # Traverse only (the sandboxes' mapped root must reach its rootfs): host users cannot list
        # sandbox ids, so cannot reach a setuid file a sandbox planted in its root.
        os.chmod(self.root, 0o711)
        for cli in self.oci.all():
            cli.state_root.mkdir(parents=True, exist_ok=True)
        self.log_pipes.log_dir.mkdir(parents=True, exist_ok=True)
        self.images.remove_partials()
        await asyncio.to_thread(self.scratch.setup)
        await server_process.wait_for_stragglers([str(root) for root in self.oci.state_roots()])
        await self.networks.start()

    async def stop(self) -> None:
        await self.networks.stop()
        self.log_pipes.close_all()
        # Running sandboxes keep their own bind of it; a restarted server mounts a new one.
        self.agent_mount.unmount()
        await asyncio.to_thread(self.scratch.teardown)

    # -- create / destroy ------------------------------------------------------------------------

    def check(self, spec: SandboxSpec) -> None:
        if looks_like_reference(spec.image) and not self.images.exists(spec.image):
            parse_reference(spec.image)  # a malformed reference is a 400 now; the pull comes in create
            return
        self.images.get(spec.image)

    async def create(
        self,
        sandbox_id: str,
        spec: SandboxSpec,
        progress: Progress | None = None,
        image_auth: ImageAuth | None = None,
    ) -> dict[str, Any]:
        await self._pull_if_missing(spec.image, progress, image_auth)
        image = self.images.get(spec.image)
        spec = spec.resolved(image.config)
        # overlayfs wants the top layer first.
        lowers = [*reversed(self.images.layer_paths(spec.layers)), *reversed(image.layers)]
        home = self.root / sandbox_id
        cli = self.oci.get(self.oci.default)
        # The class goes into the record first: a failed create is removed with the same binary.
        record: dict[str, Any] = {RECORD_KEY: cli.runtime_class, "address": None}
        try:
            # Every sandbox has an address: its ports are reached through it, and its egress
            # policy (deny all for internet_access=false) decides what it reaches.
            record["address"] = await self.network.allocate()
            record["egress"] = Policy.of(spec.egress_rules).record()
            record["transforms"] = spec.transforms
            marker = {"image": spec.image, "layers": [*image.layer_ids, *spec.layers]}
            await asyncio.to_thread(self._prepare_root, sandbox_id, home, lowers, marker, record["address"], spec)
            await self._boot(sandbox_id, home, spec, record)
        except BaseException:
            self.log_pipes.close(sandbox_id)
            try:
                await asyncio.shield(self.destroy(sandbox_id, record))
            except Exception:  # the create's own error is the one to report
                log.exception("cleanup after a failed create failed", extra={"sandbox_id": sandbox_id})
            raise
        return record

    async def destroy(self, sandbox_id: str, record: dict[str, Any]) -> None:
        # Its directory and its network go while its processes die: a dying sandbox uses neither
        # (its root stays mounted in its own mount namespace until the last one is gone). Its
        # scratch volume goes once they are gone: their overlay holds it until then.
        stopped, home, network = await asyncio.gather(
            self._stop_container(sandbox_id, record),
            asyncio.to_thread(rootfs.remove_home, self.root / sandbox_id),
            self.networks.remove(sandbox_id, record),
            return_exceptions=True,
        )
        self.log_pipes.close(sandbox_id)
        if isinstance(stopped, BaseException):
            raise stopped  # it may still run: its scratch volume and its address stay for the next try
        if stopped:
            self.networks.release(record)
        else:  # processes outlived every way to stop them: its address is not given to another
            log.error("sandbox processes outlived the stop; its address stays taken", extra={"sandbox_id": sandbox_id})
        # Every step runs even if one before it failed; the first failure is raised at the end.
        failures: list[BaseException] = [home] if isinstance(home, BaseException) else []
        failures += [network] if isinstance(network, BaseException) else network
        for remove in (self.scratch.remove, self.checkpoint_images.remove):
            try:
                await asyncio.to_thread(remove, sandbox_id)
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    # -- inspection ------------------------------------------------------------------------------

    async def liveness(self, sandbox_id: str, record: dict[str, Any]) -> Liveness:
        state = await self.oci.of(record).state(sandbox_id)
        if state is None:
            return Liveness.MISSING
        if state.get("status") not in ("running", "paused"):
            return Liveness.STOPPED
        # Read from the freezer itself: whatever the binary makes of a group it did not freeze.
        return Liveness.PAUSED if cgroups.freezing(sandbox_id) else Liveness.RUNNING

    def adopt(self, sandbox_id: str, record: dict[str, Any]) -> None:
        # A running sandbox holds no saved image: one here is a dump the server was killed in
        # (runc ends the container only once saved, so it runs on) and is removed.
        self.checkpoint_images.remove(sandbox_id)
        if (self.root / sandbox_id / LOG_FIFO).exists():
            try:
                self.log_pipes.open(sandbox_id, self.root / sandbox_id / LOG_FIFO)
            except OSError:
                log.exception("could not reopen the log pipe", extra={"sandbox_id": sandbox_id})
        self.networks.adopt(sandbox_id, record)

    async def sweep(self, known: set[str]) -> list[str]:
        # Only what this server owns: containers in its state roots, directories under its data
        # dir and veths on its bridge. Another sandboxd on the same host keeps its own.
        found: dict[str, dict[str, Any]] = {}
        for cli in self.oci.all():
            for container in await cli.list():
                found.setdefault(container, {RECORD_KEY: cli.runtime_class} if cli is not self.oci.legacy else {})
        if self.root.exists():
            for path in self.root.iterdir():
                found.setdefault(path.name, {})
        for sandbox_id in self.scratch.ids() | self.checkpoint_images.ids():
            found.setdefault(sandbox_id, {})
        orphans = sorted(set(found) - known)
        for sandbox_id in orphans:
            await self.destroy(sandbox_id, found[sandbox_id])
        await self.networks.sweep(known)
        return orphans

    def logs(self, sandbox_id: str, offset: int) -> AsyncIterator[bytes]:
        return self.log_pipes.read(sandbox_id, offset)

    def forget(self, sandbox_id: str) -> None:
        self.log_pipes.remove(sandbox_id)

    async def oom_kills(self, sandbox_id: str, record: dict[str, Any]) -> int:
        return cgroups.oom_kills(sandbox_id)

    def address(self, sandbox_id: str, record: dict[str, Any]) -> str:
        address = record.get("address")
        if not isinstance(address, str):
            raise Conflict(f"sandbox {sandbox_id} has no network address")
        return address

    # -- EgressControl ---------------------------------------------------------------------------

    async def set_egress(self, sandbox_id: str, record: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
        return await self.networks.set_egress(sandbox_id, record, rules)

    def egress_record(self, record: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:  # EgressRecords
        return self.networks.egress_record(record, rules)

    async def egress_refusals(self, sandbox_id: str) -> dict[str, int]:
        return await self.networks.refusals(sandbox_id)

    async def recent_refusals(self, sandbox_id: str) -> list[dict[str, str]]:
        return await self.networks.recent_refusals(sandbox_id)
