"""A readiness check runs the sandbox's own code, and its output comes back to the server: a check
that prints without end must not grow the server's memory (only the tail is kept, for the error)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd import Templates
from tests.conftest import Server, assert_no_leaks, teardown_bridge
from tests.security.test_api_limits import peak_rss_mb


@pytest.fixture(scope="module")
def own_server(image_cache: Path, workdir: Path) -> Iterator[Server]:
    srv = Server(workdir / "ready", "sbxdready0", "10.77.62.0/24").start()
    yield srv
    srv.delete_all()
    srv.stop()
    assert_no_leaks(srv.data_dir, srv.bridge)
    teardown_bridge(srv.bridge)


def test_a_chatty_readiness_check_keeps_only_its_tail(own_server: Server) -> None:
    name = f"chatty-{uuid.uuid4().hex[:8]}"
    # Chatty only where CHATTY is set: the build's own try of the check passes.
    check = "[ -z \"$CHATTY\" ] || { head -c 100000000 /dev/zero | tr '\\0' x; echo; echo the-last-words; false; }"
    with Templates(url=own_server.url, api_key=own_server.key) as templates:
        assert templates.build(name, [], ready_check={"command": check, "timeout": 6})["state"] == "ready"
        before = peak_rss_mb(own_server)
        with own_server.client() as http:
            r = http.post("/api/v1/sandboxes", json={"template": name, "env": {"CHATTY": "1"}})
        assert r.status_code == 503 and r.json()["code"] == "NOT_READY", r.text[:500]
        # The error quotes the tail of the last run (which the deadline may have cut short).
        message = r.json()["message"]
        assert "did not pass within" in message and len(message) < 1000, message[:200]
        # 100 MB printed per run: kept whole (and joined), the server would grow by twice that.
        assert peak_rss_mb(own_server) - before < 60, (before, peak_rss_mb(own_server))
        templates.delete(name, 1)
