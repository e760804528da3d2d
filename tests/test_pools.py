"""Warm pools on real sandboxes: a fitting create takes a ready sandbox bound to the request's own
identity (hostname, env, egress, labels, name), a create that does not fit is a normal one, require
on an empty pool is a clear 503, the pool refills, another project never gets one, and a server
killed during a refill comes back with consistent records and nothing leaked."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sandboxd_sdk import Client, Sandbox, SandboxError
from sandboxd_sdk.cli.main import main as cli

from tests.conftest import InternetHost, Server, restartable

BRIDGE, SUBNET = "sbxdpool0", "10.77.94.0/24"
MEMORY = 256  # the pools' limit: a create asking for it fits


@pytest.fixture
def srv(image_cache: Path, workdir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    with restartable(Server(workdir / f"wp{abs(hash(request.node.name)) % 10**6}", BRIDGE, SUBNET)) as server:
        try:
            yield server
        finally:
            drain_pools(server)  # restartable's clean-up sees only what a project lists


def drain_pools(srv: Server) -> None:
    """Deletes every pool (and so its sandboxes) of the projects the tests use, even after a failure."""
    if srv.proc is None or srv.proc.poll() is not None:
        srv.start()
    for project in (None, "other"):
        with suppress(SandboxError), client(srv, project) as c:
            for pool in c.pools.list():
                c.pools.delete(pool["id"])


def client(srv: Server, project: str | None = None) -> Client:
    return Client(url=srv.url, api_key=srv.key, project=project)


def wait_pool(c: Client, pool_id: str, ready: int, limit: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while (found := c.pools.get(pool_id))["ready"] != ready or found["starting"]:
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    return found


def pooled_records(srv: Server) -> list[tuple[str, str]]:
    """(id, state) of every pooled sandbox record, read from the server's database (no key sees them)."""
    with closing(sqlite3.connect(srv.data_dir / "sandboxd.db")) as db:
        rows = db.execute("SELECT id, state FROM sandboxes WHERE project_id LIKE 'pooled:%' ORDER BY id").fetchall()
    return [(str(i), str(s)) for i, s in rows]


PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    s = socket.create_connection((sys.argv[1], 8000), timeout=3); print('reached', s.recv(5).decode())\n"
    "except OSError as e:\n"
    "    print('refused', e.errno)\n"
)


def reach(sb: Sandbox, address: str) -> str:
    sb.files.write("/tmp/probe.py", PROBE)
    return str(sb.commands.run(["python3", "/tmp/probe.py", address]).stdout.strip())


def test_a_hit_is_bound_to_the_requests_identity_and_the_pool_refills(srv: Server, test_host: InternetHost) -> None:
    with client(srv) as c:
        pool = c.pools.create(target=1, memory_mb=MEMORY)
        wait_pool(c, pool["id"], 1)
        assert c.sandboxes() == []  # a pooled sandbox is in no list of the project
        (pooled_id, _), *_ = pooled_records(srv)
        started = time.monotonic()
        with srv.create(
            memory_mb=MEMORY, env={"POOL_TEST": "mine"}, name="from-pool", metadata={"team": "a"}, timeout=120
        ) as sb:
            assert sb.info["warm_pool_checkout"] == {"hit": True, "id": pool["id"]}
            assert sb.id == pooled_id and sb.info["name"] == "from-pool" and sb.info["metadata"] == {"team": "a"}
            expires = sb.info["expires_at"]
            assert expires and sb.info["timeout"] == 120  # its timeout starts at the checkout
            # The hostname is its own id, seen by no one before: not the pool's, not another's.
            hostname = sb.id.replace("_", "-")
            assert sb.commands.run("hostname").stdout.strip() == hostname
            assert sb.files.read_text("/etc/hostname").strip() == hostname
            assert sb.commands.run("echo $POOL_TEST").stdout.strip() == "mine"
            # Pooled sandboxes start with no egress; the request's policy (allow all) holds now.
            assert reach(sb, test_host.ADDRESS) == "reached hello"
            assert [s["id"] for s in c.sandboxes()] == [sb.id]
            # The project's history of it begins at the checkout; the pool's own is not the project's.
            with srv.client() as http:
                stream = http.get("/api/v1/events", params={"follow": "false", "last_event_id": "0"}).text
            mine = [line for line in stream.splitlines() if sb.id in line]
            assert (
                len(mine) == 1 and "warm_pool_checkout" in mine[0] and '"from_state":null' in mine[0].replace(" ", "")
            )
            assert c.sandboxes(labels=["team=a"])[0]["id"] == sb.id
            assert time.monotonic() - started < 60
            refilled = wait_pool(c, pool["id"], 1)  # refilled in the background
            assert refilled["hits"] == 1 and refilled["misses"] == 0
        (second, _), *_ = [r for r in pooled_records(srv) if r[1] == "running"]
        with srv.create(memory_mb=MEMORY, egress={"mode": "custom", "allowed_domains": ["only.test"]}) as sb:
            assert sb.id == second and sb.info["warm_pool_checkout"]["hit"] is True
            assert reach(sb, test_host.ADDRESS).startswith("refused")  # the request's policy, not allow all
            assert sb.commands.run("echo ${POOL_TEST:-none}").stdout.strip() == "none"  # not the last one's env
        c.pools.delete(pool["id"])
        with pytest.raises(SandboxError) as missing:
            c.pools.get(pool["id"])
        assert missing.value.code == "POOL_NOT_FOUND"
    assert [s for _, s in pooled_records(srv) if s not in ("terminated", "failed")] == []


def test_a_miss_is_a_normal_create_and_require_on_an_empty_pool_is_refused(srv: Server) -> None:
    with client(srv) as c:
        empty = c.pools.create(target=0, memory_mb=MEMORY)
        with srv.create(memory_mb=MEMORY * 2) as sb:  # fits no pool
            assert sb.info["warm_pool_checkout"] == {"hit": False, "id": None}
            assert sb.state == "running"
        with srv.create(memory_mb=MEMORY) as sb:  # fits, but the pool is empty: a normal create
            assert sb.info["warm_pool_checkout"] == {"hit": False, "id": empty["id"]}
        with srv.create(memory_mb=MEMORY, warm_pool={"mode": "bypass"}) as sb:
            assert sb.info["warm_pool_checkout"] == {"hit": False, "id": None}
        with srv.client() as http:
            body = {"memory_mb": MEMORY, "warm_pool": {"id": empty["id"], "mode": "require"}}
            refused = http.post("/api/v1/sandboxes", json=body)
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "WARM_POOL_EMPTY"
            assert empty["id"] in refused.json()["message"] and "no ready sandbox" in refused.json()["message"]
            unfit = http.post("/api/v1/sandboxes", json={**body, "memory_mb": MEMORY * 2})
            assert unfit.status_code == 409 and "fits this create" in unfit.json()["message"]
        assert c.pools.get(empty["id"])["misses"] == 2
        assert [s["status"]["state"] for s in c.sandboxes(state=["pending", "running"])] == []
        c.pools.delete(empty["id"])


def test_another_project_never_takes_from_the_pool(srv: Server) -> None:
    with client(srv) as c:
        c.projects.create("other")
        pool = c.pools.create(target=1, memory_mb=MEMORY)
        wait_pool(c, pool["id"], 1)
        with client(srv, "other") as other:
            assert other.pools.list() == []
            with pytest.raises(SandboxError) as err:
                other.pools.get(pool["id"])
            assert err.value.code == "POOL_NOT_FOUND"
            with pytest.raises(SandboxError) as err:
                Sandbox.create(url=srv.url, api_key=srv.key, project="other", warm_pool={"id": pool["id"]})
            assert err.value.code == "POOL_NOT_FOUND"
            with Sandbox.create(url=srv.url, api_key=srv.key, project="other", memory_mb=MEMORY) as sb:
                assert sb.info["warm_pool_checkout"] == {"hit": False, "id": None}
        assert c.pools.get(pool["id"])["ready"] == 1
        with srv.client() as http:  # no key, not even the server's, works in a pool's own records
            listed = http.get("/api/v1/sandboxes", headers={"X-Sandboxd-Project": f"pooled:{pool['id']}"})
            assert listed.status_code == 404, listed.text
        c.pools.delete(pool["id"])


def test_the_cli_creates_lists_resizes_and_removes_pools(srv: Server) -> None:
    env = {"SANDBOXD_URL": srv.url, "SANDBOXD_API_KEY": srv.key}
    runner = CliRunner()
    made = runner.invoke(cli, ["pool", "create", "--memory", str(MEMORY), "--target", "1"], env=env)
    assert made.exit_code == 0, made.output
    pool_id = made.output.strip()
    assert pool_id.startswith("wp_")
    with client(srv) as c:
        wait_pool(c, pool_id, 1)
        listed = runner.invoke(cli, ["pool", "ls", "--json"], env=env)
        assert listed.exit_code == 0, listed.output
        assert [(p["id"], p["memory_mb"], p["ready"]) for p in json.loads(listed.output)] == [(pool_id, MEMORY, 1)]
        resized = runner.invoke(cli, ["pool", "resize", pool_id, "0"], env=env)
        assert resized.exit_code == 0 and resized.output.strip() == f"{pool_id} target 0"
        wait_pool(c, pool_id, 0)
    assert [s for _, s in pooled_records(srv) if s == "running"] == []
    removed = runner.invoke(cli, ["pool", "rm", pool_id], env=env)
    assert removed.exit_code == 0 and removed.output.strip() == pool_id
    missing = runner.invoke(cli, ["pool", "rm", pool_id], env=env)
    assert missing.exit_code != 0 and "not found" in missing.output


def test_a_server_killed_during_a_refill_comes_back_consistent(srv: Server) -> None:
    with client(srv) as c:
        pool = c.pools.create(target=2, memory_mb=MEMORY)
        deadline = time.monotonic() + 30
        while not any(state == "pending" for _, state in pooled_records(srv)):
            assert time.monotonic() < deadline
            time.sleep(0.005)
    srv.kill9()
    srv.start()
    with client(srv) as c:
        wait_pool(c, pool["id"], 2)
        states = [s for _, s in pooled_records(srv)]
        assert "pending" not in states and states.count("running") == 2
        with srv.create(memory_mb=MEMORY) as sb:
            assert sb.info["warm_pool_checkout"]["hit"] is True
            assert sb.commands.run("echo ok").stdout.strip() == "ok"
        c.pools.delete(pool["id"])
    assert [s for _, s in pooled_records(srv) if s not in ("terminated", "failed")] == []
    with httpx.Client(base_url=srv.url) as http:
        assert http.get("/readyz").status_code == 200


def test_the_policy_bound_at_checkout_is_on_record_and_outlives_a_kill9(srv: Server, test_host: InternetHost) -> None:
    """The claim itself records the request's egress policy (no second write after it): a server
    killed after the checkout applies that policy again on restart, not the pool's deny-all."""
    with client(srv) as c:
        pool = c.pools.create(target=1, memory_mb=MEMORY)
        wait_pool(c, pool["id"], 1)
        sb = srv.create(memory_mb=MEMORY)  # allow all: the pooled sandbox had none
        try:
            assert sb.info["warm_pool_checkout"]["hit"] is True
            assert reach(sb, test_host.ADDRESS) == "reached hello"
            with closing(sqlite3.connect(srv.data_dir / "sandboxd.db")) as db:
                (runtime,) = db.execute("SELECT runtime FROM sandboxes WHERE id = ?", (sb.id,)).fetchone()
            assert json.loads(runtime)["egress"]["default"] == "allow"
            c.pools.resize(pool["id"], 0)  # no refill under way when it is killed
            wait_pool(c, pool["id"], 0)
            srv.kill9()
            srv.start()
            with client(srv) as again:
                assert [s["id"] for s in again.sandboxes()] == [sb.id]
            assert reach(sb, test_host.ADDRESS) == "reached hello"
        finally:
            sb.kill()
        c.pools.delete(pool["id"])
