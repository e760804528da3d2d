"""Break 19: how many sandboxes one host runs is for its memory and CPU to decide, not a kernel table.

runc gave each container a session keyring, a key of the sandboxes' shared root uid, and the kernel
allows a uid 200 keys host-wide (kernel.keys.maxkeys): the 167th concurrent create failed. Here 300
small sandboxes run at once on a server of their own (a /16, so addresses are not the bound), each
answers a command, and all go without a trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, assert_no_leaks, teardown_bridge

COUNT = 300
CONCURRENCY = 16


@pytest.fixture
def big_server(image_cache: Path, workdir: Path) -> Iterator[Server]:
    srv = Server(workdir / "many", "sbxdmany0", "10.79.0.0/16").start()
    try:
        yield srv
    finally:
        srv.delete_all()
        srv.stop()
        teardown_bridge(srv.bridge)
    assert_no_leaks(srv.data_dir, srv.bridge)


@pytest.mark.timeout(300)
def test_three_hundred_sandboxes_run_at_once(big_server: Server) -> None:
    # On 2 cores: 300 creates in about 20 s, a command in each in 1 s, 300 deletes in 7 s.
    asyncio.run(_run_many(big_server))


async def _run_many(server: Server) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)
    headers = {"Authorization": f"Bearer {server.key}"}
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120, limits=limits) as http:

        async def create(i: int) -> str:
            async with gate:
                body = {"image": "debian", "cpu": 0.1, "memory_mb": 32, "pids": 16, "timeout": 600}
                r = await http.post("/api/v1/sandboxes", json=body)
                assert r.status_code == 201, f"create {i} of {COUNT}: {r.status_code} {r.text}"
                return str(r.json()["id"])

        async def echo(sandbox_id: str) -> str:
            async with gate:
                r = await http.post(f"/api/v1/sandboxes/{sandbox_id}/commands", json={"command": ["echo", sandbox_id]})
                assert r.status_code == 200, r.text
                return str(r.json()["stdout"])

        async def delete(sandbox_id: str) -> None:
            async with gate:
                r = await http.delete(f"/api/v1/sandboxes/{sandbox_id}")
                assert r.status_code in (200, 204), r.text

        ids = await asyncio.gather(*(create(i) for i in range(COUNT)))
        listing = (await http.get("/api/v1/sandboxes", params={"limit": 1000})).json()["items"]
        states = [item["status"]["state"] for item in listing if item["id"] in ids]
        assert states == ["running"] * COUNT, sorted(set(states))

        answers = await asyncio.gather(*(echo(i) for i in ids))
        assert answers == [f"{i}\n" for i in ids]
        await asyncio.gather(*(delete(i) for i in ids))
