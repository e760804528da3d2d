"""Starting the server as users do: a data directory from `mktemp -d`, one under a parent closed to
other users, a subnet some other interface already holds, and a second server on one data directory.
A refusal is one plain line on stderr that names the path or the network and the fix: no export
line, no traceback."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd import preflight
from tests.conftest import IMAGE_CACHE, Server, assert_no_leaks, teardown_bridge

NOBODY = 65534


def serve_once(data_dir: Path, bridge: str, subnet: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`sandboxd serve` that is expected to refuse: it must end by itself."""
    server = Server(data_dir, bridge, subnet, **env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandboxd.cli.main", "serve"],
        env=server.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:  # it started after all: stopped so that it cleans up after itself
        proc.terminate()
        out, err = proc.communicate(timeout=30)
        teardown_bridge(bridge)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_one_plain_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode != 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert "export" not in result.stderr and "Traceback" not in result.stderr and not line.startswith("{"), line
    for word in words:
        assert word in line, line
    return line


def copy_debian(images: Path) -> None:
    """The test cache's debian image in a data directory's own images dir, as a user's server has it
    (hard links: nothing is written to layers)."""
    meta = json.loads((IMAGE_CACHE / "debian" / "image.json").read_text())
    (images / ".layers").mkdir(parents=True)
    for layer in meta["layers"]:
        subprocess.run(["cp", "-al", str(IMAGE_CACHE / ".layers" / layer), str(images / ".layers")], check=True)
    shutil.copytree(IMAGE_CACHE / "debian", images / "debian")


# Run as another host user: what of a data directory can it reach?
PROBE = """
import json, os, sys
data = sys.argv[1]
out = {}
for what, call in [
    ("list data dir", lambda: os.listdir(data)),
    ("read api_key", lambda: open(os.path.join(data, "api_key")).read()),
    ("read database", lambda: open(os.path.join(data, "sandboxd.db"), "rb").read(1)),
    ("list logs", lambda: os.listdir(os.path.join(data, "logs"))),
    ("read log", lambda: open(os.path.join(data, "logs", sys.argv[2] + ".log"), "rb").read(1)),
    ("list images", lambda: os.listdir(os.path.join(data, "images"))),
    ("list runc state", lambda: os.listdir(os.path.join(data, "runc"))),
    ("list oci state", lambda: os.listdir(os.path.join(data, "oci"))),
    ("list builds", lambda: os.listdir(os.path.join(data, "builds"))),
    ("list sandboxes", lambda: os.listdir(os.path.join(data, "sandboxes"))),
]:
    try:
        call()
        out[what] = "allowed"
    except PermissionError:
        out[what] = "denied"
    except OSError as exc:
        out[what] = repr(exc)
print(json.dumps(out))
"""


@pytest.fixture
def private_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sbxd-op-"))  # what `mktemp -d` makes: mode 0700
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_data_directory_from_mktemp_runs_sandboxes_and_stays_private(image_cache: Path, private_dir: Path) -> None:
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700
    copy_debian(private_dir / "images")
    server = Server(private_dir, "sbxdop0", "10.77.70.0/24", SANDBOXD_IMAGES_DIR=str(private_dir / "images"))
    del server.env["SANDBOXD_API_KEY"]  # the key file sandboxd makes itself
    try:
        server.start()
        server.key = (private_dir / "api_key").read_text().strip()
        with server.create() as sb:
            result = sb.commands.run("echo hello from $(id -u)")
            assert result.stdout == "hello from 0\n"
            # The system's python: the test's own may sit under /root, which nobody cannot pass.
            probe = subprocess.run(
                ["/usr/bin/python3", "-c", PROBE, str(private_dir), sb.id],
                capture_output=True,
                text=True,
                check=True,
                user=NOBODY,
                group=NOBODY,
                extra_groups=[],
            )
        assert json.loads(probe.stdout) == {
            "list data dir": "denied",
            "read api_key": "denied",
            "read database": "denied",
            "list logs": "denied",
            "read log": "denied",
            "list images": "denied",
            "list runc state": "denied",
            "list oci state": "denied",
            "list builds": "denied",
            "list sandboxes": "denied",
        }
        assert stat.S_IMODE(private_dir.stat().st_mode) == 0o711  # traverse only
        for name in ("api_key", "sandboxd.db"):
            assert stat.S_IMODE((private_dir / name).stat().st_mode) == 0o600, name
        # A second start finds its own bridge from the first: not a conflict.
        server.stop()
        server.start()
        with server.create() as sb:
            assert sb.commands.run("echo again").stdout == "again\n"
        server.delete_all()
    finally:
        server.stop()
        try:
            assert_no_leaks(server.data_dir, server.bridge)
        finally:
            teardown_bridge(server.bridge)


def test_a_data_directory_under_a_closed_parent_is_refused_in_one_line(private_dir: Path) -> None:
    data = private_dir / "data"  # the parent is not sandboxd's to open, as /root is not
    result = serve_once(data, "sbxdop1", "10.77.71.0/24")
    line = assert_one_plain_line(result, str(private_dir), f"chmod o+x {private_dir}", "SANDBOXD_DATA_DIR")
    assert not data.exists(), line
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700  # left as its owner made it


@pytest.fixture
def other_bridge() -> Iterator[str]:
    """Another service's bridge (podman's, say) holding a network of its own."""
    name = "sbxdoppodman"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.77.72.1/24", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def test_a_subnet_another_interface_holds_is_refused_in_one_line(other_bridge: str, private_dir: Path) -> None:
    private_dir.chmod(0o755)
    result = serve_once(private_dir / "data", "sbxdop2", "10.77.72.0/24")
    assert_one_plain_line(result, "10.77.72.0/24", other_bridge, "SANDBOXD_SUBNET")
    links = subprocess.run(["ip", "-j", "link", "show", "sbxdop2"], capture_output=True, text=True, check=False)
    assert links.returncode != 0  # no bridge was made
    # A subnet that only contains the interface's network is refused as well.
    result = serve_once(private_dir / "data", "sbxdop2", "10.77.0.0/16")
    assert_one_plain_line(result, "10.77.0.0/16", other_bridge)


def test_a_second_server_on_one_data_directory_fails_in_one_line(image_cache: Path, workdir: Path) -> None:
    first = Server(workdir / "operability-lock", "sbxdop3", "10.77.73.0/24")
    try:
        first.start()
        result = serve_once(first.data_dir, "sbxdop4", "10.77.74.0/24")
        assert_one_plain_line(result, "another sandboxd server is using", str(first.data_dir))
        with first.client() as http:  # the first one is untouched
            assert http.get("/api/v1/sandboxes").status_code == 200
    finally:
        first.stop()
        try:
            assert_no_leaks(first.data_dir, first.bridge)
        finally:
            teardown_bridge(first.bridge)
            teardown_bridge("sbxdop4")


# -- the checks themselves, without a server ------------------------------------------------------------


def test_closed_ancestors_are_named_and_open_ones_pass(private_dir: Path) -> None:
    inner = private_dir / "a" / "b"
    assert preflight.closed_ancestor(inner) == private_dir
    private_dir.chmod(0o711)
    assert preflight.closed_ancestor(inner) is None
    (private_dir / "a").mkdir(mode=0o700)
    (private_dir / "a").chmod(0o700)
    assert preflight.closed_ancestor(inner) == private_dir / "a"


def test_overlapping_routes_and_addresses_conflict_but_the_own_bridge_does_not() -> None:
    subnet = ipaddress.IPv4Network("10.193.0.0/16")
    routes = [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "192.0.2.0/24", "dev": "eth0"},
        {"dst": "10.193.0.0/16", "dev": "sbxd0"},  # the bridge a previous run left
        {"type": "local", "dst": "10.193.0.1", "dev": "sbxd0", "table": "local"},
        {"dst": "10.0.0.0/8", "gateway": "192.0.2.9", "dev": "tun0"},
        {"type": "blackhole", "dst": "10.193.5.0/24"},
    ]
    addresses = [
        {"ifname": "sbxd0", "addr_info": [{"family": "inet", "local": "10.193.0.1", "prefixlen": 16}]},
        {"ifname": "podman0", "addr_info": [{"family": "inet", "local": "10.193.7.1", "prefixlen": 24}]},
    ]
    found = preflight.subnet_conflicts(subnet, "sbxd0", routes, addresses)
    assert found == [
        (ipaddress.IPv4Network("10.0.0.0/8"), "tun0"),
        (ipaddress.IPv4Network("10.193.7.0/24"), "podman0"),
    ]
    assert preflight.subnet_conflicts(ipaddress.IPv4Network("10.194.0.0/16"), "sbxd0", routes, addresses) == [
        (ipaddress.IPv4Network("10.0.0.0/8"), "tun0")
    ]
    assert preflight.subnet_conflicts(ipaddress.IPv4Network("172.30.0.0/16"), "sbxd0", routes, addresses) == []


def test_the_default_subnet_is_none_of_the_usual_ones() -> None:
    from sandboxd.config import Settings

    default = ipaddress.IPv4Network(Settings.model_fields["subnet"].default)
    for taken in ("10.88.0.0/16", "172.17.0.0/16", "192.168.0.0/16", "10.0.0.0/16", "10.244.0.0/16", "10.96.0.0/12"):
        assert not default.overlaps(ipaddress.IPv4Network(taken)), taken


def test_a_bad_subnet_is_named() -> None:
    with pytest.raises(preflight.Refused, match="10.1.2.3/16"):
        preflight.parse_subnet("10.1.2.3/16")
    with pytest.raises(preflight.Refused, match="IPv4"):
        preflight.parse_subnet("fd00::/64")


def test_modes_sandboxd_sets_are_umask_proof(private_dir: Path) -> None:
    old = os.umask(0o077)
    try:
        target = private_dir / "x" / "y"
        private_dir.chmod(0o755)
        preflight.make_path(target)
    finally:
        os.umask(old)
    assert stat.S_IMODE((private_dir / "x").stat().st_mode) == 0o711
    assert stat.S_IMODE(target.stat().st_mode) == 0o711


def test_the_own_bridge_made_for_another_subnet_is_named(private_dir: Path) -> None:
    """An upgrade from the old default (10.88.0.0/16) finds the bridge still holding that network."""
    bridge = "sbxdop5"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.77.75.1/24", "dev", bridge], check=True)
        private_dir.chmod(0o755)
        result = serve_once(private_dir / "data", bridge, "10.77.76.0/24")
        assert_one_plain_line(result, bridge, "10.77.75.1/24", "10.77.76.0/24", f"ip link del {bridge}")
    finally:
        subprocess.run(["ip", "link", "del", bridge], check=False)
