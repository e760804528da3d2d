"""The SDK shares one HTTP client per configuration (sandboxd_sdk/_pool.py): two `Sandbox.create`
calls with the same URL and key use one client (one SSL context, one connection pool), and the
client is closed at interpreter exit (sync) or when its event loop shuts down (async).

The pool applies to clients that reach the server over TCP, so the app (on the fake runtime) is
served by uvicorn on a loopback port here, not through an ASGI transport."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from sandboxd_sdk import AsyncSandbox, Sandbox, _pool

from sandboxd.api.app import create_app
from sandboxd.config import Settings
from tests.fake_runtime import FakeRuntime

ROOT = Path(__file__).resolve().parents[2]
KEY = "pool-test-key"


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/db", api_key=KEY, reaper_interval=3600)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(settings, runtime=FakeRuntime()), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    _pool.close_shared_clients()
    server.should_exit = True
    thread.join(20)
    sock.close()


def test_sync_creates_share_one_client_closed_by_close_shared_clients(url: str) -> None:
    with Sandbox.create(url=url, api_key=KEY) as a, Sandbox.create(url=url, api_key=KEY) as b:
        assert a._http is b._http
        shared = a._http
        # Another configuration (here a project) is another client.
        with Sandbox.create(url=url, api_key=KEY, project="default") as c:
            assert c._http is not shared
    assert not shared.is_closed  # a sandbox's exit kills it and leaves the shared client open
    _pool.close_shared_clients()  # what runs at interpreter exit
    assert shared.is_closed
    with Sandbox.create(url=url, api_key=KEY) as d:  # a closed pool starts again
        assert d._http is not shared and not d._http.is_closed


def test_sync_client_is_closed_at_interpreter_exit(url: str, tmp_path: Path) -> None:
    # A hook registered before the SDK is imported runs after the SDK's own (atexit runs them in
    # reverse), and sees the shared client as the SDK left it.
    script = (
        "import atexit, sys\n"
        "seen = []\n"
        "atexit.register(lambda: open(sys.argv[2], 'w').write(str(seen[0].is_closed)))\n"
        "from sandboxd_sdk import Sandbox\n"
        f"a = Sandbox.create(url=sys.argv[1], api_key={KEY!r})\n"
        f"b = Sandbox.create(url=sys.argv[1], api_key={KEY!r})\n"
        "assert a._http is b._http\n"
        "seen.append(a._http)\n"
        "a.kill(); b.kill()\n"
    )
    out = tmp_path / "closed"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'sdk' / 'src'}"}
    subprocess.run([sys.executable, "-c", script, url, str(out)], check=True, env=env, timeout=60)
    assert out.read_text() == "True"


def test_async_creates_share_one_client_per_loop_closed_with_the_loop(url: str) -> None:
    async def two() -> httpx.AsyncClient:
        async with (
            await AsyncSandbox.create(url=url, api_key=KEY) as a,
            await AsyncSandbox.create(url=url, api_key=KEY) as b,
        ):
            assert a._http is b._http
        assert not a._http.is_closed
        return a._http

    first = asyncio.run(two())
    assert first.is_closed  # asyncio.run shut the loop's async generators down: the pool's closer
    second = asyncio.run(two())
    assert second is not first  # a client belongs to its loop
    assert second.is_closed


def test_async_pool_closes_on_request(url: str) -> None:
    async def main() -> None:
        sandbox = await AsyncSandbox.create(url=url, api_key=KEY)
        await sandbox.kill()
        await _pool.aclose_shared_clients()
        assert sandbox._http.is_closed

    asyncio.run(main())
