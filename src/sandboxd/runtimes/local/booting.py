"""Booting a sandbox's container on its prepared root (at create, start and restore): its bundle,
the agent's listening socket and log FIFO as its stdio, its user namespace, its network, and the wait
until the agent answers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from sandboxd.domain import SandboxSpec
from sandboxd.errors import InvalidRequest, RuntimeFailure
from sandboxd.runtimes.local.oci import binds, cgroups, checkpoints, rootfs
from sandboxd.runtimes.local.oci import config as oci
from sandboxd.runtimes.local.oci.userns import OwnedNamespace
from sandboxd.runtimes.local.parts import RuntimeParts, sandbox_hostname

log = logging.getLogger("sandboxd.runtime")
READY_TIMEOUT = 10.0
ENTRYPOINT_FAILED = "sandboxd: entrypoint failed to start:"  # written by the agent (agent/main.go)
LOG_FIFO = "log.fifo"


class Booting(RuntimeParts):
    async def _boot(
        self, sandbox_id: str, home: Path, spec: SandboxSpec, record: dict[str, Any], image: Path | None = None
    ) -> None:
        """Starts the container on the root mounted at home/rootfs and wires its network: the
        agent answers when it returns. record holds its runtime class and address; gets its pid.
        With image, its checkpointed processes are restored instead of a new init started."""
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
                hostname=sandbox_hostname(sandbox_id),
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
            if cli.runtime_class == checkpoints.CHECKPOINT_CLASS:  # runc hands it to CRIU (oci/checkpoints.py)
                config.setdefault("annotations", {})[checkpoints.ANNOTATION] = str(
                    self.checkpoint_images.path(sandbox_id) / checkpoints.CRIU_CONFIG
                )
            (home / "config.json").write_text(json.dumps(config))
            pipe = self.log_pipes.open(sandbox_id, home / LOG_FIFO, create=True)
            log_fd = pipe.writer()
            try:
                # The listening socket becomes the agent's stdin; the log FIFO its stdout/stderr.
                if image is not None:  # a restore: they take the places of the saved ones
                    await cli.restore(
                        sandbox_id,
                        image,
                        home,
                        home / "pid",
                        stdin=listener.fileno(),
                        stdout=log_fd,
                        on_failure=lambda: self.log_pipes.tail(sandbox_id),
                    )
                else:
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
        # The policy holds before the sandbox's first process runs (a restored one runs already,
        # in an empty network namespace until then: nothing leaves it).
        await self.networks.attach(sandbox_id, pid, record)
        if image is None:
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
            self.networks.etc_files(sandbox_hostname(sandbox_id), address),
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
