"""The embedded runtime: an OCI runtime binary (runc or crun, per sandbox) driven directly, no daemon.

A sandbox is a directory ``sandboxes/<id>`` holding its bundle (config.json), the merged root, the
agent's socket and the FIFO its entrypoint log comes through; a btrfs subvolume ``scratch/<id>``
with a disk quota holding its overlay upper and work dirs (oci/scratch.py); a container of the same
id under its runtime class's state root; cgroups named ``sandboxd-<id>``; and a network namespace
that dies with its processes. Everything is named after the id, so a restarted server can find what
a crash left behind and remove it.

Besides the lifecycle core it implements the capabilities: EgressControl (network/plane.py does
the work), LayerBuilder (images/ does), StopStart (a stopped sandbox keeps only its scratch
volume and the image marker in its directory) and Pausable (the sandbox's freezer cgroup,
oci/cgroups.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from sandboxd.domain import SandboxSpec
from sandboxd.errors import Conflict, InvalidRequest, RuntimeFailure
from sandboxd.runtimes.agent_client import Agent, AgentConnection, unix_connector
from sandboxd.runtimes.base import ImageAuth, Liveness, Progress
from sandboxd.runtimes.local import server_process
from sandboxd.runtimes.local.images.catalog import ImageStore
from sandboxd.runtimes.local.images.registry import Credentials, looks_like_reference, parse_reference
from sandboxd.runtimes.local.logpipe import LogPipes
from sandboxd.runtimes.local.network.bridge import Network
from sandboxd.runtimes.local.network.egress import Policy
from sandboxd.runtimes.local.network.plane import SandboxNetworks
from sandboxd.runtimes.local.oci import binds, cgroups, mounts, rootfs
from sandboxd.runtimes.local.oci import config as oci
from sandboxd.runtimes.local.oci.agent_mount import AgentMount
from sandboxd.runtimes.local.oci.cli import RECORD_KEY, OciClasses
from sandboxd.runtimes.local.oci.scratch import ScratchVolume
from sandboxd.runtimes.local.oci.snapshots import SnapshotFiles
from sandboxd.runtimes.local.oci.stop import end_container, remove_if_stateless
from sandboxd.runtimes.local.oci.userns import OwnedNamespace

log = logging.getLogger("sandboxd.runtime")
READY_TIMEOUT = 10.0
FREEZE_TIMEOUT = 5.0  # a process in uninterruptible sleep (disk, FUSE) holds a freeze back
ENTRYPOINT_FAILED = "sandboxd: entrypoint failed to start:"  # written by the agent (agent/main.go)
LOG_FIFO = "log.fifo"


class LocalRuntime:
    name = "local"

    def __init__(
        self,
        *,
        data_dir: Path,
        images: ImageStore,
        network: Network,
        oci_classes: OciClasses,
        agent_binary: Path,
        id_base: int,
        id_size: int,
        dns_upstream: list[str] | None = None,
        broker_upstream_ca: Path | None = None,
        scratch_size_gb: int = 64,
        blocked_cidrs: Sequence[ipaddress.IPv4Network] = (),
        bind_allow: Sequence[Path] = (),
    ) -> None:
        self.bind_allow = list(bind_allow)
        self.root = data_dir / "sandboxes"
        self.images = images
        self.scratch = ScratchVolume(data_dir, scratch_size_gb)
        self.snapshots = SnapshotFiles(data_dir, self.scratch)
        self.network = network
        self.oci = oci_classes
        self.agent_mount = AgentMount(agent_binary, data_dir / "agent")
        self.log_pipes = LogPipes(data_dir / "logs")  # kept after the sandbox, until its record is purged
        self.idmap = oci.IdMap(id_base, id_size)
        self.networks = SandboxNetworks(
            network,
            data_dir,
            blocked_cidrs=blocked_cidrs,
            dns_upstream=dns_upstream,
            broker_upstream_ca=broker_upstream_ca,
        )
        # A refusal of the sandbox's egress policy shows in its log, or it looks like broken DNS.
        self.networks.refused_log.note = self.log_pipes.note

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

    async def _boot(self, sandbox_id: str, home: Path, spec: SandboxSpec, record: dict[str, Any]) -> None:
        """Starts the container on the root mounted at home/rootfs and wires its network: the
        agent answers when it returns. record holds its runtime class and address; gets its pid."""
        cli = self.oci.of(record)
        # Staged again at each boot (a stop's clear_home unmounts them): checked as at create.
        volumes = await asyncio.to_thread(self._volume_mounts, home, spec)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        userns: OwnedNamespace | None = None
        try:
            listener.bind(str(home / "agent.sock"))
            listener.listen(128)
            userns = await OwnedNamespace.make(self._namespace_owner(record["address"]), self.idmap)
            config = oci.build_config(
                rootfs=str(home / "rootfs"),
                hostname=_hostname(sandbox_id),
                env=spec.env,
                cwd=spec.cwd or "/",
                limits=spec.limits,
                cgroup_path=f"/{cgroups.name(sandbox_id)}",
                idmap=self.idmap,
                agent_host_dir=str(self.agent_mount.directory),
                agent_config=json.dumps({"entrypoint": spec.entrypoint, "cwd": spec.cwd, "user": spec.user}),
                userns_path=userns.path,
                rlimits=oci.own_rlimits() if cli.own_rlimits else None,
                volumes=volumes,
            )
            (home / "config.json").write_text(json.dumps(config))
            pipe = self.log_pipes.open(sandbox_id, home / LOG_FIFO, create=True)
            log_fd = pipe.writer()
            try:
                # The listening socket becomes the agent's stdin; the log FIFO its stdout/stderr.
                await cli.create(
                    sandbox_id,
                    home,
                    home / "pid",
                    stdin=listener.fileno(),
                    stdout=log_fd,
                    prefix=[] if cli.own_rlimits else oci.prlimit_command(),
                    on_failure=lambda: self.log_pipes.tail(sandbox_id),
                )
            finally:
                os.close(log_fd)
        finally:
            listener.close()
            if userns is not None:  # the sandbox's processes hold its namespace from here
                await userns.close()
        pid = int((home / "pid").read_text())
        record["pid"] = pid
        # The policy holds before the sandbox's first process runs.
        await self.networks.attach(sandbox_id, pid, record)
        await cli.start(sandbox_id)
        await self._wait_ready(sandbox_id)

    def _namespace_owner(self, address: str) -> int:
        """The host uid that owns the sandbox's user namespace (userns.py): one per running
        sandbox, above the ids mapped into sandboxes, so that the budgets the kernel charges to it
        are the sandbox's alone."""
        return self.idmap.host_id + self.idmap.size + self.network.slot(address)

    def _prepare_root(
        self,
        sandbox_id: str,
        home: Path,
        lowers: list[Path],
        marker: dict[str, Any],
        address: str | None,
        spec: SandboxSpec,
    ) -> None:
        if spec.limits.disk_mb is None:  # only records from before disk limits lack one; never created again
            raise RuntimeFailure("a sandbox needs a disk limit")
        home.mkdir(parents=True, exist_ok=True)
        if spec.snapshot:
            volume = self.snapshots.restore(spec.snapshot, sandbox_id, home, spec.limits.disk_mb)
        else:
            volume = self.scratch.create(sandbox_id, spec.limits.disk_mb)
        rootfs.prepare(
            home,
            volume,
            lowers,
            marker,
            self.idmap.host_id,
            self.networks.etc_files(_hostname(sandbox_id), address),
            self.networks.ca.pem if spec.transforms else None,
            restored=bool(spec.snapshot),
        )

    def _volume_mounts(self, home: Path, spec: SandboxSpec) -> list[dict[str, Any]]:
        """The config.json mounts of the spec's volumes. A bind's host directory is opened safely
        and staged under the sandbox's home now (oci/binds.py): the runtime binds what was checked."""
        found = []
        for i, volume in enumerate(spec.volumes):
            read_only = bool(volume.get("read_only"))
            if volume["type"] == "bind":
                source = home / "binds" / str(i)
                field = f"volumes[{i}].host_path"
                binds.stage(self.bind_allow, volume["host_path"], field, source, read_only, self._private())
            else:
                source = self.volume_path(volume["volume_id"])
                if not source.is_dir():  # deleted between the create's check and now
                    field = f"volumes[{i}].name"
                    raise InvalidRequest(field, f"{field}: volume {volume.get('name')!r} no longer exists")
            found.append(oci.volume_mount(str(source), volume["mount_path"], read_only))
        return found

    async def _wait_ready(self, sandbox_id: str) -> None:
        """Returns once the agent answers: the sandbox can run commands."""
        agent = self.agent(sandbox_id, {})
        try:
            await asyncio.wait_for(agent.processes(), READY_TIMEOUT)
        except (TimeoutError, RuntimeFailure) as exc:
            log = self.log_pipes.tail(sandbox_id)
            if ENTRYPOINT_FAILED in log:  # the agent's own words: the request named a bad program
                raise InvalidRequest("entrypoint", log.split(ENTRYPOINT_FAILED, 1)[1].strip()) from exc
            raise RuntimeFailure(f"the sandbox did not become ready: {log or exc}") from exc

    async def _stop_container(self, sandbox_id: str, record: dict[str, Any]) -> bool:
        """Ends the container: its processes, cgroups and runtime state (oci/stop.py: no runtime
        binary, a millisecond or two). False if any of its processes outlived the wait."""
        cli = self.oci.of(record)
        pid = record.get("pid")
        if isinstance(pid, int):
            if await end_container(sandbox_id, pid, cli.state_root / sandbox_id):
                return True
            # Not proven gone in time (its init was killed all the same): the binary tries too.
            await cli.kill(sandbox_id, "KILL")
        # No pid (a create cut short, a leftover found by the sweep): the binary's delete, which
        # kills what is left (thawed: a frozen process does not die of it).
        cgroups.thaw(sandbox_id)
        await cli.delete(sandbox_id)
        await asyncio.to_thread(cgroups.remove, sandbox_id)
        await asyncio.to_thread(remove_if_stateless, cli.state_root / sandbox_id)
        return not cgroups.populated(sandbox_id)

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
        try:
            await asyncio.to_thread(self.scratch.remove, sandbox_id)
        except Exception as exc:
            failures.append(exc)
        if failures:
            raise failures[0]

    # -- StopStart -------------------------------------------------------------------------------

    async def stop_sandbox(self, sandbox_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Ends its processes, cgroups, network and mounts, keeping its scratch volume (the
        writable layer) and the image marker; returns the record without pid and address. Safe to
        call again on a stopped or half-started sandbox (a restart's reconcile does)."""
        stopped, network = await asyncio.gather(
            self._stop_container(sandbox_id, record),
            self.networks.remove(sandbox_id, record),
            return_exceptions=True,
        )
        self.log_pipes.close(sandbox_id)
        if isinstance(stopped, BaseException):
            raise stopped
        if not stopped:  # as in destroy: its address is not given to another
            raise RuntimeFailure(f"sandbox {sandbox_id} did not stop; try again")
        await asyncio.to_thread(rootfs.clear_home, self.root / sandbox_id)
        if not isinstance(network, BaseException) and network:
            raise network[0]
        if isinstance(network, BaseException):
            raise network
        # Released last, once nothing failed: a stop that raises keeps the address in the stored
        # record, so only the later delete or stop releases it — never twice, never another's.
        self.networks.release(record)
        return {**{k: v for k, v in record.items() if k != "pid"}, "address": None}

    async def start_sandbox(self, sandbox_id: str, spec: SandboxSpec, record: dict[str, Any]) -> dict[str, Any]:
        """Boots a stopped sandbox again on its kept writable layer, with a new address; its egress
        policy and transforms are the record's. On failure it is left stopped."""
        home = self.root / sandbox_id
        volume = self.scratch.path / sandbox_id
        record = {**record, "address": None}
        try:
            marker = await asyncio.to_thread(rootfs.read_marker, home)
            if not volume.is_dir():
                raise RuntimeFailure(f"sandbox {sandbox_id} has no writable layer to start from")
            image = self.images.get(str(marker["image"]))
            extra = [str(layer) for layer in marker["layers"][len(image.layer_ids) :]]
            lowers = [*reversed(self.images.layer_paths(extra)), *reversed(image.layers)]  # as create's
            record["address"] = address = await self.network.allocate()
            etc = self.networks.etc_files(_hostname(sandbox_id), address)
            ca = self.networks.ca.pem if record.get("transforms") else None
            await asyncio.to_thread(rootfs.remount, home, volume, lowers, self.idmap.host_id, etc, ca)
            await self._boot(sandbox_id, home, spec, record)
        except BaseException:
            try:
                await asyncio.shield(self.stop_sandbox(sandbox_id, record))
            except Exception:  # the start's own error is the one to report
                log.exception("cleanup after a failed start failed", extra={"sandbox_id": sandbox_id})
            raise
        return record

    # -- VolumeHost --------------------------------------------------------------------------------

    def check_bind(self, host_path: str, field: str) -> None:
        binds.check(self.bind_allow, host_path, field, self._private())

    def _private(self) -> tuple[Path, ...]:
        """What no bind may show a sandbox: the data dir (every sandbox's root, the database, the
        key) and the image store. Compared by device and inode: its main subdirectories too, as a
        bind mount of one elsewhere has an ancestry of its own."""
        return (self.root.parent, self.root, self.scratch.path, self.images.root)

    def volume_path(self, volume_id: str) -> Path:
        return self.scratch.path / volume_id / "data"

    async def create_volume(self, volume_id: str, size_mb: int) -> None:
        """A subvolume whose qgroup caps what every sandbox together writes in it; its data dir is
        owned by the sandboxes' root (host uid id_base), so they can write there."""

        def make() -> None:
            self.scratch.create(volume_id, size_mb)
            data = self.volume_path(volume_id)
            data.mkdir(mode=0o755)
            os.chown(data, self.idmap.host_id, self.idmap.host_id)

        try:
            await asyncio.to_thread(make)
        except BaseException:
            await asyncio.to_thread(self.scratch.remove, volume_id)
            raise

    async def remove_volume(self, volume_id: str) -> None:
        await asyncio.to_thread(self.scratch.remove, volume_id)

    def volume_ids(self) -> set[str]:
        return self.scratch.volume_ids()

    # -- Snapshotter -------------------------------------------------------------------------------

    async def take_snapshot(self, sandbox_id: str, record: dict[str, Any], snapshot_id: str) -> dict[str, Any]:
        """Snapshots a sandbox's writable layer. A running one is frozen for the ioctl (so no
        write is half in it) and thawed after; a paused one stays frozen, a stopped one has no
        processes. Returns {"image": its catalog image, "layers": the layers over the image's}."""
        froze = cgroups.populated(sandbox_id) and not cgroups.freezing(sandbox_id)
        if froze:
            await self.pause(sandbox_id, record)
        try:
            marker = await asyncio.to_thread(self.snapshots.take, self.root / sandbox_id, sandbox_id, snapshot_id)
        finally:
            if froze:
                cgroups.thaw(sandbox_id)
        image = self.images.get(str(marker["image"]))
        return {"image": image.name, "layers": [str(layer) for layer in marker["layers"][len(image.layer_ids) :]]}

    async def remove_snapshot(self, snapshot_id: str) -> None:
        await asyncio.to_thread(self.snapshots.remove, snapshot_id)

    def snapshot_ids(self) -> set[str]:
        return self.snapshots.ids()

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
        for sandbox_id in self.scratch.ids():
            found.setdefault(sandbox_id, {})
        orphans = sorted(set(found) - known)
        for sandbox_id in orphans:
            await self.destroy(sandbox_id, found[sandbox_id])
        await self.networks.sweep(known)
        return orphans

    def agent(self, sandbox_id: str, record: dict[str, Any]) -> Agent:
        path = str(self.root / sandbox_id / "agent.sock")

        async def connect() -> AgentConnection:
            return await unix_connector(path)

        return Agent(connect)

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

    # -- Pausable -------------------------------------------------------------------------------

    async def pause(self, sandbox_id: str, record: dict[str, Any]) -> None:
        """Writes the freezer directly (microseconds) rather than through `crun pause` / `runc
        pause`, which fork a binary to write the same file and, outside create's namespace on a
        hybrid host, would look for the group in the v2 hierarchy where crun did not put it."""
        if not cgroups.freeze(sandbox_id):
            raise RuntimeFailure(f"sandbox {sandbox_id} could not be frozen: its cgroup is gone")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FREEZE_TIMEOUT
        delay = 0.0002
        while (done := cgroups.frozen(sandbox_id)) is not True:
            if done is None:
                raise RuntimeFailure(f"sandbox {sandbox_id} could not be frozen: its cgroup is gone")
            if loop.time() > deadline:
                cgroups.thaw(sandbox_id)
                raise RuntimeFailure(
                    f"sandbox {sandbox_id} did not freeze within {FREEZE_TIMEOUT:g} s (a process of it is in "
                    "uninterruptible sleep); it runs on"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def resume(self, sandbox_id: str, record: dict[str, Any]) -> None:
        cgroups.thaw(sandbox_id)

    # -- EgressControl ---------------------------------------------------------------------------

    async def set_egress(self, sandbox_id: str, record: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
        return await self.networks.set_egress(sandbox_id, record, rules)

    def egress_record(self, record: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:  # EgressRecords
        return self.networks.egress_record(record, rules)

    async def egress_refusals(self, sandbox_id: str) -> dict[str, int]:
        return await self.networks.refusals(sandbox_id)

    async def recent_refusals(self, sandbox_id: str) -> list[dict[str, str]]:
        return await self.networks.recent_refusals(sandbox_id)

    # -- LayerBuilder ----------------------------------------------------------------------------

    async def ensure_image(
        self, name: str, progress: Progress | None = None, image_auth: ImageAuth | None = None
    ) -> list[str]:
        """Pulls a registry reference that is not here yet; returns the image's layer ids."""
        await self._pull_if_missing(name, progress, image_auth)
        return list(self.images.get(name).layer_ids)

    async def _pull_if_missing(self, name: str, progress: Progress | None, image_auth: ImageAuth | None) -> None:
        if looks_like_reference(name) and not self.images.exists(name):

            def pulled(ref: str, done: int, total: int) -> None:
                if progress:
                    progress("pulling", f"{ref}: {done / 1e6:.1f} of {total / 1e6:.1f} MB")

            credentials = Credentials(*image_auth) if image_auth else None
            await asyncio.to_thread(self.images.pull, name, pulled, credentials)

    def image_config(self, name: str) -> dict[str, Any]:
        return self.images.get(name).config

    def cached_layer(self, key: str) -> str | None:
        return self.images.cached_layer(key)

    def cache_layer(self, key: str, layer_id: str) -> None:
        self.images.cache_layer(key, layer_id)

    def save_image(self, name: str, base: str, layers: list[str], config: dict[str, Any], meta: dict[str, Any]) -> None:
        base_image = self.images.get(base)
        self.images.create_image(name, [*base_image.layer_ids, *layers], config, {**meta, "base": base})

    def delete_image(self, name: str) -> None:
        in_use, _ = rootfs.images_in_use(self.root.parent)
        self.images.delete(name, lambda n: n in in_use)

    async def commit(self, sandbox_id: str, record: dict[str, Any]) -> str:
        """Stops the sandbox and keeps its writable layer as a new image layer; returns its id.
        The sandbox must still be destroyed afterwards (it has no root any more)."""
        # With its init gone the kernel has killed the rest of its pid namespace: nothing writes
        # to the upper dir any more. Otherwise the layer is not taken.
        if not await self._stop_container(sandbox_id, record):
            raise RuntimeFailure(f"sandbox {sandbox_id} did not stop; its layer is not kept")
        home = self.root / sandbox_id
        await asyncio.to_thread(mounts.unmount, home / "rootfs", lazy=False)
        await asyncio.to_thread(rootfs.remove_mounts, home)
        upper = self.scratch.path / sandbox_id / "upper"
        if not upper.exists():  # a sandbox from before disk limits
            upper = home / "upper"
        return await asyncio.to_thread(self.images.add_layer, upper)


def _hostname(sandbox_id: str) -> str:
    return sandbox_id.replace("_", "-")[:63]
