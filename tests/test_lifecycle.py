from __future__ import annotations

import time

import pytest

from sandboxd import AsyncSandbox, Sandbox, SandboxError
from tests.conftest import Server


def test_sdk_quickstart_from_the_issue(server: Server) -> None:
    with server.create(image="debian", cpu=1, memory_mb=512, env={"A": "1"}, timeout=600) as sb:
        assert sb.id.startswith("sbx_")
        r = sb.commands.run("python3 -c 'print(1+1)'")
        assert r.stdout == "2\n" and r.exit_code == 0
        assert sb.commands.run("echo $A").stdout == "1\n"
        sb.files.write("/work/x.txt", b"hi")
        assert sb.files.read("/work/x.txt") == b"hi"
    with server.client() as http:
        body = http.get(f"/api/v1/sandboxes/{sb.id}").json()
    assert body["status"]["state"] == "terminated"
    assert body["status"]["reason"] == "deleted"


@pytest.mark.anyio
async def test_async_sandbox(server: Server) -> None:
    sb = await AsyncSandbox.create(url=server.url, api_key=server.key, memory_mb=128)
    async with sb:
        r = await sb.commands.run(["python3", "-c", "import os; print(os.getpid())"])
        assert r.exit_code == 0 and int(r.stdout) > 1
        await sb.files.write("/tmp/a", "async")
        assert await sb.files.read("/tmp/a") == b"async"
    assert sb.state == "terminated"


def test_states_headers_and_listing(server: Server) -> None:
    with server.client() as http:
        r = http.post("/api/v1/sandboxes", params={"wait": "false"}, json={"metadata": {"suite": "lc", "n": "1"}})
        assert r.status_code == 202
        assert r.json()["status"]["state"] == "pending"
        sid = r.json()["id"]
        assert r.headers["Location"] == f"/api/v1/sandboxes/{sid}"
        assert r.headers["X-Request-ID"].startswith("req_")
        deadline = time.monotonic() + 20
        while http.get(f"/api/v1/sandboxes/{sid}").json()["status"]["state"] == "pending":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        got = http.get(f"/api/v1/sandboxes/{sid}")
        assert got.json()["status"]["state"] == "running"
        assert got.headers["X-Request-ID"]
        second = http.post("/api/v1/sandboxes", json={"metadata": {"suite": "lc", "n": "2"}}).json()["id"]

        listed = http.get("/api/v1/sandboxes", params={"label": "suite=lc", "state": "running"}).json()
        assert [s["id"] for s in listed["items"]] == [sid, second]  # ids sort by creation time
        one = http.get("/api/v1/sandboxes", params={"label": ["suite=lc", "n=2"]}).json()
        assert [s["id"] for s in one["items"]] == [second]
        page = http.get("/api/v1/sandboxes", params={"label": "suite=lc", "limit": 1}).json()
        assert [s["id"] for s in page["items"]] == [sid] and page["next_cursor"] == sid
        rest = http.get("/api/v1/sandboxes", params={"label": "suite=lc", "cursor": page["next_cursor"]}).json()
        assert [s["id"] for s in rest["items"]] == [second]

        before = http.get(f"/api/v1/sandboxes/{sid}").json()["expires_at"]
        renewed = http.post(f"/api/v1/sandboxes/{sid}/timeout", json={"timeout": 3600}).json()
        assert renewed["expires_at"] > before

        for s in (sid, second):
            ended = http.delete(f"/api/v1/sandboxes/{s}").json()
            assert ended["status"]["state"] == "terminated"
        # Ended sandboxes stay readable, and a second delete changes nothing.
        assert http.get(f"/api/v1/sandboxes/{sid}").json()["status"]["reason"] == "deleted"
        assert http.delete(f"/api/v1/sandboxes/{sid}").status_code == 200
        gone = http.get("/api/v1/sandboxes", params={"label": "suite=lc", "state": "terminated"}).json()
        assert len(gone["items"]) == 2
        run = http.post(f"/api/v1/sandboxes/{sid}/commands", json={"command": "true"})
        assert run.status_code == 409 and run.json()["code"] == "SANDBOX_NOT_RUNNING"


def test_every_sandbox_route_needs_the_key(server: Server, sandbox: Sandbox) -> None:
    import httpx

    routes = [
        ("GET", "/api/v1/sandboxes"),
        ("POST", "/api/v1/sandboxes"),
        ("GET", f"/api/v1/sandboxes/{sandbox.id}"),
        ("DELETE", f"/api/v1/sandboxes/{sandbox.id}"),
        ("POST", f"/api/v1/sandboxes/{sandbox.id}/commands"),
        ("GET", f"/api/v1/sandboxes/{sandbox.id}/files?path=/etc/hostname"),
        ("GET", f"/api/v1/sandboxes/{sandbox.id}/processes"),
        ("GET", f"/api/v1/sandboxes/{sandbox.id}/logs"),
    ]
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.request(method, server.url + path, headers=headers)
            assert r.status_code == 401, (method, path)
            assert r.json()["code"] == "UNAUTHORIZED"
    assert sandbox.commands.run("true").exit_code == 0  # still alive: nothing got through
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_entrypoint_logs_and_exit(server: Server) -> None:
    with server.client() as http:
        body = {"entrypoint": ["sh", "-c", "echo started; echo oops >&2; sleep 0.5; exit 7"]}
        sid = http.post("/api/v1/sandboxes", json=body).json()["id"]
        deadline = time.monotonic() + 10
        while (state := http.get(f"/api/v1/sandboxes/{sid}").json()["status"])["state"] != "terminated":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        logs = http.get(f"/api/v1/sandboxes/{sid}/logs").text  # still readable after the end
        assert logs.splitlines() == ["started", "oops"]
        assert state["state"] == "terminated"
        assert state["reason"] == "entrypoint_exited"
        assert "code 7" in state["message"]


def test_entrypoint_log_on_disk_is_capped(server: Server) -> None:
    with server.client() as http:
        body = {"entrypoint": ["sh", "-c", "head -c 40000000 /dev/zero | tr '\\0' y; echo; echo end"]}
        sid = http.post("/api/v1/sandboxes", json=body).json()["id"]
        deadline = time.monotonic() + 30
        while http.get(f"/api/v1/sandboxes/{sid}").json()["status"]["state"] != "terminated":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        log = http.get(f"/api/v1/sandboxes/{sid}/logs").content
    assert 16 * 1024 * 1024 <= len(log) < 16 * 1024 * 1024 + 200
    assert log.endswith(b"[sandboxd: log truncated here; later output is not kept on disk]\n")


def test_entrypoint_that_cannot_start_says_why(server: Server) -> None:
    with server.client() as http:
        r = http.post("/api/v1/sandboxes", json={"entrypoint": ["/no/such/program"], "metadata": {"t": "noentry"}})
        assert r.status_code == 400 and r.json()["field"] == "entrypoint", r.text
        assert r.json()["message"] == "command not found: /no/such/program"
        failed = http.get("/api/v1/sandboxes", params={"label": "t=noentry"}).json()["items"]
        assert failed[0]["status"]["state"] == "failed"
        assert "command not found" in http.get(f"/api/v1/sandboxes/{failed[0]['id']}/logs").text


def test_connect_to_unknown_sandbox(server: Server) -> None:
    with pytest.raises(SandboxError) as err:
        Sandbox.connect("sbx_nope", url=server.url, api_key=server.key)
    assert err.value.status == 404 and err.value.code == "SANDBOX_NOT_FOUND"


def test_metrics_and_openapi(server: Server, sandbox: Sandbox) -> None:
    import httpx

    metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {server.key}"}).text
    assert 'sandboxd_sandboxes{state="running"}' in metrics
    running = [ln for ln in metrics.splitlines() if ln.startswith('sandboxd_sandboxes{state="running"}')]
    assert int(running[0].split()[-1]) >= 1
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/api/v1/sandboxes/{sandbox_id}/commands" in spec["paths"]
    assert httpx.get(server.url + "/docs").status_code == 200


@pytest.mark.anyio
async def test_concurrent_creates_get_their_own_sandboxes(server: Server) -> None:
    import asyncio

    sandboxes = await asyncio.gather(
        *(AsyncSandbox.create(url=server.url, api_key=server.key, memory_mb=128) for _ in range(6))
    )
    try:
        results = await asyncio.gather(*(sb.commands.run("hostname; hostname -I") for sb in sandboxes))
        names = {r.stdout.split()[0] for r in results}
        addresses = {r.stdout.split()[1] for r in results}
        assert len(names) == 6 and len(addresses) == 6
    finally:
        await asyncio.gather(*(sb.__aexit__(None, None, None) for sb in sandboxes))
    assert all(sb.state == "terminated" for sb in sandboxes)
