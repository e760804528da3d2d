"""Everything of the sandboxes' network on this host, as one piece: the bridge and its addresses, each
sandbox's egress chain, the resolver on the bridge that answers under the egress policy, and the
credential broker. They share one table of what is attached at each address (its sandbox, policy and
transforms), which only this class writes."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from sandboxd.errors import Conflict, RuntimeFailure
from sandboxd.runtimes.hostnets import InwardNetworks
from sandboxd.runtimes.local.network.bridge import Network, veth_name
from sandboxd.runtimes.local.network.broker import Broker, Transform
from sandboxd.runtimes.local.network.dns import Resolver, upstreams_from
from sandboxd.runtimes.local.network.egress import Attached, EgressTable, Policy
from sandboxd.runtimes.local.network.refusals import Refusals
from sandboxd.runtimes.local.network.tls import CertificateAuthority

log = logging.getLogger("sandboxd.network")
VETH_GRACE_SECONDS = 2.0  # how long a deleted sandbox's veth may take to go with its namespace


class SandboxNetworks:
    def __init__(
        self,
        network: Network,
        data_dir: Path,
        *,
        blocked_cidrs: Sequence[ipaddress.IPv4Network] = (),
        dns_upstream: list[str] | None = None,
        broker_upstream_ca: Path | None = None,
    ) -> None:
        self.network = network
        # Blocked ranges and the host's own networks: network.watch_host keeps them current.
        self.inward = InwardNetworks(blocked_cidrs)
        self.egress = EgressTable(network.table, self.inward)
        self._attached: dict[str, Attached] = {}  # sandbox address → its id, egress policy, transforms
        self._background: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        # The last refusals of each sandbox; the runtime sets refused_log.note to write to its log.
        self.refused_log = Refusals()
        self.resolver = Resolver(
            str(network.gateway),
            upstreams_from(dns_upstream or []),
            self._attached.get,
            self.egress,
            subnet=network.subnet,  # type: ignore[arg-type]
            inward=self.inward,
            rate=network.dns_rate,
            refusals=self.refused_log,
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

    # -- one sandbox -----------------------------------------------------------------------------

    def etc_files(self, hostname: str, address: str | None) -> dict[str, str]:
        """The sandbox's /etc/hostname, /etc/hosts and /etc/resolv.conf."""
        return {
            "hostname": f"{hostname}\n",
            "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{address or '127.0.1.1'}\t{hostname}\n",
            # The server's resolver on the bridge: it answers only what the egress policy allows.
            "resolv.conf": f"nameserver {self.network.gateway}\n" if address else "",
        }

    async def attach(self, sandbox_id: str, pid: int, record: dict[str, Any]) -> None:
        """Wires the sandbox's namespace (its init is pid) to the bridge; its policy holds before
        its first process runs."""
        address = str(record["address"])
        await self.network.attach(sandbox_id, pid, address)
        found = _attached(sandbox_id, record)
        await self.egress.apply(sandbox_id, address, found.policy)
        self._attached[address] = found

    def adopt(self, sandbox_id: str, record: dict[str, Any]) -> None:
        # Its nftables chain outlived the server, and is applied again all the same: a sandbox of
        # an older server has none, and the forward chain drops what has no chain.
        if record.get("address"):
            address = str(record["address"])
            self.network.reserve(address)
            self._attached[address] = found = _attached(sandbox_id, record)
            self._spawn(self.egress.apply(sandbox_id, address, found.policy))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _veth_gone(self, name: str, wait: float = VETH_GRACE_SECONDS) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.network.has_link(name) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        try:
            await self.network.delete_veth(name)
        except Exception:
            log.exception("could not delete veth %s", name)

    async def remove(self, sandbox_id: str, record: dict[str, Any]) -> list[Exception]:
        """Removes all of the sandbox's network but its address, which `release` gives back once
        its processes are proven gone; every step runs, the failures are returned."""
        failures: list[Exception] = []
        address = record.get("address")
        address = address if isinstance(address, str) else None
        # The veth goes with the sandbox's namespace, which the kernel tears down some 15 ms after
        # its last process: the delete does not wait for it. One the namespace does not take (a
        # crash between steps left it, or something keeps the namespace) is deleted here.
        self._spawn(self._veth_gone(veth_name(sandbox_id)))
        if address is not None:
            self._attached.pop(address, None)
        self.resolver.refused.pop(sandbox_id, None)
        self.refused_log.forget(sandbox_id)
        try:
            await self.egress.remove(sandbox_id, address)
        except Exception as exc:
            failures.append(exc)
        return failures

    def release(self, record: dict[str, Any]) -> None:
        """The sandbox's address goes back to the pool: only for a sandbox whose processes are
        gone, or a new sandbox could be given the address of one still running."""
        address = record.get("address")
        self.network.release(address if isinstance(address, str) else None)

    async def sweep(self, known: set[str]) -> None:
        """Removes veths and egress chains of sandboxes not in known."""
        for veth in await self.network.orphan_veths(known):
            try:
                await self.network.delete_veth(veth)
            except RuntimeFailure:  # the rest is still swept; the next start tries again
                log.exception("could not delete veth %s", veth)
        for orphan_tag in await self.egress.orphans(known):
            await self.egress.remove_tag(orphan_tag)

    # -- egress ----------------------------------------------------------------------------------

    def egress_record(self, record: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
        """The record set_egress returns (checked rules: an invalid policy raises here too)."""
        return {**record, "egress": Policy.of(rules).record()}

    async def set_egress(self, sandbox_id: str, record: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
        address = record.get("address")
        if not isinstance(address, str):
            raise Conflict(f"sandbox {sandbox_id} has no network interface (created by an older server)")
        policy = Policy.of(rules)
        record = {**record, "egress": policy.record()}  # as egress_record has it
        # Lookups still being answered under the old policy see it is no longer current.
        self._attached[address] = _attached(sandbox_id, record)
        await self.egress.apply(sandbox_id, address, policy)
        return record

    async def refusals(self, sandbox_id: str) -> dict[str, int]:
        return {
            "refused_packets": await self.egress.refused(sandbox_id),
            "refused_lookups": self.resolver.refused[sandbox_id],
        }

    async def recent_refusals(self, sandbox_id: str) -> list[dict[str, str]]:
        """The refused lookups (kept here) and connections (kept by the kernel), oldest first."""
        return self.refused_log.recent(sandbox_id, await self.egress.recent(sandbox_id))

    def _broker_allowed(self, sandbox_address: str, name: str | None, destination: str) -> bool:
        found = self._attached.get(sandbox_address)
        if found is None or found.policy.decide_address(destination) == "deny":
            return False
        if name is None:
            return found.policy.default == "allow"
        return found.policy.decide(name) == "allow"


def _attached(sandbox_id: str, record: dict[str, Any]) -> Attached:
    transforms = tuple(Transform.of(t) for t in record.get("transforms") or [])
    return Attached(sandbox_id, Policy.of(record.get("egress")), transforms)
