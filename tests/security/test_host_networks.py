"""Break 5: a sandbox reaching networks attached to the host — here "another sandboxd server's
sandbox": a namespace on a second bridge of this host, as another server makes them. Refused by IP
under allow_all and through an allowed name that resolves there; reached only when a CIDR rule names
that network. The bridge appears after the server started: the server notices it."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.security.netlab import lab
from tests.test_egress import GREETER, reach

OTHER_BRIDGE, OTHER_NETNS = "sbxdoth5", "sbxd-oth5"
OTHER_GATEWAY, OTHER = "10.77.65.1", "10.77.65.2"  # the other bridge's address, its sandbox's
FAR = "10.77.225.2"  # a test host beyond a gateway: the internet, reachable under allow_all
RECORDS = {"other.test": [OTHER], "far.test": [FAR]}


class OtherServersSandbox:
    """A bridge with an address on this host and a namespace behind it serving on port 8000."""

    def __init__(self) -> None:
        for cmd in (
            f"link add {OTHER_BRIDGE} type bridge",
            f"addr add {OTHER_GATEWAY}/24 dev {OTHER_BRIDGE}",
            f"link set {OTHER_BRIDGE} up",
            f"netns add {OTHER_NETNS}",
            f"link add {OTHER_BRIDGE}v type veth peer name eth0 netns {OTHER_NETNS}",
            f"link set {OTHER_BRIDGE}v master {OTHER_BRIDGE} up",
            f"-n {OTHER_NETNS} addr add {OTHER}/24 dev eth0",
            f"-n {OTHER_NETNS} link set eth0 up",
            f"-n {OTHER_NETNS} link set lo up",
            f"-n {OTHER_NETNS} route add default via {OTHER_GATEWAY}",
        ):
            subprocess.run(["ip", *cmd.split()], check=True)
        self.proc = subprocess.Popen(["ip", "netns", "exec", OTHER_NETNS, sys.executable, "-c", GREETER])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        subprocess.run(["ip", "link", "del", f"{OTHER_BRIDGE}v"], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", OTHER_BRIDGE], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", OTHER_NETNS], capture_output=True, check=False)


@pytest.fixture(scope="module")
def net(image_cache: Path, workdir: Path) -> Iterator[Server]:
    hosts = [("far5", "10.77.215.1", "10.77.215.2", FAR)]
    with lab(workdir, "net5", "10.77.55.0/24", RECORDS, hosts) as (server, _, _):
        other = OtherServersSandbox()  # after the server started
        try:
            wait_until_known(server, OTHER)
            yield server
        finally:
            other.close()


def wait_until_known(server: Server, address: str) -> None:
    """Until the server's inward set holds the address (on old servers there is none: move on)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["nft", "-j", "list", "set", "inet", f"sandboxd_{server.bridge}", "inward"], capture_output=True, text=True
        )
        if out.returncode != 0 or any(ipaddress.IPv4Address(address) in n for n in elements(out.stdout)):
            return
        time.sleep(0.1)
    raise AssertionError(f"{address} never entered the inward set")


def elements(listing: str) -> list[ipaddress.IPv4Network]:
    found = []
    for item in json.loads(listing)["nftables"]:
        for element in (item.get("set") or {}).get("elem", []):
            if isinstance(element, str):
                found.append(ipaddress.IPv4Network(element))
            elif "prefix" in element:
                found.append(ipaddress.IPv4Network(f"{element['prefix']['addr']}/{element['prefix']['len']}"))
            elif "range" in element:
                first, last = (ipaddress.IPv4Address(a) for a in element["range"])
                found += ipaddress.summarize_address_range(first, last)
    return found


def test_another_bridge_is_refused_by_ip_under_allow_all(net: Server) -> None:
    with net.create() as sb:
        assert reach(sb, FAR) == f"reached {FAR} hello"  # the sandbox has the internet
        assert reach(sb, OTHER).startswith(f"refused {OTHER}")
        assert reach(sb, OTHER_GATEWAY).startswith(f"refused {OTHER_GATEWAY}")
    # A wide CIDR rule does not name it: 10.0.0.0/8 allowed still leaves it out.
    with net.create(egress={"mode": "custom", "allowed_cidrs": ["10.0.0.0/8"]}) as sb:
        assert reach(sb, FAR) == f"reached {FAR} hello"
        assert reach(sb, OTHER).startswith(f"refused {OTHER}")
    with net.create(egress={"mode": "allow_all", "rules": [{"action": "allow", "target": "0.0.0.0/0"}]}) as sb:
        assert reach(sb, OTHER).startswith(f"refused {OTHER}")


def test_an_allowed_name_pointing_at_another_bridge_is_stripped(net: Server) -> None:
    with net.create(egress={"mode": "custom", "allowed_domains": ["other.test", "far.test"]}) as sb:
        assert reach(sb, "far.test") == f"reached {FAR} hello"
        assert reach(sb, "other.test") == "nxdomain"  # its only answer pointed at the host's network
        assert reach(sb, OTHER).startswith(f"refused {OTHER}")


def test_a_cidr_rule_naming_the_network_opens_it(net: Server) -> None:
    policy = {"mode": "custom", "allowed_domains": ["other.test"], "allowed_cidrs": ["10.77.65.0/24"]}
    with net.create(egress=policy) as sb:
        assert reach(sb, OTHER) == f"reached {OTHER} hello"
        assert reach(sb, "other.test") == f"reached {OTHER} hello"
