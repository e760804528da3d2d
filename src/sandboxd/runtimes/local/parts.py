"""What every part of the local runtime works with (runtime.py puts the parts together): the
sandboxes' directories, scratch volumes, image store, network plane, runtime classes and log pipes,
and the few steps each part needs (ending a container, reaching its agent)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sandboxd.runtimes.agent_client import Agent, AgentConnection, unix_connector
from sandboxd.runtimes.local.images.catalog import ImageStore
from sandboxd.runtimes.local.logpipe import LogPipes
from sandboxd.runtimes.local.network.bridge import Network
from sandboxd.runtimes.local.network.plane import SandboxNetworks
from sandboxd.runtimes.local.oci import cgroups, checkpoints
from sandboxd.runtimes.local.oci import config as oci
from sandboxd.runtimes.local.oci.agent_mount import AgentMount
from sandboxd.runtimes.local.oci.cli import OciClasses
from sandboxd.runtimes.local.oci.scratch import ScratchVolume
from sandboxd.runtimes.local.oci.snapshots import SnapshotFiles
from sandboxd.runtimes.local.oci.stop import end_container, remove_if_stateless

log = logging.getLogger("sandboxd.runtime")


class RuntimeParts:
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
        self.checkpoint_images = checkpoints.CheckpointImages(data_dir)
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

    def _private(self) -> tuple[Path, ...]:
        """What no bind may show a sandbox: the data dir (every sandbox's root, the database, the
        key) and the image store. Compared by device and inode: its main subdirectories too, as a
        bind mount of one elsewhere has an ancestry of its own."""
        return (self.root.parent, self.root, self.scratch.path, self.images.root)

    def volume_path(self, volume_id: str) -> Path:
        return self.scratch.path / volume_id / "data"

    def agent(self, sandbox_id: str, record: dict[str, Any]) -> Agent:
        path = str(self.root / sandbox_id / "agent.sock")

        async def connect() -> AgentConnection:
            return await unix_connector(path)

        return Agent(connect)

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


def sandbox_hostname(sandbox_id: str) -> str:
    return sandbox_id.replace("_", "-")[:63]
