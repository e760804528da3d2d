"""The event stream and the history on real sandboxes: every transition, with its reason, in
order, only to the sandbox's own project, resumed after a dropped connection and a server kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from sandboxd_sdk import AsyncClient, AsyncEventStream, AsyncSandbox, SandboxEvent

from tests.conftest import Server, restartable

pytestmark = pytest.mark.anyio


@pytest.fixture
def own_server(image_cache: Path, workdir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    name = request.node.name[:20]
    with restartable(Server(workdir / name, "sbxdtest1", "10.77.1.0/24")) as srv:
        yield srv


async def take_until(
    stream: AsyncEventStream, done: Callable[[SandboxEvent], bool], limit: float = 60
) -> list[SandboxEvent]:
    got: list[SandboxEvent] = []
    with anyio.fail_after(limit):
        async for event in stream:
            got.append(event)
            if done(event):
                return got
    raise AssertionError(f"the stream ended: {got}")


def moves(events: list[SandboxEvent], sandbox_id: str) -> list[tuple[str | None, str, str]]:
    return [(e.from_state, e.to_state, e.reason) for e in events if e.sandbox_id == sandbox_id]


def other_project_key(server: Server, name: str) -> str:
    with server.client() as http:
        r = http.post("/api/v1/projects", json={"name": name})
        assert r.status_code == 201, r.text
        r = http.post("/api/v1/keys", json={"name": name, "scopes": ["write"], "project_id": r.json()["id"]})
        assert r.status_code == 201, r.text
        return str(r.json()["key"])


async def test_create_and_delete_stream_in_order_and_only_to_the_project(server: Server) -> None:
    other_key = other_project_key(server, "events-" + os.urandom(3).hex())
    async with (
        AsyncClient(url=server.url, api_key=server.key) as mine,
        AsyncClient(url=server.url, api_key=other_key) as theirs,
    ):
        # Subscribed once events() returns: what follows is in both streams.
        ours, others = await mine.events(), await theirs.events()
        sb = await AsyncSandbox.create(url=server.url, api_key=server.key, timeout=120)
        await sb.kill()
        got = await take_until(ours, lambda e: e.sandbox_id == sb.id and e.to_state == "terminated")
        assert moves(got, sb.id) == [
            (None, "pending", "creating"),
            ("pending", "running", "started"),
            ("running", "stopping", "deleted"),
            ("stopping", "terminated", "deleted"),
        ]
        # The other project sees its own sandbox's events and none of ours, which came first.
        theirs_sb = await AsyncSandbox.create(url=server.url, api_key=other_key, timeout=120)
        await theirs_sb.kill()
        seen = await take_until(others, lambda e: e.sandbox_id == theirs_sb.id and e.to_state == "terminated")
        assert {e.sandbox_id for e in seen} == {theirs_sb.id}
        await ours.aclose()
        await others.aclose()
        # The history says the same, and the other project's key cannot read it.
        history = await sb.history()
        assert [(e.from_state, e.to_state, e.reason) for e in history] == moves(got, sb.id)
        assert [e.id for e in history] == [e.id for e in got if e.sandbox_id == sb.id]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {other_key}"}) as http:
        r = http.get(f"/api/v1/sandboxes/{sb.id}/history")
        assert r.status_code == 404 and r.json()["code"] == "SANDBOX_NOT_FOUND"


async def test_a_timed_out_sandbox_says_timeout(server: Server) -> None:
    async with AsyncClient(url=server.url, api_key=server.key) as client:
        sb = await AsyncSandbox.create(url=server.url, api_key=server.key, timeout=1)
        stream = await client.events(sandbox_id=sb.id, last_event_id=0)  # from the start: it may be over already
        got = await take_until(stream, lambda e: e.to_state == "terminated")
        await stream.aclose()
    assert moves(got, sb.id)[-2:] == [("running", "stopping", "timeout"), ("stopping", "terminated", "timeout")]
    assert "timeout passed" in got[-1].message


@pytest.mark.parametrize("stop", ["kill9", "sigterm"])
async def test_a_client_resumes_across_a_server_restart(own_server: Server, stop: str) -> None:
    """The SDK's stream reconnects with Last-Event-ID; what happened while it was away (a server
    killed and restarted, a delete made meanwhile) comes from the store. A server stopped with
    SIGTERM does not wait for the open stream to end."""
    async with AsyncClient(url=own_server.url, api_key=own_server.key) as client:
        sb = await AsyncSandbox.create(url=own_server.url, api_key=own_server.key, timeout=600)
        stream = await client.events(sandbox_id=sb.id, last_event_id=0)
        started = await take_until(stream, lambda e: e.to_state == "running")
        if stop == "kill9":
            own_server.kill9()
        else:
            own_server.stop()  # SIGTERM, then SIGKILL after 15 s: a shutdown that waited for the stream
            # uvicorn ends by raising the signal again once shut down
            assert own_server.proc is not None and own_server.proc.returncode == -signal.SIGTERM
        own_server.start()
        with own_server.client() as http:
            assert http.delete(f"/api/v1/sandboxes/{sb.id}").status_code == 200
        rest = await take_until(stream, lambda e: e.to_state == "terminated")
        await stream.aclose()
        assert moves(started + rest, sb.id) == [
            (None, "pending", "creating"),
            ("pending", "running", "started"),
            ("running", "stopping", "deleted"),
            ("stopping", "terminated", "deleted"),
        ]
        # A new reader with the last id it saw before the kill gets the rest, and only that.
        again = await client.events(sandbox_id=sb.id, last_event_id=started[-1].id)
        assert [e.id for e in await take_until(again, lambda e: e.to_state == "terminated")] == [e.id for e in rest]
        await again.aclose()
        await sb.close()


def test_cli_follows_events_and_ctrl_c_exits_130_quietly(server: Server) -> None:
    env = {**os.environ, "SANDBOXD_URL": server.url, "SANDBOXD_API_KEY": server.key}
    cli = [sys.executable, "-c", "from sandboxd_sdk.cli.main import main; main()"]
    sb = server.create(timeout=120)
    proc = subprocess.Popen(
        [*cli, "events", "--sandbox", sb.id, "--since", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        sb.kill()
        lines += [proc.stdout.readline(), proc.stdout.readline()]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and stderr == ""
    assert [line.split("  ")[1:3] for line in lines] == [
        [sb.id, "- -> pending"],
        [sb.id, "pending -> running"],
        [sb.id, "running -> stopping"],
        [sb.id, "stopping -> terminated"],
    ]
    assert lines[3].rstrip().endswith("(deleted)")
    out = subprocess.run([*cli, "history", sb.id, "--json"], env=env, capture_output=True, text=True, check=True)
    history = json.loads(out.stdout)
    assert [(h["to_state"], h["reason"]) for h in history] == [
        ("pending", "creating"),
        ("running", "started"),
        ("stopping", "deleted"),
        ("terminated", "deleted"),
    ]
