"""A sandbox is stopped and removed by the OCI runtime class it was created with, whatever class the
server is configured with by then (oci/cli.py).

Only runc runs on this host (crun refuses its hybrid cgroup hierarchy), so the second class is a
wrapper script registered under its own name: it writes each call to a log and execs runc. The log
is what proves which class's binary was used; the containers are real."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, assert_no_leaks, teardown_bridge


@pytest.fixture
def logged_runc(workdir: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path]]:
    """A runtime class "logged": the wrapper's path, and the log of its calls (one line each)."""
    runc = shutil.which("runc")
    assert runc is not None
    directory = workdir / f"wrapper-{request.node.name[:20]}"
    directory.mkdir(parents=True)
    calls = directory / "calls.log"
    wrapper = directory / "runc-logged"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {runc} "$@"\n')
    wrapper.chmod(0o755)
    calls.touch()
    yield wrapper, calls


def calls_for(calls: Path, sandbox_id: str) -> list[str]:
    return [line for line in calls.read_text().splitlines() if sandbox_id in line.split()]


def test_a_sandbox_is_destroyed_by_the_class_it_was_created_with(
    image_cache: Path, workdir: Path, logged_runc: tuple[Path, Path]
) -> None:
    wrapper, calls = logged_runc
    classes = json.dumps({"logged": str(wrapper)})
    srv = Server(
        workdir / "oci-classes",
        "sbxdtest1",
        "10.77.1.0/24",
        SANDBOXD_OCI_RUNTIME="logged",
        SANDBOXD_OCI_RUNTIME_CLASSES=classes,
    ).start()
    try:
        with srv.create() as old:
            assert old.commands.run("echo made").stdout == "made\n"
            made = calls_for(calls, old.id)
            assert any(line.startswith("--root") and " create " in f" {line} " for line in made), made
            assert (srv.data_dir / "oci" / "logged" / old.id).is_dir()  # the class's own state root
            # The server restarts with runc as the default class; "logged" stays known (it names a binary).
            srv.stop()
            srv.env["SANDBOXD_OCI_RUNTIME"] = "runc"
            before_restart = len(calls_for(calls, old.id))
            srv.start()
            # Re-attached through its own class: its liveness was asked of the wrapper.
            assert any(" state " in f" {line} " for line in calls_for(calls, old.id)[before_restart:])
            with srv.create() as new:
                assert new.commands.run("echo new").stdout == "new\n"
                assert (srv.data_dir / "runc" / new.id).is_dir()
                assert calls_for(calls, new.id) == []  # runc's own, not the wrapper
            assert old.commands.run("echo kept").stdout == "kept\n"
            before_delete = len(calls_for(calls, old.id))
        # Leaving the block deleted old: stopped without any binary (oci/stop.py), its state
        # removed from its own class's root, where the class's `list` no longer finds it.
        assert calls_for(calls, old.id)[before_delete:] == []
        assert not (srv.data_dir / "oci" / "logged" / old.id).exists()
        listing = subprocess.run(
            [str(wrapper), "--root", str(srv.data_dir / "oci" / "logged"), "list", "-q"], capture_output=True, text=True
        )
        assert listing.returncode == 0 and old.id not in listing.stdout
        assert calls_for(calls, new.id) == []
        with srv.client() as http:
            deadline = time.monotonic() + 10
            while http.get(f"/api/v1/sandboxes/{old.id}").json()["status"]["state"] != "terminated":
                assert time.monotonic() < deadline
                time.sleep(0.05)
    except BaseException:
        # A failed run may leave a container the server no longer knows (in the wrapper's state
        # root): removed here, so that it does not fail the tests after this one.
        if srv.proc is not None and srv.proc.poll() is None:
            with contextlib.suppress(Exception):
                srv.delete_all()
        srv.stop()
        for root in (str(srv.data_dir / "oci" / "logged"), str(srv.data_dir / "runc")):
            listed = subprocess.run(["runc", "--root", root, "list", "-q"], capture_output=True, text=True).stdout
            for container in listed.split():
                subprocess.run(["runc", "--root", root, "delete", "--force", container], check=False)
        teardown_bridge(srv.bridge)
        raise
    srv.stop()
    assert_no_leaks(srv.data_dir, srv.bridge)
    teardown_bridge(srv.bridge)


def test_an_unknown_class_is_refused_at_start(image_cache: Path, workdir: Path) -> None:
    srv = Server(workdir / "oci-unknown", "sbxdtest1", "10.77.1.0/24", SANDBOXD_OCI_RUNTIME="nonesuch")
    with pytest.raises(RuntimeError, match="nonesuch"):
        srv.start()
    srv.stop()
    teardown_bridge(srv.bridge)
