"""Idempotency-Key on real sandboxes: a retried create makes one sandbox, whether the retry comes
after the first, alongside it, or after the server was killed (during it, or after it)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sandboxd_sdk import Sandbox, SandboxError, Templates

from tests.conftest import Server, restartable

BRIDGE, SUBNET = "sbxdidem0", "10.77.121.0/24"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def live(http: httpx.Client, label: str) -> list[dict[str, Any]]:
    query = {"label": f"t={label}", "state": ["pending", "running"]}
    return list(http.get("/api/v1/sandboxes", params=query).json()["items"])


def every(http: httpx.Client, label: str) -> list[dict[str, Any]]:
    return list(http.get("/api/v1/sandboxes", params={"label": f"t={label}"}).json()["items"])


def test_the_same_key_twice_makes_one_sandbox(server: Server) -> None:
    label, key = unique("seq"), unique("key")
    first = server.create(idempotency_key=key, metadata={"t": label}, memory_mb=256)
    try:
        again = server.create(idempotency_key=key, metadata={"t": label}, memory_mb=256)
        assert again.id == first.id
        assert again.commands.run("echo one").stdout == "one\n"  # the one sandbox, running
        again.close()
        with server.client() as http:
            assert [s["id"] for s in live(http, label)] == [first.id]
            # Another body with the key: a 422 naming it, and nothing made.
            with pytest.raises(SandboxError) as refused:
                server.create(idempotency_key=key, metadata={"t": label}, memory_mb=512)
            assert refused.value.status == 422 and refused.value.code == "IDEMPOTENCY_KEY_REUSED"
            assert refused.value.field == "Idempotency-Key" and repr(key) in refused.value.message
            assert [s["id"] for s in live(http, label)] == [first.id]
    finally:
        first.kill()


def test_concurrent_creates_with_one_key_make_one_sandbox(server: Server) -> None:
    label, key = unique("conc"), unique("key")
    made: list[Sandbox] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def create() -> None:
        start.wait()
        try:
            made.append(server.create(idempotency_key=key, metadata={"t": label}, memory_mb=256))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors and len(made) == 3
        assert len({sb.id for sb in made}) == 1
        with server.client() as http:
            assert [s["id"] for s in live(http, label)] == [made[0].id]
    finally:
        for sb in made[:1]:
            sb.kill()
        for sb in made[1:]:
            sb.close()


def test_keys_are_the_projects_own(server: Server) -> None:
    label, key, project = unique("proj"), unique("key"), unique("p")
    with server.client() as http:
        assert http.post("/api/v1/projects", json={"name": project}).status_code == 201
    mine = server.create(idempotency_key=key, metadata={"t": label}, memory_mb=256)
    theirs = Sandbox.create(
        url=server.url, api_key=server.key, project=project, idempotency_key=key, metadata={"t": label}, memory_mb=256
    )
    try:
        assert mine.id != theirs.id
        assert theirs.commands.run("echo theirs").stdout == "theirs\n"
    finally:
        mine.kill()
        theirs.kill()


def test_the_cli_create_with_a_key_prints_the_same_sandbox(server: Server) -> None:
    key = unique("cli")
    env = {**os.environ, "SANDBOXD_URL": server.url, "SANDBOXD_API_KEY": server.key}
    ids = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "sandboxd_sdk.cli.main", "create", "-q", "--idempotency-key", key, "-l", "t=" + key],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        ids.append(done.stdout.strip())
    with server.client() as http:
        try:
            assert ids[0] == ids[1] and ids[0].startswith("sbx_")
            assert [s["id"] for s in live(http, key)] == [ids[0]]
            bad = subprocess.run(
                [sys.executable, "-m", "sandboxd_sdk.cli.main", "create", "--idempotency-key", key],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert bad.returncode != 0 and "Idempotency-Key" in bad.stderr and key in bad.stderr, bad.stderr
        finally:
            http.delete(f"/api/v1/sandboxes/{ids[0]}")


@pytest.fixture
def own_server(image_cache: Path, workdir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    env = getattr(request, "param", {})
    with restartable(Server(workdir / unique("idem")[:10], BRIDGE, SUBNET, **env)) as srv:
        yield srv


def test_a_retry_after_a_server_kill_gets_the_first_sandbox(own_server: Server) -> None:
    label, key = unique("kill"), unique("key")
    first = own_server.create(idempotency_key=key, metadata={"t": label}, memory_mb=256)
    first.close()
    own_server.kill9()
    own_server.start()
    again = own_server.create(idempotency_key=key, metadata={"t": label}, memory_mb=256)
    assert again.id == first.id and again.state == "running"
    assert again.commands.run("echo alive").stdout == "alive\n"
    again.close()
    with own_server.client() as http:
        assert [s["id"] for s in every(http, label)] == [first.id]


def test_a_create_the_server_died_in_is_made_once_by_the_retry(own_server: Server) -> None:
    """The SDK sends the create again with its key when the connection breaks; the restarted server
    has failed the half-made sandbox (and removed what it had), and the retry makes the one."""
    name, label, key = unique("slow"), unique("died"), unique("key")
    with Templates(url=own_server.url, api_key=own_server.key) as templates:
        # Every create of this template takes 2 s: room to kill the server in the middle of one.
        built = templates.build(name, [], ready_check={"command": "sleep 2", "timeout": 30})
        assert built["state"] == "ready", built
    made: list[Sandbox] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            made.append(own_server.create(template=name, idempotency_key=key, metadata={"t": label}, memory_mb=256))
        except BaseException as exc:
            errors.append(exc)

    creating = threading.Thread(target=create)
    creating.start()
    with own_server.client() as http:
        deadline = time.monotonic() + 30
        while not live(http, label) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert live(http, label), "the create never began"
    own_server.kill9()
    own_server.start()
    creating.join(120)
    assert not errors, errors
    sb = made[0]
    try:
        assert sb.state == "running" and sb.commands.run("echo made").stdout == "made\n"
        with own_server.client() as http:
            states = {s["id"]: (s["status"]["state"], s["status"]["reason"]) for s in every(http, label)}
        assert states.pop(sb.id) == ("running", "started")
        assert list(states.values()) == [("failed", "server_restarted")]  # the half-made one, taken down
        again = own_server.create(template=name, idempotency_key=key, metadata={"t": label}, memory_mb=256)
        assert again.id == sb.id
        again.close()
    finally:
        sb.kill()


@pytest.mark.parametrize("own_server", [{"SANDBOXD_IDEMPOTENCY_RETENTION_SECONDS": "1"}], indirect=True)
def test_keys_expire_after_their_retention(own_server: Server) -> None:
    label, key = unique("exp"), unique("key")
    first = own_server.create(idempotency_key=key, metadata={"t": label}, memory_mb=256)
    again = own_server.create(idempotency_key=key, metadata={"t": label}, memory_mb=256)
    assert again.id == first.id
    again.close()
    time.sleep(2)  # the reaper runs every 0.2 s here
    later = own_server.create(idempotency_key=key, metadata={"t": label}, memory_mb=256)
    try:
        assert later.id != first.id
    finally:
        first.kill()
        later.kill()
