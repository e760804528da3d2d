"""A hibernated sandbox's saved processes (checkpoints/<id>, oci/checkpoints.py) never outlive it.
CRIU fails `criu check` on these machines, so no image is ever written here: the tests plant the
directory a checkpoint would leave and check who keeps and who removes it, on real sandboxes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, assert_no_leaks, restartable

BRIDGE, SUBNET = "sbxdckp0", "10.77.160.0/24"


@pytest.fixture
def srv(image_cache: Path, workdir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    with restartable(Server(workdir / f"ckp{abs(hash(request.node.name)) % 10**6}", BRIDGE, SUBNET)) as server:
        yield server


def plant(srv: Server, sandbox_id: str) -> Path:
    image = srv.data_dir / "checkpoints" / sandbox_id
    (image / "work").mkdir(parents=True)
    (image / "inventory.img").write_bytes(b"as a dump leaves it")
    return image


def gone(image: Path) -> None:
    deadline = time.monotonic() + 10
    while image.exists():
        assert time.monotonic() < deadline, f"{image} was left behind"
        time.sleep(0.1)


def test_an_image_is_kept_while_hibernated_and_through_a_restart_and_goes_with_the_delete(srv: Server) -> None:
    sb = srv.create(timeout=600)
    image = plant(srv, sb.id)
    sb.hibernate()
    assert image.is_dir()  # a stop of the hibernated sandbox (here: disk only) leaves it
    srv.kill9()
    srv.start()  # the reconcile stops what a hibernated record should not run: the image stays
    assert (image / "inventory.img").read_bytes() == b"as a dump leaves it"
    sb.kill()  # the delete
    gone(image)
    assert_no_leaks(srv.data_dir, srv.bridge)


def test_an_image_of_a_sandbox_the_store_does_not_know_goes_at_startup(srv: Server) -> None:
    srv.stop()
    image = plant(srv, "sbx_01jzzzzzzzzzzzzzzzzzzzzzzz")
    srv.start()
    gone(image)
    assert_no_leaks(srv.data_dir, srv.bridge)
