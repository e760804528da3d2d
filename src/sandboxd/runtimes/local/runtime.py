"""The embedded runtime: runc (or crun) driven directly, no daemon.

A sandbox is a directory ``sandboxes/<id>`` holding its bundle (config.json), the merged root, the
agent's socket and the FIFO its entrypoint log comes through; a btrfs subvolume ``scratch/<id>``
with a disk quota holding its overlay upper and work dirs (scratch.py); a runc container of the same
id; cgroups named ``sandboxd-<id>``; and a network namespace that dies with its processes. Everything
is named after the id, so a restarted server can find what a crash left behind and remove it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import stat
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from sandboxd.domain import SandboxSpec
from sandboxd.errors import Conflict, InvalidRequest, RuntimeFailure
from sandboxd.runtimes import datalock
from sandboxd.runtimes.agent_client import Agent, AgentConnection, unix_connector
from sandboxd.runtimes.base import Liveness
from sandboxd.runtimes.hostnets import InwardNetworks
from sandboxd.runtimes.local import mounts, oci, server_process
from sandboxd.runtimes.local.agent_mount import AgentMount
from sandboxd.runtimes.local.broker import Broker, CertificateAuthority, Transform
from sandboxd.runtimes.local.dns import Resolver, upstreams_from
from sandboxd.runtimes.local.egress import Attached, EgressTable, Policy
from sandboxd.runtimes.local.images import ImageStore
from sandboxd.runtimes.local.logpipe import LogPipe, make_fifo
from sandboxd.runtimes.local.network import Network, veth_name
from sandboxd.runtimes.local.registry import Credentials, looks_like_reference, parse_reference
from sandboxd.runtimes.local.scratch import ScratchVolume
from sandboxd.runtimes.local.userns import OwnedNamespace

log = logging.getLogger("sandboxd.runtime")
CGROUP_ROOT = Path("/sys/fs/cgroup")
READY_TIMEOUT = 10.0
ENTRYPOINT_FAILED = "sandboxd: entrypoint failed to start:"  # written by the agent (agent/main.go)
LOG_FIFO = "log.fifo"


def choose_binary(preference: str) -> str:
    """crun where cgroup v2 is the only hierarchy (crun 1.8 refuses hybrid hosts), else runc."""
    if preference != "auto":
        if not shutil.which(preference):
            raise RuntimeFailure(f"OCI runtime {preference!r} is not installed")
        return preference
    unified_only = (CGROUP_ROOT / "cgroup.controllers").exists()
    for candidate in ["crun", "runc"] if unified_only else ["runc", "crun"]:
        if shutil.which(candidate):
            return candidate
    raise RuntimeFailure("neither runc nor crun is installed")


class LocalRuntime:
    name = "local"

    def __init__(
        self,
        *,
        data_dir: Path,
        images: ImageStore,
        network: Network,
        binary: str,
        agent_binary: Path,
        id_base: int,
        id_size: int,
        dns_upstream: list[str] | None = None,
        broker_upstream_ca: Path | None = None,
        scratch_size_gb: int = 64,
        blocked_cidrs: Sequence[ipaddress.IPv4Network] = (),
    ) -> None:
        self.root = data_dir / "sandboxes"
        self.state_dir = data_dir / "runc"
        self.log_dir = data_dir / "logs"  # kept after the sandbox, until its record is purged
        self.images = images
        self.scratch = ScratchVolume(data_dir, scratch_size_gb)
        self.network = network
        self.binary = binary
        self.agent_mount = AgentMount(agent_binary, data_dir / "agent")
        self._log_pipes: dict[str, LogPipe] = {}
        self.idmap = oci.IdMap(id_base, id_size)
        # Blocked ranges and the host's own networks: network.watch_host keeps them current.
        self.inward = InwardNetworks(blocked_cidrs)
        self.egress = EgressTable(network.table, self.inward)
        self._attached: dict[str, Attached] = {}  # sandbox address → its id, egress policy, transforms
        self._background: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self.resolver = Resolver(
            str(network.gateway),
            upstreams_from(dns_upstream or []),
            self._attached.get,
            self.egress,
            subnet=network.subnet,  # type: ignore[arg-type]
            inward=self.inward,
            rate=network.dns_rate,
        )
        self.ca = CertificateAuthority(data_dir / "broker")
        self.broker = Broker(
            str(network.gateway),
            self.ca,
            lambda address: list(found.transforms) if (found := self._attached.get(address)) else [],
            self._broker_allowed,
            upstream_ca=broker_upstream_ca,
        )

    async def start(self) -> None:
        server_process.prepare()
        self.agent_mount.check()
        self._lock_data_dir()
        self.agent_mount.mount()
        self.root.mkdir(parents=True, exist_ok=True)
        # Traverse only (the sandboxes' mapped root must reach its rootfs): host users cannot list
        # sandbox ids, so cannot reach a setuid file a sandbox planted in its root.
        os.chmod(self.root, 0o711)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.images.remove_partials()
        await asyncio.to_thread(self.scratch.setup)
        await self._wait_for_stragglers()
        await self.network.setup_host()
        # The set is filled before any sandbox's chain is applied (apply reads it).
        await asyncio.to_thread(self.inward.refresh)
        await self.network.set_inward(self.inward.networks)
        self._watch = asyncio.get_running_loop().create_task(self.network.watch_host(self.inward))
        await self.egress.load()
        await self.resolver.start()
        await self.broker.start()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        await self.resolver.stop()
        await self.broker.stop()
        await asyncio.gather(*self._background, return_exceptions=True)
        for pipe in self._log_pipes.values():
            pipe.close()
        self._log_pipes.clear()
        # Running sandboxes keep their own bind of it; a restarted server mounts a new one.
        self.agent_mount.unmount()
        await asyncio.to_thread(self.scratch.teardown)

    def _lock_data_dir(self) -> None:
        """One server per data directory: a second would sweep the first's sandboxes as orphans."""
        datalock.lock(self.root.parent)
        # The agent's socket lives at <data_dir>/sandboxes/<id>/agent.sock: unix socket paths
        # are limited to 107 bytes.
        longest = len(str(self.root / "sbx_01234567890123456789012345" / "agent.sock"))
        if longest > 107:
            raise RuntimeFailure(f"the data directory path is too long for unix sockets: {self.root.parent}")

    async def _wait_for_stragglers(self, limit: float = 15.0) -> None:
        """A killed server's `runc create` can still be running: reconciling before it ends would
        miss the container it is about to leave behind."""
        marker = str(self.state_dir).encode()
        deadline = asyncio.get_running_loop().time() + limit
        while asyncio.get_running_loop().time() < deadline:
            busy = False
            for entry in os.listdir("/proc"):
                if entry.isdigit() and entry != str(os.getpid()):
                    try:
                        with open(f"/proc/{entry}/cmdline", "rb") as f:
                            busy = busy or marker in f.read()
                    except OSError:
                        continue
            if not busy:
                return
            await asyncio.sleep(0.05)

    # -- create / destroy ------------------------------------------------------------------------

    def check(self, spec: SandboxSpec) -> None:
        if looks_like_reference(spec.image) and not self.images.exists(spec.image):
            parse_reference(spec.image)  # a malformed reference is a 400 now; the pull comes in create
            return
        self.images.get(spec.image)

    # -- images and template layers ------------------------------------------------------------

    async def ensure_image(
        self,
        name: str,
        progress: Callable[[str, str], None] | None = None,
        image_auth: tuple[str, str] | None = None,
    ) -> list[str]:
        """Pulls a registry reference that is not here yet; returns the image's layer ids."""
        await self._pull_if_missing(name, progress, image_auth)
        return list(self.images.get(name).layer_ids)

    async def _pull_if_missing(
        self, name: str, progress: Callable[[str, str], None] | None, image_auth: tuple[str, str] | None
    ) -> None:
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
        in_use, _ = images_in_use(self.root.parent)
        self.images.delete(name, lambda n: n in in_use)

    async def create(
        self,
        sandbox_id: str,
        spec: SandboxSpec,
        progress: Callable[[str, str], None] | None = None,
        image_auth: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        await self._pull_if_missing(spec.image, progress, image_auth)
        image = self.images.get(spec.image)
        spec = spec.resolved(image.config)
        # overlayfs wants the top layer first.
        lowers = [*reversed(self.images.layer_paths(spec.layers)), *reversed(image.layers)]
        home = self.root / sandbox_id
        record: dict[str, Any] = {"address": None}
        try:
            # Every sandbox has an address: its ports are reached through it, and its egress
            # policy (deny all for internet_access=false) decides what it reaches.
            record["address"] = await self.network.allocate()
            policy = Policy.of(spec.egress_rules)
            record["egress"] = policy.record()
            record["transforms"] = spec.transforms
            marker = {"image": spec.image, "layers": [*image.layer_ids, *spec.layers]}
            await asyncio.to_thread(
                self._prepare_root,
                sandbox_id,
                home,
                lowers,
                marker,
                record["address"],
                bool(spec.transforms),
                spec.limits.disk_mb,
            )
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            userns: OwnedNamespace | None = None
            try:
                listener.bind(str(home / "agent.sock"))
                listener.listen(128)
                userns = await OwnedNamespace.make(self._namespace_owner(record["address"]), self.idmap)
                config = oci.build_config(
                    rootfs=str(home / "rootfs"),
                    hostname=sandbox_id.replace("_", "-")[:63],
                    env=spec.env,
                    cwd=spec.cwd or "/",
                    limits=spec.limits,
                    cgroup_path=f"/sandboxd-{sandbox_id}",
                    idmap=self.idmap,
                    agent_host_dir=str(self.agent_mount.directory),
                    agent_config=json.dumps({"entrypoint": spec.entrypoint, "cwd": spec.cwd, "user": spec.user}),
                    userns_path=userns.path,
                )
                (home / "config.json").write_text(json.dumps(config))
                pipe = self._open_log_pipe(sandbox_id, create=True)
                log_fd = pipe.writer()
                try:
                    # The listening socket becomes the agent's stdin; the log FIFO its stdout/stderr.
                    # No session keyring: each would be a key of the sandboxes' shared root uid,
                    # and the kernel allows a uid 200 (kernel.keys.maxkeys) on the whole host. The
                    # keyring calls are refused inside anyway.
                    await self._runc(
                        "create",
                        "--no-new-keyring",
                        "--bundle",
                        str(home),
                        "--pid-file",
                        str(home / "pid"),
                        sandbox_id,
                        stdin=listener.fileno(),
                        stdout=log_fd,
                        prefix=oci.prlimit_command(),
                    )
                finally:
                    os.close(log_fd)
            finally:
                listener.close()
                if userns is not None:  # the sandbox's processes hold its namespace from here
                    await userns.close()
            pid = int((home / "pid").read_text())
            record["pid"] = pid
            await self.network.attach(sandbox_id, pid, record["address"])
            # The policy holds before the sandbox's first process runs.
            await self.egress.apply(sandbox_id, record["address"], policy)
            self._attached[record["address"]] = _attached(sandbox_id, record)
            await self._runc("start", sandbox_id)
            await self._wait_ready(sandbox_id)
        except BaseException:
            self._close_log_pipe(sandbox_id)
            try:
                await asyncio.shield(self.destroy(sandbox_id, record))
            except Exception:  # the create's own error is the one to report
                log.exception("cleanup after a failed create failed", extra={"sandbox_id": sandbox_id})
            raise
        return record

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
        transforms: bool,
        disk_mb: int | None,
    ) -> None:
        if disk_mb is None:  # only records from before disk limits lack one, and they are not created again
            raise RuntimeFailure("a sandbox needs a disk limit")
        (home / "rootfs").mkdir(parents=True, exist_ok=True)
        # Image deletion and layer gc read this: what the sandbox's root is built on.
        (home / "image").write_text(json.dumps(marker))
        # All the sandbox writes lands in its subvolume, which its quota bounds.
        volume = self.scratch.create(sandbox_id, disk_mb)
        for sub in ("upper", "work"):
            (volume / sub).mkdir()
        # The overlay root takes its owner from the upper dir: root of the sandbox's user namespace.
        os.chown(volume / "upper", self.idmap.host_id, self.idmap.host_id)
        mounts.mount_overlay(lowers, volume / "upper", volume / "work", home / "rootfs")
        hostname = sandbox_id.replace("_", "-")[:63]
        files = {
            "hostname": f"{hostname}\n",
            "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{address or '127.0.1.1'}\t{hostname}\n",
            # The server's resolver on the bridge: it answers only what the egress policy allows.
            "resolv.conf": f"nameserver {self.network.gateway}\n" if address else "",
        }
        write_etc_files(home / "rootfs", files, self.idmap.host_id)
        if transforms:
            install_ca(home / "rootfs", self.ca.pem, self.idmap.host_id)

    async def _wait_ready(self, sandbox_id: str) -> None:
        """Returns once the agent answers: the sandbox can run commands."""
        agent = self.agent(sandbox_id, {})
        try:
            await asyncio.wait_for(agent.processes(), READY_TIMEOUT)
        except (TimeoutError, RuntimeFailure) as exc:
            log = self.read_log_tail(sandbox_id)
            if ENTRYPOINT_FAILED in log:  # the agent's own words: the request named a bad program
                raise InvalidRequest("entrypoint", log.split(ENTRYPOINT_FAILED, 1)[1].strip()) from exc
            raise RuntimeFailure(f"the sandbox did not become ready: {log or exc}") from exc

    def _open_log_pipe(self, sandbox_id: str, create: bool = False) -> LogPipe:
        fifo = self.root / sandbox_id / LOG_FIFO
        if create:
            make_fifo(fifo)
        pipe = LogPipe(fifo, Path(self.logs_path(sandbox_id)))
        pipe.open()
        self._log_pipes[sandbox_id] = pipe
        return pipe

    def _close_log_pipe(self, sandbox_id: str) -> None:
        pipe = self._log_pipes.pop(sandbox_id, None)
        if pipe is not None:
            pipe.close()

    def read_log_tail(self, sandbox_id: str, size: int = 2000) -> str:
        pipe = self._log_pipes.get(sandbox_id)
        if pipe is not None:
            pipe.drain_all()
        try:
            data = Path(self.logs_path(sandbox_id)).read_bytes()
        except OSError:
            return ""
        return data[-size:].decode(errors="replace").strip()

    async def _stop_container(self, sandbox_id: str, record: dict[str, Any]) -> bool:
        """Kill, watch the init's pid go, then delete (`delete --force` alone polls in 100 ms
        steps). False if the init outlived the wait."""
        gone = True
        pid = record.get("pid")
        if isinstance(pid, int):
            # Dying takes CPU time too: at a small quota (cpu=0.01) the killed processes would
            # still be exiting when their cgroup is removed, and it would be left behind.
            self._lift_cpu_limit(sandbox_id)
            await self._runc("kill", sandbox_id, "KILL", check=False)
            gone = await _wait_gone(pid)
        await self._runc("delete", "--force", sandbox_id, check=False)
        return gone

    async def destroy(self, sandbox_id: str, record: dict[str, Any]) -> None:
        await self._stop_container(sandbox_id, record)
        self._close_log_pipe(sandbox_id)
        # Every step runs even if one before it failed; the first failure is raised at the end.
        failures: list[Exception] = []
        steps: list[Callable[[], Awaitable[None]]] = [
            lambda: asyncio.to_thread(self._remove_home, self.root / sandbox_id),
            lambda: asyncio.to_thread(self.scratch.remove, sandbox_id),
            # The veth goes with the namespace; one left by a crash between steps goes here.
            lambda: self.network.delete_veth(veth_name(sandbox_id), missing_ok=True),
        ]
        for step in steps:
            try:
                await step()
            except Exception as exc:
                failures.append(exc)
        self._remove_cgroups(sandbox_id)
        address = record.get("address")
        if isinstance(address, str):
            self._attached.pop(address, None)
        self.resolver.refused.pop(sandbox_id, None)
        try:
            await self.egress.remove(sandbox_id, address if isinstance(address, str) else None)
        except Exception as exc:
            failures.append(exc)
        self.network.release(address if isinstance(address, str) else None)
        if failures:
            raise failures[0]

    async def commit(self, sandbox_id: str, record: dict[str, Any]) -> str:
        """Stops the sandbox and keeps its writable layer as a new image layer; returns its id.
        The sandbox must still be destroyed afterwards (it has no root any more)."""
        # With its init gone the kernel has killed the rest of its pid namespace: nothing writes
        # to the upper dir any more. Otherwise the layer is not taken.
        if not await self._stop_container(sandbox_id, record):
            raise RuntimeFailure(f"sandbox {sandbox_id} did not stop; its layer is not kept")
        home = self.root / sandbox_id
        await asyncio.to_thread(mounts.unmount, home / "rootfs", lazy=False)
        await asyncio.to_thread(self._remove_home_mounts, home)
        upper = self.scratch.path / sandbox_id / "upper"
        if not upper.exists():  # a sandbox from before disk limits
            upper = home / "upper"
        return await asyncio.to_thread(self.images.add_layer, upper)

    def _remove_home_mounts(self, home: Path) -> None:
        for point in mounts.mounts_under(home):
            mounts.unmount(point)
        if mounts.mounts_under(home):
            raise RuntimeFailure(f"could not unmount everything under {home}")

    def _remove_home(self, home: Path) -> None:
        self._remove_home_mounts(home)  # never rmtree through a mount into someone else's files
        shutil.rmtree(home, ignore_errors=True)

    def _lift_cpu_limit(self, sandbox_id: str) -> None:
        name = f"sandboxd-{sandbox_id}"
        for path, unlimited in (
            (CGROUP_ROOT / name / "cpu.max", "max"),  # cgroup v2
            (CGROUP_ROOT / "cpu" / name / "cpu.cfs_quota_us", "-1"),  # v1
            (CGROUP_ROOT / "cpu,cpuacct" / name / "cpu.cfs_quota_us", "-1"),
        ):
            with contextlib.suppress(OSError):
                path.write_text(unlimited)

    def _remove_cgroups(self, sandbox_id: str) -> None:
        name = f"sandboxd-{sandbox_id}"
        for path in [CGROUP_ROOT / name, *CGROUP_ROOT.glob(f"*/{name}")]:
            with contextlib.suppress(OSError):
                path.rmdir()

    # -- inspection ------------------------------------------------------------------------------

    async def liveness(self, sandbox_id: str, record: dict[str, Any]) -> Liveness:
        out = await self._runc("state", sandbox_id, check=False)
        if not out:
            return Liveness.MISSING
        return Liveness.RUNNING if json.loads(out).get("status") == "running" else Liveness.STOPPED

    def adopt(self, sandbox_id: str, record: dict[str, Any]) -> None:
        if (self.root / sandbox_id / LOG_FIFO).exists():
            try:
                self._open_log_pipe(sandbox_id)
            except OSError:
                log.exception("could not reopen the log pipe", extra={"sandbox_id": sandbox_id})
        # Its nftables chain outlived the server, and is applied again all the same: a sandbox of
        # an older server has none, and the forward chain drops what has no chain.
        if record.get("address"):
            address = str(record["address"])
            self.network.reserve(address)
            self._attached[address] = found = _attached(sandbox_id, record)
            task = asyncio.get_running_loop().create_task(self.egress.apply(sandbox_id, address, found.policy))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _broker_allowed(self, sandbox_address: str, name: str | None, destination: str) -> bool:
        found = self._attached.get(sandbox_address)
        if found is None or found.policy.decide_address(destination) == "deny":
            return False
        if name is None:
            return found.policy.default == "allow"
        return found.policy.decide(name) == "allow"

    async def set_egress(self, sandbox_id: str, record: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
        address = record.get("address")
        if not isinstance(address, str):
            raise Conflict(f"sandbox {sandbox_id} has no network interface (created by an older server)")
        policy = Policy.of(rules)
        record = {**record, "egress": policy.record()}
        # Lookups still being answered under the old policy see it is no longer current.
        self._attached[address] = _attached(sandbox_id, record)
        await self.egress.apply(sandbox_id, address, policy)
        return record

    async def egress_refusals(self, sandbox_id: str) -> dict[str, int]:
        return {
            "refused_packets": await self.egress.refused(sandbox_id),
            "refused_lookups": self.resolver.refused[sandbox_id],
        }

    async def sweep(self, known: set[str]) -> list[str]:
        # Only what this server owns: containers in its runc root, directories under its data dir
        # and veths on its bridge. Another sandboxd on the same host keeps its own.
        found: set[str] = set()
        listing = await self._runc("list", "--format", "json", check=False)
        found.update(c["id"] for c in json.loads(listing or "null") or [])
        if self.root.exists():
            found.update(p.name for p in self.root.iterdir())
        found.update(self.scratch.ids())
        orphans = sorted(found - known)
        for sandbox_id in orphans:
            await self.destroy(sandbox_id, {})
        for veth in await self.network.orphan_veths(known):
            await self.network.delete_veth(veth)
        for orphan_tag in await self.egress.orphans(known):
            await self.egress.remove_tag(orphan_tag)
        return orphans

    def agent(self, sandbox_id: str, record: dict[str, Any]) -> Agent:
        path = str(self.root / sandbox_id / "agent.sock")

        async def connect() -> AgentConnection:
            return await unix_connector(path)

        return Agent(connect)

    def logs_path(self, sandbox_id: str) -> str:
        return str(self.log_dir / f"{sandbox_id}.log")

    def forget(self, sandbox_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.logs_path(sandbox_id))

    def oom_kills(self, sandbox_id: str) -> int:
        for path, key in (
            (CGROUP_ROOT / "memory" / f"sandboxd-{sandbox_id}" / "memory.oom_control", "oom_kill"),
            (CGROUP_ROOT / f"sandboxd-{sandbox_id}" / "memory.events", "oom_kill"),
        ):
            try:
                for line in path.read_text().splitlines():
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
            except OSError:
                continue
        return 0

    async def _runc(
        self,
        *args: str,
        stdin: int | None = None,
        stdout: int | None = None,
        check: bool = True,
        prefix: Sequence[str] = (),
    ) -> str:
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            self.binary,
            "--root",
            str(self.state_dir),
            *args,
            stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=stdout if stdout is not None else asyncio.subprocess.PIPE,
            stderr=stdout if stdout is not None else asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            if check:
                message = (err or b"").decode().strip()
                if stdout is not None:
                    message = self.read_log_tail(args[-1])
                raise RuntimeFailure(f"{self.binary} {args[0]} failed: {message}")
            return ""
        return (out or b"").decode()


async def _wait_gone(pid: int, limit: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except OSError:
            return True
        await asyncio.sleep(0.002)
    return False


def write_etc_files(rootfs: Path, files: dict[str, str], owner: int) -> None:
    """Writes files into the image's /etc without following any symlink the image put there.

    The host writes these as root before the sandbox starts, so an image whose /etc (or
    /etc/hosts) is a symlink to a host path must not redirect the write: every step is O_NOFOLLOW
    relative to a directory fd, and an /etc that is not a plain directory is refused."""
    try:
        etc = os.open(rootfs / "etc", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise InvalidRequest("image", f"the image's /etc is not a directory: {exc.strerror}") from None
    try:
        for name, text in files.items():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=etc)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=etc)
            with os.fdopen(fd, "w") as f:
                f.write(text)
                os.fchown(f.fileno(), owner, owner)
    finally:
        os.close(etc)


def images_in_use(data_dir: Path) -> tuple[set[str], set[str]]:
    """The images and layers that this data dir's sandboxes are built on."""
    names: set[str] = set()
    layers: set[str] = set()
    for path in (data_dir / "sandboxes").glob("*/image"):
        try:
            text = path.read_text()
        except OSError:
            continue
        try:
            marker = json.loads(text)
        except ValueError:  # a sandbox from before layered images: the path of images/<name>/rootfs
            names.add(unquote(Path(text.strip()).parent.name))
            continue
        names.add(str(marker.get("image")))
        layers.update(marker.get("layers", []))
    return names, layers


def _attached(sandbox_id: str, record: dict[str, Any]) -> Attached:
    transforms = tuple(Transform.of(t) for t in record.get("transforms") or [])
    return Attached(sandbox_id, Policy.of(record.get("egress")), transforms)


def install_ca(rootfs: Path, pem: bytes, owner: int) -> None:
    """Adds the broker's CA to the image's system bundle (/etc/ssl/certs/ca-certificates.crt),
    every step relative to a directory opened without following symlinks, as write_etc_files."""
    fds: list[int] = []
    try:
        fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY)
        fds.append(fd)
        for part in ("etc", "ssl", "certs"):
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                os.chown(part, owner, owner, dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                pass
            try:
                fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                raise InvalidRequest(
                    "image", f"the image's /etc/ssl/certs is not a directory: {exc.strerror}"
                ) from None
            fds.append(fd)
        name = "ca-certificates.crt"
        try:
            # Non-blocking: the image may hold a FIFO here, whose open would wait forever.
            old = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
            with os.fdopen(old, "rb") as f:
                bundle = f.read(16 * 1024 * 1024) if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else b""
        except OSError:
            bundle = b""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=fd)
        new = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd)
        with os.fdopen(new, "wb") as f:
            f.write(bundle.rstrip(b"\n") + b"\n" + pem)
            os.fchown(f.fileno(), owner, owner)
    finally:
        for fd in fds:
            os.close(fd)
