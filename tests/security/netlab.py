"""A server of its own with a test DNS zone upstream and test hosts in network namespaces: the
network tests' laboratory. Traffic goes only to loopback and to the hosts made here."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.conftest import Server, assert_no_leaks, teardown_bridge
from tests.test_egress import NetnsHost, Zone


@contextlib.contextmanager
def lab(
    workdir: Path, name: str, subnet: str, records: dict[str, list[str]], hosts: Sequence[tuple[str, ...]], **env: str
) -> Iterator[tuple[Server, Zone, list[NetnsHost]]]:
    """Server on bridge sbxd<name> and subnet; hosts are NetnsHost arguments."""
    zone = Zone(records)
    made: list[NetnsHost] = []
    server = Server(workdir / name, f"sbxd{name}", subnet, SANDBOXD_DNS_UPSTREAM=f'["{zone.address}"]', **env)
    try:
        for spec in hosts:
            made.append(NetnsHost(*spec))
        server.start()
        yield server, zone, made
        server.delete_all()
        server.stop()
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
        zone.close()
        for host in made:
            host.close()
        try:
            assert_no_leaks(server.data_dir, server.bridge)
        finally:
            teardown_bridge(server.bridge)


def query(name_labels: list[bytes], qid: int = 0x1234) -> bytes:
    """A DNS query for the A record of a name given label by label (any bytes in a label)."""
    name = b"".join(bytes([len(label)]) + label for label in name_labels) + b"\0"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)


# Run inside a sandbox: sends one raw query (labels as hex on the command line) to its resolver and
# prints the reply's rcode and answer count, or "timeout".
RAW_LOOKUP = (
    "import socket, sys\n"
    "resolver = open('/etc/resolv.conf').read().split()[1]\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n"
    "s.sendto(bytes.fromhex(sys.argv[1]), (resolver, 53))\n"
    "try:\n"
    "    reply = s.recv(4096)\n"
    "    print(reply[3] & 15, int.from_bytes(reply[6:8], 'big'))\n"
    "except OSError:\n"
    "    print('timeout')\n"
)
