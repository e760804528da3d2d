"""What `sandboxd serve` checks and fixes before it prints or builds anything.

Each refusal is one plain line naming the path or the network at fault and the fix, instead of a
runtime error at the first create (a raw runc "permission denied") or a silent misrouting.

The data directory. A sandbox's root is a host uid of its own (user namespaces), so the OCI runtime,
acting as that uid, must pass through every directory on the way to ``sandboxes/<id>/rootfs``: the
data directory and all its ancestors need the execute bit for others. The data directory, and the
directories sandboxd makes on the way to it, get 0711 (pass through, never list); what is private
gets 0700 or 0600, so that passing through reaches nothing else: the API key, the database, the
sandboxes' logs, the runtime's state, the build logs, the broker's CA and the images (overlayfs
reads the layers with the credentials of the server that mounted them, not the sandbox's). An
ancestor that existed before is not sandboxd's to open (``/root``, a user's ``mktemp -d``): it is
named instead.

The subnet. The bridge's connected route must be the only way to the sandbox subnet: an overlapping
route or address on another interface (podman's bridge, a VPN) makes routing to sandboxes ambiguous.
The routing table is read as ``ip -j`` prints it, as hostnets.py does: iproute2 is already what
sandboxd drives its network with, and its JSON is the kernel's own view without a new dependency.
The bridge that an earlier run of this server left (same name) is its own, not a conflict, but it
must carry this subnet's gateway.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sandboxd.config import Settings
from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes import datalock
from sandboxd.runtimes.local.oci import binds

PASS_THROUGH = 0o711
PRIVATE_DIRS = ("logs", "builds", "runc", "oci", "broker")  # runc, oci: the runtimes' state (configs, env)
# SQLite gives its -wal, -shm and -journal files the database file's mode: the database is made
# here, private, before the store opens it.
DATABASE = "sandboxd.db"
PRIVATE_FILES = ("api_key", DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", f"{DATABASE}-journal", "scratch.img")
SOCKET_PATH_MAX = 107  # sun_path, less its terminating NUL
LONGEST_SOCKET = "sandboxes/sbx_01234567890123456789012345/agent.sock"


class Refused(Exception):
    """The server must not start; the message is the one line to show."""


def check(settings: Settings) -> None:
    """Every start-time check, in the order that gives the most useful refusal: the data directory's
    path (nothing is made under a parent sandboxes cannot pass), its lock (a second server learns
    that before anything else), then its modes, then the network."""
    data = Path(os.path.abspath(settings.data_dir))
    closed = closed_ancestor(data)
    if closed is not None:
        mode = stat.S_IMODE(closed.stat().st_mode)
        raise Refused(
            f"the data directory {data} is under {closed} (mode {mode:04o}), which sandboxes cannot pass "
            f"through: run `chmod o+x {closed}` or set SANDBOXD_DATA_DIR to a directory outside it"
        )
    if len(str(data / LONGEST_SOCKET)) > SOCKET_PATH_MAX:
        raise Refused(f"the data directory path {data} is too long for unix sockets: set a shorter SANDBOXD_DATA_DIR")
    try:
        make_path(data)
        datalock.lock(data)
        # The default SQLite database is made here, private; another database is none of ours.
        make_private(data, Path(os.path.abspath(settings.image_root)), settings.database_url is None)
    except RuntimeFailure as exc:
        raise Refused(str(exc)) from None
    except OSError as exc:
        raise Refused(f"cannot prepare the data directory {data}: {exc}") from None
    try:  # by device and inode, the data directory made: a root holding it under another name too
        binds.check_roots(settings.bind_allow, (data, Path(os.path.abspath(settings.image_root))))
    except ValueError as exc:
        raise Refused(f"{exc}: set SANDBOXD_BIND_ALLOW to directories apart from it") from None
    check_subnet(settings.subnet, settings.bridge)


# -- the data directory --------------------------------------------------------------------------------


def closed_ancestor(path: Path) -> Path | None:
    """The outermost existing directory above `path` (symlinks resolved) that other users cannot
    pass through, or None."""
    real = Path(os.path.realpath(path))
    for ancestor in reversed(real.parents):
        try:
            mode = ancestor.stat().st_mode
        except FileNotFoundError:
            return None  # the rest is made by sandboxd
        if not mode & stat.S_IXOTH:
            return ancestor
    return None


def make_path(path: Path) -> None:
    """Makes `path` and its missing ancestors, pass-through only whatever the umask; `path` is the
    data directory, sandboxd's own, and gets the same mode if it was there already."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=PASS_THROUGH)
        os.chmod(directory, PASS_THROUGH)
    os.chmod(path, PASS_THROUGH)


def make_private(data: Path, image_root: Path, sqlite_here: bool = True) -> None:
    """Private directories 0700 and private files 0600, made now if the server would make them
    later with its umask's mode. The images are private when they live in the data directory (a
    directory set elsewhere may be shared on purpose)."""
    dirs = [data / name for name in PRIVATE_DIRS]
    if image_root != data and image_root.is_relative_to(data):
        dirs.append(image_root)
    for directory in dirs:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _restrict(directory, 0o700)
    database = data / DATABASE
    if sqlite_here and not database.exists():  # an empty file is an empty SQLite database
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    for name in PRIVATE_FILES:
        _restrict(data / name, 0o600)


def _restrict(path: Path, mode: int) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & ~mode:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


# -- the subnet ----------------------------------------------------------------------------------------


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.ip_network(text)
    except ValueError as exc:
        raise Refused(f"SANDBOXD_SUBNET {text!r} is not a network: {exc}") from None
    if not isinstance(subnet, ipaddress.IPv4Network):
        raise Refused(f"SANDBOXD_SUBNET {text!r} must be an IPv4 network (sandboxes get IPv4 only)")
    if subnet.prefixlen > 30:
        raise Refused(f"SANDBOXD_SUBNET {text!r} leaves no address for sandboxes: use a /30 or larger")
    return subnet


def check_subnet(text: str, bridge: str) -> None:
    subnet = parse_subnet(text)
    routes, addresses = _ip_json("route", "show", "table", "all"), _ip_json("addr", "show")
    found = subnet_conflicts(subnet, bridge, routes, addresses)
    if found:
        held = ", ".join(f"{network} on {link}" for network, link in found)
        raise Refused(
            f"the sandbox subnet {subnet} overlaps {held}: set SANDBOXD_SUBNET to a network no interface "
            "or route of this host uses"
        )
    stale = bridge_mismatch(subnet, bridge, addresses)
    if stale is not None:
        raise Refused(
            f"the bridge {bridge} holds {stale}, not {next(subnet.hosts())}/{subnet.prefixlen} for the sandbox "
            f"subnet {subnet}: set SANDBOXD_SUBNET back to the subnet it was made for, or stop its sandboxes and "
            f"delete it (ip link del {bridge})"
        )


def subnet_conflicts(
    subnet: ipaddress.IPv4Network,
    bridge: str,
    routes: Iterable[Mapping[str, Any]],
    addresses: Iterable[Mapping[str, Any]],
) -> list[tuple[ipaddress.IPv4Network, str]]:
    """The networks overlapping `subnet` that other interfaces hold (their addresses, or routes
    through them, default routes aside), the widest one per interface."""
    held: list[tuple[ipaddress.IPv4Network, str]] = []
    for route in routes:
        link, dst = route.get("dev"), route.get("dst", "default")
        if isinstance(link, str) and dst != "default":
            held.extend((network, link) for network in _network(dst))
    for link in addresses:
        for info in link.get("addr_info", []):
            if info.get("family") == "inet" and "local" in info:
                held.extend((network, link["ifname"]) for network in _network(f"{info['local']}/{info['prefixlen']}"))
    widest: dict[str, ipaddress.IPv4Network] = {}
    for network, link in held:
        if link != bridge and network.prefixlen and network.overlaps(subnet):
            if link not in widest or network.prefixlen < widest[link].prefixlen:
                widest[link] = network
    return sorted(((network, link) for link, network in widest.items()), key=lambda item: (item[0], item[1]))


def bridge_mismatch(subnet: ipaddress.IPv4Network, bridge: str, addresses: Iterable[Mapping[str, Any]]) -> str | None:
    """What the bridge an earlier run left holds, if that is not this subnet's gateway: a bridge made
    for another subnet would take no sandbox's traffic (its address is only set when it is made)."""
    want = f"{next(subnet.hosts())}/{subnet.prefixlen}"
    for link in addresses:
        if link.get("ifname") == bridge:
            held = [
                f"{info['local']}/{info['prefixlen']}"
                for info in link.get("addr_info", [])
                if info.get("family") == "inet" and "local" in info
            ]
            return None if held == [want] else (", ".join(held) or "no address")
    return None


def _network(text: str) -> list[ipaddress.IPv4Network]:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return []
    return [network] if isinstance(network, ipaddress.IPv4Network) else []


def _ip_json(*argv: str) -> list[dict[str, Any]]:
    try:
        done = subprocess.run(["ip", "-4", "-j", *argv], capture_output=True, text=True, check=True, timeout=10)
    except FileNotFoundError:
        raise Refused("iproute2 is not installed (sandboxd needs `ip`)") from None
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise Refused(f"cannot read this host's networks (ip {' '.join(argv)}): {exc}") from None
    found = json.loads(done.stdout or "[]")
    return found if isinstance(found, list) else []
