"""A sandbox is stopped and removed by the OCI runtime class it was created with, whatever class the
server is configured with by then (oci/cli.py).

The classes are wrapper scripts registered under a name: each writes its calls to a log and execs
the real binary (runc, or crun for the class named crun, which on this hybrid cgroup host creates
through the mount namespace oci/cli.py gives it). The log is what proves which class's binary was
used; the containers are real."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd import Sandbox
from sandboxd.runtimes.local.oci.cli import RECORD_KEY
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


def logged(directory: Path, binary: str) -> tuple[Path, Path]:
    """A wrapper of binary that logs its calls: its path, and the log."""
    real = shutil.which(binary)
    assert real is not None
    directory.mkdir(parents=True)
    calls = directory / "calls.log"
    wrapper = directory / f"{binary}-logged"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    calls.touch()
    return wrapper, calls


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


def test_runc_and_crun_each_run_their_own_sandboxes(image_cache: Path, workdir: Path) -> None:
    """One sandbox per class on one server: each is created, started, asked for its state and stopped by
    its own binary, in its own state root; crun's is placed in the sandbox's cgroups like runc's."""
    runc, runc_calls = logged(workdir / "logged-runc", "runc")
    crun, crun_calls = logged(workdir / "logged-crun", "crun")
    classes = json.dumps({"runc": str(runc), "crun": str(crun)})
    srv = Server(
        workdir / "oci-both",
        "sbxdtest1",
        "10.77.1.0/24",
        SANDBOXD_OCI_RUNTIME="crun",
        SANDBOXD_OCI_RUNTIME_CLASSES=classes,
    ).start()
    roots = {"crun": srv.data_dir / "oci" / "crun", "runc": srv.data_dir / "runc"}
    try:
        with srv.create() as by_crun:
            assert by_crun.commands.run("echo crun").stdout == "crun\n"
            srv.stop()
            srv.env["SANDBOXD_OCI_RUNTIME"] = "runc"
            srv.start()  # re-attaches by_crun through crun
            with srv.create() as by_runc:
                assert by_runc.commands.run("echo runc").stdout == "runc\n"
                for sandbox, name, calls, other in (
                    (by_crun, "crun", crun_calls, runc_calls),
                    (by_runc, "runc", runc_calls, crun_calls),
                ):
                    assert _record_class(srv, sandbox.id) == name
                    assert (roots[name] / sandbox.id).is_dir()
                    made = calls_for(calls, sandbox.id)
                    # by_crun lived through the restart: its liveness was asked of crun then.
                    for step in ("create", "start", "state") if name == "crun" else ("create", "start"):
                        assert any(f" {step} " in f" {line} " for line in made), (name, step, made)
                    assert calls_for(other, sandbox.id) == []
                    # The sandbox's own memory cgroup limits it, whichever binary made it.
                    limit = Path(f"/sys/fs/cgroup/memory/sandboxd-{sandbox.id}/memory.limit_in_bytes")
                    assert int(limit.read_text()) == 512 * 1024 * 1024
                # The same resource limits, however each runtime applies them (oci/config.py).
                limits = [_limits(sandbox) for sandbox in (by_crun, by_runc)]
                assert limits[0] == limits[1] and limits[0]["Max msgqueue size"] == ["262144", "262144"], limits
        for sandbox, name in ((by_crun, "crun"), (by_runc, "runc")):
            listed = subprocess.run([name, "--root", str(roots[name]), "list", "-q"], capture_output=True, text=True)
            assert sandbox.id not in listed.stdout.split(), (name, listed.stdout)
    except BaseException:
        if srv.proc is not None and srv.proc.poll() is None:
            with contextlib.suppress(Exception):
                srv.delete_all()
        srv.stop()
        for name, root in roots.items():
            leftover = subprocess.run([name, "--root", str(root), "list", "-q"], capture_output=True, text=True).stdout
            for container in leftover.split():
                subprocess.run([name, "--root", str(root), "delete", "--force", container], check=False)
        teardown_bridge(srv.bridge)
        raise
    srv.stop()
    assert_no_leaks(srv.data_dir, srv.bridge)
    teardown_bridge(srv.bridge)


def _record_class(srv: Server, sandbox_id: str) -> str:
    """The class written in the sandbox's runtime record (oci/cli.py RECORD_KEY), read from the database."""
    with sqlite3.connect(srv.data_dir / "sandboxd.db") as db:
        row = db.execute("SELECT runtime FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
    assert row is not None, sandbox_id
    return str(json.loads(row[0])[RECORD_KEY])


def _limits(sandbox: Sandbox) -> dict[str, list[str]]:
    """Soft and hard limits of a process in the sandbox, by name (/proc/self/limits)."""
    found = {}
    for line in sandbox.commands.run("cat /proc/self/limits").stdout.splitlines()[1:]:
        found[line[:26].strip()] = line[26:].split()[:2]
    return found
