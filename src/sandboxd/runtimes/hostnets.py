"""The networks a sandbox, and the server on a sandbox's or a caller's behalf, may not reach unless
they are named explicitly: the configured blocked ranges (loopback, link-local, cloud metadata...)
and this host's own position — every address of its interfaces and every network directly attached
to it (connected routes: other bridges such as another sandboxd's or docker0, a VPN, the LAN).

Interfaces come and go, so the set is read again whenever the kernel reports an address or route
change (network.py keeps the kernel's copy in step) and before every server-side fetch.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable, Sequence

IPv4Network = ipaddress.IPv4Network

# Refused whatever the configuration says: nothing of them is ever a destination out there.
ALWAYS_BLOCKED = tuple(IPv4Network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4"))
# Unreachable kinds of route: they attach nothing.
_NOT_ATTACHED = {"unreachable", "blackhole", "prohibit", "throw", "multicast", "nat"}


def host_networks() -> list[IPv4Network]:
    """This host's IPv4 addresses (each a /32) and directly attached networks, as the kernel
    has them now (`ip -j`: the kernel's own view, no parsing of human output)."""
    found: list[IPv4Network] = []
    links = json.loads(_ip("-4", "-j", "addr", "show") or "[]")
    for link in links:
        for info in link.get("addr_info", []):
            if info.get("family") != "inet" or "local" not in info:
                continue
            found.append(IPv4Network(info["local"]))
            found.append(ipaddress.IPv4Interface(f"{info['local']}/{info.get('prefixlen', 32)}").network)
            if info.get("address"):  # the far end of a point-to-point link
                found.append(IPv4Network(info["address"]))
    for route in json.loads(_ip("-4", "-j", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "default")
        if dst == "default" or route.get("type") in _NOT_ATTACHED:
            continue
        if route.get("gateway") or route.get("via") or route.get("nexthops"):
            continue  # reached through a router: the rest of the world, as far as this host knows
        try:
            network = IPv4Network(dst, strict=False)
        except ValueError:
            continue
        if network.prefixlen:  # "0.0.0.0/0 dev tun0" is a default route, not an attached network
            found.append(network)
    return found


def _ip(*argv: str) -> str:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=False, timeout=10).stdout


def collapse(networks: Iterable[IPv4Network]) -> list[IPv4Network]:
    return list(ipaddress.collapse_addresses(networks))


class InwardNetworks:
    """Blocked ranges plus the host's own networks, kept current by refresh()."""

    def __init__(self, blocked: Sequence[IPv4Network]) -> None:
        self.blocked = collapse([*ALWAYS_BLOCKED, *blocked])
        self.networks: list[IPv4Network] = self.blocked

    def refresh(self, found: Sequence[IPv4Network] | None = None) -> bool:
        """Reads the host's networks again (or takes the ones given); True if the set changed."""
        networks = collapse([*self.blocked, *(host_networks() if found is None else found)])
        changed = networks != self.networks
        self.networks = networks
        return changed

    def holds(self, address: str) -> bool:
        ip = ipaddress.IPv4Address(address)
        return any(ip in n for n in self.networks)
