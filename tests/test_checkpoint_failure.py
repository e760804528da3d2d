"""A hibernate that must keep memory and cannot makes a clean failure: a 409 naming why, the
sandbox still running with its processes going on, and nothing left behind (no checkpoint image,
no leak), also when the server is killed mid-checkpoint.

On these machines `criu check` fails, so `runc checkpoint` fails too: the server is started with
checkpoint_despite_criu_check, which makes memory "require" try the real `runc checkpoint` on a
real sandbox anyway. That is the failure path a host where CRIU works takes for a process it
cannot save (test_hibernate.py's criu tests, skipped here, take the success path)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sandboxd_sdk import Sandbox, SandboxError

from sandboxd.runtimes import criu
from tests.conftest import Server, assert_no_leaks, restartable
from tests.test_cli_sandboxes import cli
from tests.test_pause import start_counter

BRIDGE, SUBNET = "sbxdckf0", "10.77.161.0/24"


@pytest.fixture
def srv(image_cache: Path, workdir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    # runc: the one class whose checkpoint is driven (oci/checkpoints.py), whatever "auto" picks.
    env = {"SANDBOXD_OCI_RUNTIME": "runc"}
    if "forced" in request.node.name:
        env["SANDBOXD_CHECKPOINT_DESPITE_CRIU_CHECK"] = "true"
    data = workdir / f"ckf{abs(hash(request.node.name)) % 10**6}"
    with restartable(Server(data, BRIDGE, SUBNET, **env)) as server:
        yield server


def counting_on(sb: Sandbox, pid: int) -> None:
    """The counter started before is the same process and still counts."""
    at = int(sb.files.read_text("/root/count"))
    deadline = time.monotonic() + 10
    while int(sb.files.read_text("/root/count")) <= at:
        assert time.monotonic() < deadline, "the counter stopped"
        time.sleep(0.05)
    assert {p.pid: p.running for p in sb.commands.list()}.get(pid), "the counter is not the one from before"


def no_image(srv: Server, sandbox_id: str) -> None:
    saved = srv.data_dir / "checkpoints"
    left = [p.name for p in saved.iterdir()] if saved.is_dir() else []
    assert left == [], f"checkpoint images left: {left}"


def test_forced_require_runs_runc_checkpoint_which_fails_and_the_sandbox_runs_on(srv: Server) -> None:
    if criu_reason() is None:
        pytest.skip("criu check passes here: a checkpoint of this sandbox would succeed")
    with srv.create(timeout=600) as sb:
        pid = start_counter(sb)
        with pytest.raises(SandboxError) as failed:
            sb.hibernate(memory="require")
        err = failed.value
        assert err.status == 409 and err.code == "CHECKPOINT_FAILED", (err.status, err.code, err.message)
        assert "could not be checkpointed; it runs on" in err.message and "runc checkpoint failed" in err.message
        assert "log file" not in err.message  # host paths stay in the server log
        assert str(srv.data_dir) not in err.message and "criu.conf" not in err.message, err.message
        assert err.message.endswith("nothing was saved: runc checkpoint failed"), err.message  # fixed words
        assert sb.refresh()["status"]["state"] == "running"
        counting_on(sb, pid)
        no_image(srv, sb.id)
        assert "hibernated" not in [e.to_state for e in sb.history()]
        # The plain kind still works on it after the failed try: disk only, and said so.
        sb.hibernate(memory="never")
        assert sb.info["hibernation"]["memory_kept"] is False
        sb.resume()
        assert sb.info["status"]["message"] == "booted afresh on its files: only its disk was kept"
    assert_no_leaks(srv.data_dir, srv.bridge)


def test_require_where_criu_check_fails_is_a_409_with_the_reason_and_nothing_stops(srv: Server) -> None:
    if criu_reason() is None:
        pytest.skip("criu check passes here")
    with srv.create(timeout=600) as sb:
        pid = start_counter(sb)
        with pytest.raises(SandboxError) as refused:
            sb.hibernate(memory="require")
        err = refused.value
        assert err.status == 409 and err.code == "CHECKPOINT_FAILED"
        assert "memory cannot be kept on this server (criu check failed on this host)" in err.message
        assert sb.refresh()["status"]["state"] == "running"
        counting_on(sb, pid)
        no_image(srv, sb.id)
        # auto on this host: disk only, never claimed otherwise.
        sb.hibernate()
        assert sb.info["hibernation"]["memory_kept"] is False
    assert_no_leaks(srv.data_dir, srv.bridge)


def test_cli_hibernate_memory_require_says_why_and_exits_non_zero(srv: Server) -> None:
    if criu_reason() is None:
        pytest.skip("criu check passes here")
    with srv.create(timeout=600) as sb:
        result = cli(srv, "hibernate", sb.id, "--memory", "require")
        assert result.returncode != 0
        assert "criu check failed on this host" in result.stderr, (result.stdout, result.stderr)
        assert sb.refresh()["status"]["state"] == "running"


@pytest.mark.parametrize("delay", [0.05, 0.2])
def test_forced_checkpoint_killed_mid_way_leaves_it_running_and_nothing_behind(srv: Server, delay: float) -> None:
    if criu_reason() is None:
        pytest.skip("criu check passes here")
    sb = srv.create(timeout=600)
    try:
        pid = start_counter(sb)

        def call() -> None:
            try:
                with srv.client() as http:
                    http.post(f"/api/v1/sandboxes/{sb.id}/hibernate", json={"memory": "require"})
            except httpx.HTTPError:
                pass  # the server died under it

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(delay)
        srv.kill9()
        thread.join()
        time.sleep(0.3)
        srv.start()
        # The restart's reconcile finds a running record and a running sandbox (the failed dump
        # ended nothing) and adopts it; a partial image of the cut-short dump is removed.
        assert sb.refresh()["status"]["state"] == "running"
        counting_on(sb, pid)
        no_image(srv, sb.id)
        sb.kill()
        assert_no_leaks(srv.data_dir, srv.bridge)
    finally:
        sb.close()


def criu_reason() -> str | None:
    return asyncio.run(criu.unavailable())
