"""Break 11: cloud metadata addresses other than link-local ones. A test host here carries Alibaba
Cloud's 100.100.100.200 (routed to its namespace; nothing is sent anywhere else): a sandbox under
allow_all cannot reach it, nor through a name, nor through a wide CIDR rule; a rule naming it can."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.security.netlab import lab
from tests.test_egress import reach

METADATA = "100.100.100.200"
FAR = "10.77.232.2"  # an ordinary test host: the internet


@pytest.fixture(scope="module")
def net(image_cache: Path, workdir: Path) -> Iterator[Server]:
    hosts = [("md11", "10.77.216.1", "10.77.216.2", METADATA), ("far11", "10.77.217.1", "10.77.217.2", FAR)]
    records = {"metadata.test": [METADATA], "far.test": [FAR]}
    with lab(workdir, "net11", "10.77.61.0/24", records, hosts) as (server, _, _):
        yield server


def test_metadata_addresses_are_refused_unless_named(net: Server) -> None:
    with net.create() as sb:
        assert reach(sb, "far.test") == f"reached {FAR} hello"  # the sandbox has the internet
        assert reach(sb, METADATA).startswith(f"refused {METADATA}")
        assert reach(sb, "169.254.169.254").startswith("refused")
    wide = {"mode": "allow_all", "rules": [{"action": "allow", "target": "0.0.0.0/0"}]}
    with net.create(egress=wide) as sb:
        assert reach(sb, METADATA).startswith(f"refused {METADATA}")
    with net.create(egress={"mode": "custom", "allowed_domains": ["metadata.test"]}) as sb:
        assert reach(sb, "metadata.test") == "nxdomain"  # its answer was stripped
    with net.create(egress={"mode": "custom", "allowed_cidrs": [f"{METADATA}/32"]}) as sb:
        assert reach(sb, METADATA) == f"reached {METADATA} hello"  # named explicitly: the operator's call
