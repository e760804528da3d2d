"""A whole API scenario on PostgreSQL, real tier: a `sandboxd serve` of its own (data directory,
bridge, subnet) whose records are in a database of the session's PostgreSQL server, driven through
the SDK with project keys; killed with SIGKILL and started again on the same database, it adopts the
sandbox; at the end nothing is left on the host."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandboxd import Client, Sandbox, SandboxError
from tests.conftest import Server, assert_no_leaks, restartable
from tests.postgres import PostgresServer

BRIDGE, SUBNET = "sbxdtest8", "10.77.88.0/24"
PAGE = "served from the sandbox on postgres"


@pytest.fixture
def pg_server(image_cache: Path, workdir: Path, postgres: PostgresServer) -> Iterator[tuple[Server, str]]:
    database = "scenario_" + os.urandom(4).hex()
    url = postgres.create_database(database)
    with restartable(Server(workdir / database, BRIDGE, SUBNET, SANDBOXD_DATABASE_URL=url)) as srv:
        yield srv, database


def wait_listening(sb: Sandbox, port: int) -> None:
    probe = f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}))\""
    deadline = time.monotonic() + 20
    while sb.commands.run(probe).exit_code != 0:
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.05)


def fetch_port(server: Server, sb: Sandbox, port: int, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{server.url}/api/v1/sandboxes/{sb.id}/ports/{port}/index.html", headers=headers, timeout=10)


def test_the_api_on_postgresql_through_a_server_kill(
    pg_server: tuple[Server, str], postgres: PostgresServer, workdir: Path
) -> None:
    server, database = pg_server
    sqlite = server.data_dir / "sandboxd.db"  # the default store: never made when another is configured
    with Client(url=server.url, api_key=server.key) as operator:
        alpha = operator.projects.create("alpha")
        operator.projects.create("beta")
        alpha_key = operator.keys.create("alpha-ci", ["write"], project="alpha").key
        beta_key = operator.keys.create("beta-ci", ["write"], project="beta").key

    sb = Sandbox.create(url=server.url, api_key=alpha_key, memory_mb=256, timeout=120)
    sid, token = sb.id, sb.traffic_token
    stored = postgres.psql(f"SELECT project_id, state FROM sandboxes WHERE id = '{sid}'", database)
    assert stored.strip() == f"{alpha.id}|running"
    try:
        assert sb.commands.run("echo $((6*7))").stdout == "42\n"
        sb.files.write("/srv/index.html", PAGE)
        assert sb.files.read_text("/srv/index.html") == PAGE
        assert [e["name"] for e in sb.files.list("/srv")] == ["index.html"]
        sb.commands.run("cd /srv && exec python3 -m http.server 8000", background=True)
        wait_listening(sb, 8000)
        assert sb.expose_port(8000)["port"] == 8000
        served = fetch_port(server, sb, 8000, {"X-Sandbox-Token": token})
        assert served.status_code == 200 and served.text == PAGE

        before = sb.info["expires_at"]
        sb.set_timeout(900)
        assert sb.info["expires_at"] > before

        # Another project's key sees nothing of it, not even that it exists.
        with Client(url=server.url, api_key=beta_key) as beta:
            assert sid not in [s["id"] for s in beta.sandboxes()]
        with pytest.raises(SandboxError) as hidden:
            Sandbox.connect(sid, url=server.url, api_key=beta_key)
        assert (hidden.value.status, hidden.value.code) == (404, "SANDBOX_NOT_FOUND")
        assert fetch_port(server, sb, 8000, {"Authorization": f"Bearer {beta_key}"}).status_code == 404
        with Client(url=server.url, api_key=alpha_key) as alpha_client:
            assert [s["id"] for s in alpha_client.sandboxes()] == [sid]
    finally:
        sb.close()  # its HTTP client only

    server.kill9()
    time.sleep(0.3)
    server.start()  # the same data directory and database

    again = Sandbox.connect(sid, url=server.url, api_key=alpha_key)
    try:
        assert again.state == "running" and again.info["expires_at"] == sb.info["expires_at"]
        assert again.commands.run("cat /srv/index.html").stdout == PAGE
        served = fetch_port(server, again, 8000, {"X-Sandbox-Token": token})
        assert served.status_code == 200 and served.text == PAGE
        again.kill()
        assert again.state == "terminated"
    finally:
        again.close()
    state = postgres.psql(f"SELECT state FROM sandboxes WHERE id = '{sid}'", database)
    assert state.strip() == "terminated"
    assert not sqlite.exists()  # nothing went to SQLite, not even an empty file
    server.stop()
    assert_no_leaks(server.data_dir, server.bridge)
