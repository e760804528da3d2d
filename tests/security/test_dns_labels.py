"""Break 10: policy matching on a name's presentation text. A label holding a dot ("x.wild" under
example.test, written x\\.wild.example.test) is no subdomain of wild.example.test, and must neither
match *.wild.example.test nor be forwarded upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd import Sandbox
from tests.conftest import Server
from tests.security.netlab import RAW_LOOKUP, lab, query
from tests.test_egress import Zone

ADDRESS = "10.77.231.2"  # never connected to
RECORDS = {"a.wild.example.test": [ADDRESS], "x\\.wild.example.test": [ADDRESS], "odd\\032name.example.test": [ADDRESS]}
NOERROR, NXDOMAIN, REFUSED = 0, 3, 5


@pytest.fixture(scope="module")
def net(image_cache: Path, workdir: Path) -> Iterator[tuple[Server, Zone]]:
    with lab(workdir, "net10", "10.77.60.0/24", RECORDS, []) as (server, zone, _):
        yield server, zone


def lookup(sb: Sandbox, labels: list[bytes]) -> tuple[int, int]:
    """(rcode, answer count) for a raw query sent from inside the sandbox."""
    if not sb.files.exists("/tmp/raw.py"):
        sb.files.write("/tmp/raw.py", RAW_LOOKUP)
    rcode, answers = sb.commands.run(f"python3 /tmp/raw.py {query(labels).hex()}").stdout.split()
    return int(rcode), int(answers)


def test_a_label_with_a_dot_does_not_match_a_wildcard(net: tuple[Server, Zone]) -> None:
    server, zone = net
    with server.create(egress={"mode": "custom", "allowed_domains": ["*.wild.example.test"]}) as sb:
        assert lookup(sb, [b"a", b"wild", b"example", b"test"]) == (NOERROR, 1)  # a real subdomain
        rcode, answers = lookup(sb, [b"x.wild", b"example", b"test"])
        assert rcode in (NXDOMAIN, REFUSED) and answers == 0
        assert "x\\.wild.example.test" not in zone.queries  # never left the host
        # Other bytes no hostname has are refused too (here a space), whatever the rules.
        with server.create(egress={"mode": "custom", "allowed_domains": ["*.example.test"]}) as wide:
            rcode, answers = lookup(wide, [b"odd name", b"example", b"test"])
            assert rcode in (NXDOMAIN, REFUSED) and answers == 0
            assert lookup(wide, [b"a", b"wild", b"example", b"test"]) == (NOERROR, 1)
        assert "odd\\032name.example.test" not in zone.queries
