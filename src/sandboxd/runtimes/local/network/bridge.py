"""Host networking for sandboxes: one bridge with NAT, one veth pair per sandbox with internet access.

A sandbox without internet access gets only loopback in its own network namespace. Its peer end of
the veth lives in the sandbox's namespace, so when the sandbox's last process dies the kernel removes
the pair: nothing is left to leak but the host bridge itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import socket
from collections.abc import Sequence

from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes.hostnets import InwardNetworks
from sandboxd.runtimes.local.network.netlink import Rtnl, open_in_netns
from sandboxd.runtimes.local.network.nftables import nftables

log = logging.getLogger("sandboxd.network")

VETH_PREFIX = "sbxv"
BROKER_TLS_PORT = 15443  # the credential broker's, on the bridge address
HOST_RESCAN_SECONDS = 30.0  # the host's networks are read again this often even without a change event
RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x10, 0x40  # rtnetlink multicast groups (linux/rtnetlink.h)


def _disable_ipv6(link: str) -> None:
    with open(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6", "w") as f:
        f.write("1")


def veth_name(sandbox_id: str) -> str:
    # Interface names are at most 15 bytes; a hash of the id keeps them unique and stable.
    return VETH_PREFIX + hashlib.sha256(sandbox_id.encode()).hexdigest()[:11]


class Network:
    def __init__(self, bridge: str, subnet: str, dns_rate: int = 200) -> None:
        self.bridge = bridge
        self.subnet = ipaddress.ip_network(subnet)
        self.dns_rate = dns_rate  # DNS queries a second per sandbox (twice that in a burst)
        self.gateway = next(self.subnet.hosts())
        # One table per bridge: several servers on one host (tests do this) keep their own rules.
        self.table = f"sandboxd_{bridge}".replace("-", "_")
        self._used: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        self._next = 0  # where allocate looks first
        self._lock = asyncio.Lock()

    def slot(self, address: str) -> int:
        """The address's index in the subnet: unique among this server's sandboxes while they run."""
        return int(ipaddress.ip_address(address)) - int(self.subnet.network_address)

    async def setup_host(self) -> None:
        await asyncio.to_thread(self._setup_bridge)
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")
        # Sandboxes get IPv4 only. Without this the bridge has an IPv6 link-local address through
        # which a sandbox reaches every host service listening on "::".
        _disable_ipv6(self.bridge)
        # Outbound NAT for the sandbox subnet, and the host closed to its sandboxes but for its DNS
        # resolver: a sandbox reaches the outside as its egress policy (egress.py) allows, never
        # the services of the machine it runs on. The base chains are refilled on every start; the
        # per-sandbox chains and the map that leads to them stay, so running sandboxes keep their
        # policy across a restart.
        t, br, gw = self.table, self.bridge, self.gateway
        await nftables().run(
            (
                f"add table inet {t}\n"
                f"add map inet {t} egress {{ type ipv4_addr : verdict; }}\n"
                # Blocked ranges and the host's own networks (hostnets.py), kept current by
                # watch_host: refused unless a sandbox's CIDR rule names them.
                f"add set inet {t} inward {{ type ipv4_addr; flags interval; }}\n"
                # Per-sandbox DNS query rate, counted in the kernel: a flood is dropped before it
                # fills the resolver's socket, which every sandbox shares.
                f"add set inet {t} dns_rate {{ type ipv4_addr; size 65535; flags dynamic,timeout; timeout 1m; }}\n"
                # (sandbox, address) pairs whose connections go to the credential broker.
                f"add set inet {t} intercept {{ type ipv4_addr . ipv4_addr; flags timeout; }}\n"
                f"add chain inet {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n"
                f"flush chain inet {t} prerouting\n"
                f'add rule inet {t} prerouting iifname "{br}" ip saddr . ip daddr @intercept tcp dport 443 '
                f"redirect to :{BROKER_TLS_PORT}\n"
                f"add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
                f"add chain inet {t} input {{ type filter hook input priority filter; policy accept; }}\n"
                f"add chain inet {t} forward {{ type filter hook forward priority filter; policy accept; }}\n"
                f"add chain inet {t} refuse\n"
                f"flush chain inet {t} postrouting\n"
                f"flush chain inet {t} input\n"
                f"flush chain inet {t} forward\n"
                f"flush chain inet {t} refuse\n"
                f'add rule inet {t} postrouting ip saddr {self.subnet} oifname != "{br}" masquerade\n'
                # (before the established rule: one UDP socket's queries are one conntrack flow)
                f'add rule inet {t} input iifname "{br}" udp dport 53 update @dns_rate '
                f"{{ ip saddr limit rate over {self.dns_rate}/second burst {2 * self.dns_rate} packets }} drop\n"
                f'add rule inet {t} input iifname "{br}" ct state established,related accept\n'
                f'add rule inet {t} input iifname "{br}" ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 accept\n'
                # The broker only through the redirect: a sandbox cannot connect to it directly.
                f'add rule inet {t} input iifname "{br}" ct status dnat tcp dport {BROKER_TLS_PORT} accept\n'
                f'add rule inet {t} input iifname "{br}" drop\n'
                # Isolated bridge ports stop sandbox-to-sandbox frames; this stops the host from
                # routing the same traffic back out of the bridge.
                f'add rule inet {t} forward iifname "{br}" oifname "{br}" drop\n'
                f'add rule inet {t} forward iifname "{br}" meta nfproto ipv6 drop\n'
                f'add rule inet {t} forward iifname "{br}" ip saddr vmap @egress\n'
                f'add rule inet {t} forward iifname "{br}" drop\n'
                f"add rule inet {t} refuse meta l4proto tcp reject with tcp reset\n"
                f"add rule inet {t} refuse reject with icmpx admin-prohibited\n"
            ),
        )

    async def set_inward(self, networks: Sequence[ipaddress.IPv4Network]) -> None:
        """Replaces the inward set's elements in one transaction: no moment without them."""
        t = self.table
        elements = ", ".join(str(n) for n in networks)
        script = f"flush set inet {t} inward\n" + (
            f"add element inet {t} inward {{ {elements} }}\n" if elements else ""
        )
        await nftables().run(script)

    async def watch_host(self, inward: InwardNetworks) -> None:
        """Keeps the inward set in step with the host's addresses and routes: read again whenever
        the kernel reports a change of either (a netlink subscription: no process to leave
        behind), and every HOST_RESCAN_SECONDS besides. Runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            try:
                sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE))
                sock.setblocking(False)
                while True:
                    if await asyncio.to_thread(inward.refresh):
                        await self.set_inward(inward.networks)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(loop.sock_recv(sock, 65536), HOST_RESCAN_SECONDS)
                    await asyncio.sleep(0.05)  # one change often comes as several messages
                    with contextlib.suppress(BlockingIOError):
                        while sock.recv(65536):
                            pass  # read once for all of them
            except Exception:  # ENOBUFS (messages lost: read again), nft failing: keep watching
                log.exception("watching the host's networks failed; starting again")
                await asyncio.sleep(1)
            finally:
                sock.close()

    async def teardown_host(self) -> None:
        await asyncio.to_thread(self._delete_link, self.bridge)
        await nftables().run(f"delete table inet {self.table}", check=False)

    def reserve(self, address: str) -> None:
        self._used.add(ipaddress.ip_address(address))

    def release(self, address: str | None) -> None:
        if address:
            self._used.discard(ipaddress.ip_address(address))

    async def allocate(self) -> str:
        """The next free address after the last one given: a freed address comes back only once
        the subnet has gone round, so nothing aimed at a deleted sandbox reaches a new one."""
        first, count = int(self.subnet.network_address) + 1, self.subnet.num_addresses - 2
        async with self._lock:
            for i in range(count):
                host = ipaddress.ip_address(first + (self._next + i) % count)
                if host != self.gateway and host not in self._used:
                    self._used.add(host)
                    self._next = (self._next + i + 1) % count
                    return str(host)
        raise RuntimeFailure("no free address left in the sandbox subnet")

    async def attach(self, sandbox_id: str, pid: int, address: str | None) -> None:
        """Configures the sandbox's namespace (that of pid, its init): loopback, and with an
        address a veth to the bridge."""
        await asyncio.to_thread(self._attach, veth_name(sandbox_id), pid, address)

    def _attach(self, host_end: str, pid: int, address: str | None) -> None:
        try:
            netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise RuntimeFailure("the sandbox's init exited before its network was set up") from exc
        try:
            if address is not None:
                with Rtnl() as host:
                    bridge = host.index(self.bridge)
                    if bridge is None:
                        raise RuntimeFailure(f"the bridge {self.bridge} is missing")
                    # Created down: it is up only once it is an isolated port without IPv6.
                    host.add_veth(host_end, "eth0", netns, bridge)
                    _disable_ipv6(host_end)
                    # Isolated bridge ports forward only to the host side: sandboxes cannot
                    # reach each other.
                    host.set_up(host_end, isolated_port=True)
            with open_in_netns(netns) as inside:
                inside.set_up("lo")
                if address is not None:
                    eth0 = inside.index("eth0")
                    if eth0 is None:
                        raise RuntimeFailure("the sandbox's end of its veth is missing")
                    inside.add_address(eth0, address, self.subnet.prefixlen)
                    inside.set_up("eth0")
                    inside.add_default_route(str(self.gateway))
        finally:
            os.close(netns)

    def _setup_bridge(self) -> None:
        with Rtnl() as rtnl:
            if rtnl.index(self.bridge) is not None:
                return
            rtnl.add_bridge(self.bridge)
            index = rtnl.index(self.bridge)
            if index is None:
                raise RuntimeFailure(f"the bridge {self.bridge} vanished as it was made")
            rtnl.add_address(index, str(self.gateway), self.subnet.prefixlen)
            rtnl.set_up(self.bridge)

    async def orphan_veths(self, keep: set[str]) -> list[str]:
        wanted = {veth_name(i) for i in keep}
        return [
            name for name in await asyncio.to_thread(self._ports) if name.startswith(VETH_PREFIX) and name not in wanted
        ]

    def _ports(self) -> list[str]:
        with Rtnl() as rtnl:
            links = rtnl.links()
        bridge = next((link.index for link in links if link.name == self.bridge), None)
        return [link.name for link in links if bridge is not None and link.master == bridge]

    @staticmethod
    def has_link(name: str) -> bool:
        return os.path.exists(f"/sys/class/net/{name}")

    async def delete_veth(self, name: str) -> None:
        """Deletes the link; one already gone (it goes with the sandbox's namespace) is no error."""
        if not self.has_link(name):
            return
        # Off the loop: unregistering a device waits for RCU grace periods.
        await asyncio.to_thread(self._delete_link, name)

    @staticmethod
    def _delete_link(name: str) -> None:
        with Rtnl() as rtnl:
            rtnl.delete_link(name)
