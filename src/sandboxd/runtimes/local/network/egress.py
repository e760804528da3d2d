"""Egress policy in the kernel: one nftables chain per sandbox, reached through a verdict map keyed
by the sandbox's address, in the host's forward path (the sandbox cannot touch it).

A sandbox's chain checks, in order: its CIDR rules (first match wins), the inward networks —
blocked ranges such as loopback, link-local and cloud metadata, and the host's own addresses and
attached networks (hostnets.py) — which only a CIDR rule lying within one of them opens (a wider
rule such as 10.0.0.0/8 or 0.0.0.0/0 does not), the addresses that names it may not reach resolved
to, the addresses that names it may reach resolved to (each admitted for its DNS record's TTL by the
resolver, dns.py), then the policy's default. Refusals are counted per sandbox and answered with a
TCP reset or an ICMP "administratively prohibited", so programs fail at once rather than time out.
A sandbox without a map entry has no egress at all (the forward chain ends in a drop).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes.hostnets import InwardNetworks
from sandboxd.runtimes.local.network.broker import Transform
from sandboxd.runtimes.local.network.nftables import nftables
from sandboxd.runtimes.policy import Policy

__all__ = ["Attached", "EgressTable", "Policy", "tag"]

MIN_ADMIT_SECONDS = 10  # a TTL of 0 still lets the connection that follows the lookup through
# The last refused destinations (address . protocol . port) of each sandbox, kept by the kernel in a
# set of bounded size whose entries expire: a full set takes no new ones until some expire, and the
# refusal holds all the same (the refuse chain's verdict does not depend on the set).
RECENT_SIZE, RECENT_SECONDS = 16, 900
RECENT_SET = (
    "{ type ipv4_addr . inet_proto . inet_service; "
    f"size {RECENT_SIZE}; flags dynamic,timeout; timeout {RECENT_SECONDS}s; }}"
)


@dataclass(frozen=True)
class Attached:
    """What the resolver and the broker know of the sandbox at an address."""

    sandbox_id: str
    policy: Policy
    transforms: tuple[Transform, ...] = ()


def tag(sandbox_id: str) -> str:
    return hashlib.sha256(sandbox_id.encode()).hexdigest()[:12]


@dataclass
class EgressTable:
    """The per-sandbox objects in one server's nftables table."""

    table: str
    inward: InwardNetworks = field(default_factory=lambda: InwardNetworks([]))
    # What the kernel's sets hold, with expiry times: a lookup answered again within half its TTL
    # needs no nft call (one costs milliseconds).
    _admitted: dict[str, dict[tuple[bool, str], float]] = field(default_factory=dict)
    _intercepted: dict[str, set[str]] = field(default_factory=dict)  # sandbox address → addresses
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def load(self) -> None:
        """What the intercept set holds, by sandbox address (a restarted server removes them with
        their sandbox's policy)."""
        for item in await nftables().list_json(f"list set inet {self.table} intercept"):
            for element in (item.get("set") or {}).get("elem", []):
                value = element.get("elem", {}).get("val", element) if isinstance(element, dict) else element
                pair = value.get("concat") if isinstance(value, dict) else None
                if pair and len(pair) == 2:
                    self._intercepted.setdefault(str(pair[0]), set()).add(str(pair[1]))

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        # One sandbox's nft changes one at a time: a lookup answered under an old policy must not
        # add its addresses after the new policy's chain is in place.
        return self._locks.setdefault(tag(sandbox_id), asyncio.Lock())

    async def apply(self, sandbox_id: str, address: str, policy: Policy) -> None:
        async with self._lock(sandbox_id):
            await self._apply(sandbox_id, address, policy)

    async def _apply(self, sandbox_id: str, address: str, policy: Policy) -> None:
        """Creates or replaces the sandbox's chain, in one transaction; admitted addresses from
        the previous policy are forgotten (names are looked up again under the new one)."""
        t, h = self.table, tag(sandbox_id)
        lines = [
            f"add set inet {t} allow_{h} {{ type ipv4_addr; flags timeout; }}",
            f"add set inet {t} deny_{h} {{ type ipv4_addr; flags timeout; }}",
            f"add counter inet {t} refused_{h}",
            f"add set inet {t} recent_{h} {RECENT_SET}",
            f"add chain inet {t} refuse_{h}",
            f"flush chain inet {t} refuse_{h}",
            # Refusals note their destination (TCP and UDP), then are counted and refused.
            f"add rule inet {t} refuse_{h} meta l4proto {{ tcp, udp }} "
            f"update @recent_{h} {{ ip daddr . meta l4proto . th dport }}",
            f'add rule inet {t} refuse_{h} counter name "refused_{h}" goto refuse',
            f"add chain inet {t} egress_{h}",
            f"flush chain inet {t} egress_{h}",
            f"flush set inet {t} allow_{h}",
            f"flush set inet {t} deny_{h}",
        ]
        refuse = f"goto refuse_{h}"
        # A connection this policy accepted carries its generation in its conntrack mark and goes
        # on past its DNS record's TTL; a new policy is a new generation, so every connection is
        # checked again under it (and cut if it no longer may go).
        generation = int.from_bytes(os.urandom(4), "big") | 1
        accept = f"ct mark set {generation} accept"
        lines.append(f"add rule inet {t} egress_{h} ct state established,related ct mark {generation} accept")
        for action, network in policy.cidr_rules():
            target = "" if network.prefixlen == 0 else f"ip daddr {network} "
            if action == "allow" and not any(network.subnet_of(n) for n in self.inward.networks):
                # Not an explicit naming of an inward network: it opens none of them, including
                # any that appears later (the set is live).
                target += "ip daddr != @inward "
            lines.append(f"add rule inet {t} egress_{h} {target}{accept if action == 'allow' else refuse}")
        lines += [
            f"add rule inet {t} egress_{h} ip daddr @inward {refuse}",
            f"add rule inet {t} egress_{h} ip daddr @deny_{h} {refuse}",
            f"add rule inet {t} egress_{h} ip daddr @allow_{h} {accept}",
            f"add rule inet {t} egress_{h} {accept if policy.default == 'allow' else refuse}",
            # The same element again (a policy change) is no error; another sandbox's, left at
            # this address by a crash, is: it goes, then the transaction runs again.
            f"add element inet {t} egress {{ {address} : jump egress_{h} }}",
        ]
        # Redirects to the broker made under the old policy go: a name no longer allowed must not
        # stay reachable through them.
        intercepted = ", ".join(f"{address} . {ip}" for ip in self._intercepted.pop(address, set()))
        if intercepted:
            lines += [
                f"add element inet {t} intercept {{ {intercepted} }}",
                f"delete element inet {t} intercept {{ {intercepted} }}",
            ]
        script = "\n".join(lines) + "\n"
        self._admitted.pop(h, None)
        try:
            await nftables().run(script)
        except RuntimeFailure as exc:
            if "File exists" not in exc.message:
                raise
            await nftables().run(f"delete element inet {t} egress {{ {address} }}", check=False)
            await nftables().run(script)

    async def admit(
        self, sandbox_id: str, addresses: list[tuple[str, int]], allow: bool, current: Callable[[], bool]
    ) -> None:
        """Adds resolved addresses, each for its TTL, to the sandbox's allow or deny set, if the
        policy they were resolved under is still current(), checked under the sandbox's lock."""
        async with self._lock(sandbox_id):
            if current():
                await self._admit(sandbox_id, addresses, allow)

    async def _admit(self, sandbox_id: str, addresses: list[tuple[str, int]], allow: bool) -> None:
        t, h = self.table, tag(sandbox_id)
        now = time.monotonic()
        known = self._admitted.setdefault(h, {})
        for key in [k for k, expiry in known.items() if expiry < now]:
            del known[key]
        addresses = list(dict(addresses).items())  # one answer may name an address twice
        addresses = [
            (ip, ttl) for ip, ttl in addresses if known.get((allow, ip), 0) - now < max(ttl, MIN_ADMIT_SECONDS) / 2
        ]
        if not addresses:
            return
        target = f"{'allow' if allow else 'deny'}_{h}"
        elements = ", ".join(f"{ip} timeout {max(ttl, MIN_ADMIT_SECONDS)}s" for ip, ttl in addresses)
        plain = ", ".join(ip for ip, _ in addresses)
        # Re-adding refreshes the timeout: delete (after an add that makes it exist), then add.
        await nftables().run(
            (
                f"add element inet {t} {target} {{ {plain} }}\n"
                f"delete element inet {t} {target} {{ {plain} }}\n"
                f"add element inet {t} {target} {{ {elements} }}\n"
            ),
        )
        for ip, ttl in addresses:
            known[(allow, ip)] = now + max(ttl, MIN_ADMIT_SECONDS)

    async def intercept(
        self, sandbox_id: str, sandbox_address: str, addresses: list[tuple[str, int]], current: Callable[[], bool]
    ) -> None:
        """Sends the sandbox's connections to these addresses to the credential broker."""
        async with self._lock(sandbox_id):
            if current():
                await self._intercept(sandbox_address, addresses)

    async def _intercept(self, sandbox_address: str, addresses: list[tuple[str, int]]) -> None:
        if not addresses:
            return
        t = self.table
        addresses = list(dict(addresses).items())
        self._intercepted.setdefault(sandbox_address, set()).update(ip for ip, _ in addresses)
        plain = ", ".join(f"{sandbox_address} . {ip}" for ip, _ in addresses)
        timed = ", ".join(f"{sandbox_address} . {ip} timeout {max(ttl, MIN_ADMIT_SECONDS)}s" for ip, ttl in addresses)
        await nftables().run(
            (
                f"add element inet {t} intercept {{ {plain} }}\n"
                f"delete element inet {t} intercept {{ {plain} }}\n"
                f"add element inet {t} intercept {{ {timed} }}\n"
            ),
        )

    async def remove(self, sandbox_id: str, address: str | None) -> None:
        async with self._lock(sandbox_id):
            await self._remove(sandbox_id, address)
        self._locks.pop(tag(sandbox_id), None)

    async def _remove(self, sandbox_id: str, address: str | None) -> None:
        t, h = self.table, tag(sandbox_id)
        # Each object is made (a no-op if it exists) before it is deleted, so one transaction
        # removes whatever part of them a crash left.
        lines = [f"add chain inet {t} egress_{h}"]
        # Its redirects to the broker go too, or the next sandbox at this address would inherit them.
        intercepted = ", ".join(f"{address} . {ip}" for ip in self._intercepted.pop(address or "", set()))
        if intercepted:
            lines += [
                f"add element inet {t} intercept {{ {intercepted} }}",
                f"delete element inet {t} intercept {{ {intercepted} }}",
            ]
        if address:
            lines += [
                f"add element inet {t} egress {{ {address} : jump egress_{h} }}",
                f"delete element inet {t} egress {{ {address} }}",
            ]
        lines += [
            f"delete chain inet {t} egress_{h}",
            f"add chain inet {t} refuse_{h}",
            f"delete chain inet {t} refuse_{h}",
            f"add set inet {t} recent_{h} {RECENT_SET}",
            f"delete set inet {t} recent_{h}",
            f"add set inet {t} allow_{h} {{ type ipv4_addr; flags timeout; }}",
            f"delete set inet {t} allow_{h}",
            f"add set inet {t} deny_{h} {{ type ipv4_addr; flags timeout; }}",
            f"delete set inet {t} deny_{h}",
            f"add counter inet {t} refused_{h}",
            f"delete counter inet {t} refused_{h}",
        ]
        self._admitted.pop(h, None)
        try:
            await nftables().run("\n".join(lines) + "\n")
        except RuntimeFailure:
            await self.remove_tag(h)  # the address maps to another sandbox's chain: leave that

    async def refused(self, sandbox_id: str) -> int:
        """Packets refused so far by the sandbox's policy."""
        for item in await nftables().list_json(f"list counter inet {self.table} refused_{tag(sandbox_id)}"):
            if "counter" in item:
                return int(item["counter"].get("packets", 0))
        return 0

    async def recent(self, sandbox_id: str) -> list[tuple[float, str]]:
        """(seconds ago, "address:port/protocol") of the destinations the policy refused lately."""
        found = []
        for item in await nftables().list_json(f"list set inet {self.table} recent_{tag(sandbox_id)}"):
            for element in (item.get("set") or {}).get("elem", []):
                value = element.get("elem", {}) if isinstance(element, dict) else {}
                key = (value.get("val") or {}).get("concat") if isinstance(value.get("val"), dict) else None
                if isinstance(key, list) and len(key) == 3:
                    ago = RECENT_SECONDS - float(value.get("expires", RECENT_SECONDS))
                    found.append((max(ago, 0.0), f"{key[0]}:{key[2]}/{key[1]}"))
        return found

    async def orphans(self, keep: set[str]) -> list[str]:
        """Tags of per-sandbox chains whose sandbox is not in keep (left by a crash)."""
        wanted = {tag(i) for i in keep}
        found = []
        for item in await nftables().list_json("list chains inet"):
            chain = item.get("chain")
            if chain and chain.get("table") == self.table and chain["name"].startswith("egress_"):
                h = chain["name"].removeprefix("egress_")
                if h not in wanted:
                    found.append(h)
        return found

    async def remove_tag(self, h: str) -> None:
        t = self.table
        elements = []
        for item in await nftables().list_json(f"list map inet {t} egress"):
            for element in (item.get("map") or {}).get("elem", []):
                key, verdict = element
                if (verdict.get("jump") or {}).get("target") == f"egress_{h}":
                    elements.append(key)
        lines = [f"delete element inet {t} egress {{ {key} }}" for key in elements]
        lines += [
            f"delete chain inet {t} egress_{h}",
            f"delete chain inet {t} refuse_{h}",
            f"delete set inet {t} recent_{h}",
            f"delete set inet {t} allow_{h}",
            f"delete set inet {t} deny_{h}",
            f"delete counter inet {t} refused_{h}",
        ]
        for line in lines:
            await nftables().run(line, check=False)
