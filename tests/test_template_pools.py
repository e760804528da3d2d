"""Warm pools of a template on real sandboxes: a create naming the template takes a ready sandbox
that has the template's files, env and start command; a miss is a normal create; require on an
empty pool is a clear 503; the pool refills; a new build of the template replaces the pooled
sandboxes of the old one (never handed out), and deleting the version a pool starts from is refused."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from click.testing import CliRunner
from sandboxd_sdk import Client, SandboxError, Templates
from sandboxd_sdk.cli.main import main as cli

from tests.conftest import Server
from tests.test_pools import MEMORY, client, pooled_records, srv, wait_pool

__all__ = ["srv"]  # the fixture: a server of its own, whose pools are drained after each test

START = "echo started-by-template > /tmp/started; exec sleep 100000"


def build(srv: Server, name: str, marker: str) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"type": "copy", "path": "/opt/tpl/marker", "content": f"{marker}\n"},
        {"type": "env", "env": {"TPL_GREETING": f"hello-{marker}"}},
    ]
    with Templates(url=srv.url, api_key=srv.key) as templates:
        built = templates.build(name, steps, start_command=START)
    assert built["state"] == "ready", built
    return built


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


def wait_for(c: Client, pool_id: str, ref: str, limit: float = 60) -> dict[str, Any]:
    """The pool once it follows ``ref`` and holds one ready sandbox, all made from it."""
    deadline = time.monotonic() + limit
    while True:
        found = c.pools.get(pool_id)
        if found["template_ref"] == ref and found["ready"] == 1 and not found["starting"]:
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def live(srv: Server) -> list[str]:
    return [i for i, state in pooled_records(srv) if state in ("pending", "running")]


def test_a_template_pool_hit_has_the_templates_files_env_and_start_command_and_refills(srv: Server) -> None:
    name = unique("pooled")
    build(srv, name, "one")
    env = {"SANDBOXD_URL": srv.url, "SANDBOXD_API_KEY": srv.key, "COLUMNS": "200"}  # a table not cut
    runner = CliRunner()
    made = runner.invoke(cli, ["pool", "create", "--template", name, "--memory", str(MEMORY)], env=env)
    assert made.exit_code == 0, made.output
    pool_id = made.output.strip()
    with client(srv) as c:
        wait_pool(c, pool_id, 1)
        listed = runner.invoke(cli, ["pool", "ls"], env=env)
        assert listed.exit_code == 0 and f"template {name}:1" in listed.output, listed.output
        shown = json.loads(runner.invoke(cli, ["pool", "ls", "--json"], env=env).output)
        assert [(p["template"], p["template_ref"], p["image"]) for p in shown] == [(name, f"{name}:1", "")]
        (pooled, *_) = live(srv)
        with srv.create(template=name, memory_mb=MEMORY, metadata={"team": "t"}) as sb:
            assert sb.info["warm_pool_checkout"] == {"hit": True, "id": pool_id}
            assert sb.id == pooled and sb.info["template"] == f"{name}:1"  # recorded as a create of it is
            result = sb.commands.run("cat /opt/tpl/marker /tmp/started; echo $TPL_GREETING")
            assert result.stdout.split() == ["one", "started-by-template", "hello-one"]
            refilled = wait_pool(c, pool_id, 1)  # refilled in the background
            assert refilled["hits"] == 1 and refilled["misses"] == 0
        # Limits differ: nothing fixed at container creation may; a normal create of the template.
        with srv.create(template=name, memory_mb=MEMORY * 2) as sb:
            assert sb.info["warm_pool_checkout"] == {"hit": False, "id": None}
            assert sb.commands.run("cat /opt/tpl/marker").stdout == "one\n"
        with srv.create(memory_mb=MEMORY) as sb:  # the server's default image: not the template's pool
            assert sb.info["warm_pool_checkout"] == {"hit": False, "id": None}
        c.pools.delete(pool_id)
    assert live(srv) == []


def test_a_miss_and_require_on_an_empty_template_pool(srv: Server) -> None:
    name = unique("empty")
    build(srv, name, "two")
    with client(srv) as c:
        pool = c.pools.create(template=name, target=0, memory_mb=MEMORY)
        assert pool["template"] == name and pool["template_ref"] == f"{name}:1"  # resolved when made
        with srv.create(template=name, memory_mb=MEMORY) as sb:  # fits, but empty: a normal create
            assert sb.info["warm_pool_checkout"] == {"hit": False, "id": pool["id"]}
            assert sb.commands.run("cat /opt/tpl/marker").stdout == "two\n"
        with srv.client() as http:
            body = {"template": name, "memory_mb": MEMORY, "warm_pool": {"mode": "require"}}
            refused = http.post("/api/v1/sandboxes", json=body)
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "WARM_POOL_EMPTY" and pool["id"] in refused.json()["message"]
            other = http.post("/api/v1/sandboxes", json={**body, "template": None})  # the default image
            assert other.status_code == 409 and "fits this create" in other.json()["message"]
            missing = http.post("/api/v1/pools", json={"template": unique("nosuch")})
            assert missing.status_code == 404 and missing.json()["code"] == "TEMPLATE_NOT_FOUND", missing.text
            runtime = http.post("/api/v1/pools", json={"runtime": "nosuch"})
            assert runtime.status_code == 400 and "runtime 'nosuch' is not configured" in runtime.text
            both = http.post("/api/v1/pools", json={"template": name, "image": "debian"})
            assert both.status_code == 400 and "one of image, template and runtime" in both.text
        assert c.pools.get(pool["id"])["misses"] == 2
        assert [s["status"]["state"] for s in c.sandboxes(state=["pending", "running"])] == []
        c.pools.delete(pool["id"])


def test_a_new_build_replaces_the_pooled_sandboxes_and_the_version_in_use_is_not_deleted(srv: Server) -> None:
    name = unique("changing")
    build(srv, name, "old")
    with client(srv) as c, Templates(url=srv.url, api_key=srv.key) as templates:
        pool = c.pools.create(template=name, target=1, memory_mb=MEMORY)
        wait_for(c, pool["id"], f"{name}:1")
        (old, *_) = live(srv)
        # Deleting the version the pool starts from is refused, naming the pool.
        with pytest.raises(SandboxError) as refused:
            templates.delete(name, 1)
        assert refused.value.status == 409 and pool["id"] in str(refused.value), refused.value
        build(srv, name, "new")
        # The pool follows the new build: the old pooled sandbox is removed, never handed out.
        wait_for(c, pool["id"], f"{name}:2")
        assert old not in live(srv) and len(live(srv)) == 1
        # A create pinned to the old version fits no pool (the pool's sandboxes are of version 2).
        with srv.create(template=f"{name}:1", memory_mb=MEMORY) as sb:
            assert sb.info["warm_pool_checkout"] == {"hit": False, "id": None}
            assert sb.commands.run("cat /opt/tpl/marker").stdout == "old\n"
        with srv.create(template=name, memory_mb=MEMORY) as sb:
            assert sb.info["warm_pool_checkout"] == {"hit": True, "id": pool["id"]}
            assert sb.info["template"] == f"{name}:2"
            assert sb.commands.run("cat /opt/tpl/marker; echo $TPL_GREETING").stdout.split() == ["new", "hello-new"]
        wait_for(c, pool["id"], f"{name}:2")
        templates.delete(name, 1)  # the pool moved on: the old version goes
        with pytest.raises(SandboxError) as refused:
            templates.delete(name, 2)
        assert refused.value.status == 409 and pool["id"] in str(refused.value)
        c.pools.delete(pool["id"])
        templates.delete(name, 2)  # no pool starts from it now
    assert live(srv) == []


def test_a_pool_pinned_to_a_version_keeps_it_after_a_new_build(srv: Server) -> None:
    name = unique("pinned")
    build(srv, name, "first")
    with client(srv) as c:
        pool = c.pools.create(template=f"{name}:1", target=1, memory_mb=MEMORY)
        wait_for(c, pool["id"], f"{name}:1")
        build(srv, name, "second")
        with srv.create(template=name, memory_mb=MEMORY) as sb:  # the newest (2): not the pinned pool's
            assert sb.info["warm_pool_checkout"] == {"hit": False, "id": None}
        with srv.create(template=f"{name}:1", memory_mb=MEMORY) as sb:
            assert sb.info["warm_pool_checkout"] == {"hit": True, "id": pool["id"]}
            assert sb.commands.run("cat /opt/tpl/marker").stdout == "first\n"
        assert c.pools.get(pool["id"])["template_ref"] == f"{name}:1"
        c.pools.delete(pool["id"])
    assert live(srv) == []


def test_a_server_killed_during_a_template_pool_refill_comes_back_consistent(srv: Server) -> None:
    name = unique("killed")
    build(srv, name, "survives")
    with client(srv) as c:
        pool = c.pools.create(template=name, target=2, memory_mb=MEMORY)
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
        with srv.create(template=name, memory_mb=MEMORY) as sb:
            assert sb.info["warm_pool_checkout"] == {"hit": True, "id": pool["id"]}
            assert sb.commands.run("cat /opt/tpl/marker").stdout == "survives\n"
        c.pools.delete(pool["id"])
    assert live(srv) == []
