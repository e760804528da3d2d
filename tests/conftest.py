"""Real servers, real sandboxes. The suite needs root, as CI has.

One server runs for the session; tests that kill or restart a server start their own, with their own
data directory, bridge and subnet, so that its reconcile never touches the session server's
sandboxes. The debian image is built once into a cache directory shared by all of them. At the end
the suite checks that nothing of sandboxd is left on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandboxd import Sandbox
from sandboxd.runtimes.local.images.catalog import ImageStore
from sandboxd.runtimes.local.network.bridge import Network
from sandboxd.store.base import Store
from sandboxd.store.sql import open_store
from tests.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
IMAGE_CACHE = Path(os.environ.get("SANDBOXD_TEST_IMAGES", "/var/tmp/sandboxd-test-images"))
USERNS_BASE = 1_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A `sandboxd serve` process of its own."""

    def __init__(self, data_dir: Path, bridge: str, subnet: str, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = "test-key-" + os.urandom(8).hex()
        self.bridge = bridge
        self.env = {
            **os.environ,
            "SANDBOXD_DATA_DIR": str(data_dir),
            "SANDBOXD_IMAGES_DIR": str(IMAGE_CACHE),
            "SANDBOXD_PORT": str(self.port),
            "SANDBOXD_API_KEY": self.key,
            "SANDBOXD_BRIDGE": bridge,
            "SANDBOXD_SUBNET": subnet,
            "SANDBOXD_REAPER_INTERVAL": "0.2",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "server.log"

    def start(self) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sandboxd.cli.main", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not become ready: {self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)

    def delete_all(self) -> None:
        with self.client() as http:
            # Pools first: their ready sandboxes are in no list, and a pool refills what is deleted.
            for item in http.get("/api/v1/pools").json()["items"]:
                http.delete(f"/api/v1/pools/{item['id']}")
            for item in http.get("/api/v1/sandboxes", params={"limit": 1000}).json()["items"]:
                if item["status"]["state"] not in ("terminated", "failed"):
                    http.delete(f"/api/v1/sandboxes/{item['id']}")
            for item in http.get("/api/v1/snapshots").json()["items"]:  # snapshots outlive sandboxes
                http.delete(f"/api/v1/snapshots/{item['id']}")

    def build_sandboxes(self, template: str | None = None) -> list[tuple[str, str]]:
        """(id, state) of template build-step sandboxes, read from the server's database: they live
        in the shared project, which no key can name (the building project must not reach them)."""
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.data_dir / "sandboxd.db")) as db:
            rows = db.execute(
                "SELECT id, state, json_extract(labels, '$.\"sandboxd.template-build\"') FROM sandboxes"
                " WHERE json_extract(labels, '$.\"sandboxd.template-build\"') IS NOT NULL ORDER BY id"
            ).fetchall()
        return [(str(i), str(state)) for i, state, ref in rows if template is None or ref == template]

    def create(self, **kwargs: Any) -> Sandbox:
        return Sandbox.create(url=self.url, api_key=self.key, **kwargs)


def image_cache_path() -> Path:
    """The debian image, built once per machine into a cache shared by tests and the benchmark."""
    store = ImageStore(IMAGE_CACHE, USERNS_BASE)
    if not store.exists("debian"):
        store.build_debian()
    return IMAGE_CACHE


@pytest.fixture(scope="session")
def image_cache() -> Path:
    if os.geteuid() != 0:
        pytest.fail("the suite runs real sandboxes and needs root")
    return image_cache_path()


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sandboxd-test-", dir="/var/tmp"))
    path.chmod(0o755)  # sandbox root (a mapped uid) must traverse it to reach its rootfs
    yield path
    shutil.rmtree(path, ignore_errors=True)


# The tests' registries and source servers listen on loopback, where server-side fetches go only
# if the operator lets them (runtimes/outbound.py): the session server is configured so.
LOOPBACK_FETCHES = {
    "SANDBOXD_FETCH_ALLOW_CIDRS": '["127.0.0.0/8"]',
    "SANDBOXD_REGISTRY_ALLOW_HOSTS": '["127.0.0.1"]',
}


@pytest.fixture(scope="session")
def server(image_cache: Path, workdir: Path) -> Iterator[Server]:
    srv = Server(workdir / "main", "sbxdtest0", "10.77.0.0/24", **LOOPBACK_FETCHES).start()
    yield srv
    srv.delete_all()
    srv.stop()
    assert_no_leaks(srv.data_dir, srv.bridge)
    teardown_bridge(srv.bridge)
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert "sandboxd_" not in tables, tables


class InternetHost:
    """A host on "the internet": its own network namespace, reached from sandboxes only through the
    host's NAT, running a TCP server that greets whoever connects. Its link to this machine is an
    attached network, which sandboxes may not reach; its ADDRESS is beyond it, behind a route
    through the namespace (as the internet is behind a gateway)."""

    NETNS, LINK, ADDRESS, PEER, GATEWAY = "sbxd-testnet", "sbxdth0", "10.77.201.2", "10.77.200.1", "10.77.200.2"
    SERVER = (
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', 8000)); s.listen(16)\n"
        "while True:\n"
        "    c, addr = s.accept(); c.sendall(b'hello from the test host ' + addr[0].encode() + b'\\n'); c.close()\n"
    )

    def __init__(self) -> None:
        self.port = 8000
        for cmd in (
            f"netns add {self.NETNS}",
            f"link add {self.LINK} type veth peer name eth0 netns {self.NETNS}",
            f"addr add {self.PEER}/30 dev {self.LINK}",
            f"link set {self.LINK} up",
            f"-n {self.NETNS} addr add {self.GATEWAY}/30 dev eth0",
            f"-n {self.NETNS} addr add {self.ADDRESS}/32 dev lo",
            f"-n {self.NETNS} link set eth0 up",
            f"-n {self.NETNS} link set lo up",
            f"route add {self.ADDRESS}/32 via {self.GATEWAY}",
        ):
            subprocess.run(["ip", *cmd.split()], check=True)
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.NETNS, sys.executable, "-c", self.SERVER])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        subprocess.run(["ip", "link", "del", self.LINK], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.NETNS], capture_output=True, check=False)


@pytest.fixture(scope="session")
def test_host() -> Iterator[InternetHost]:
    host = InternetHost()
    yield host
    host.close()


@pytest.fixture
def sandbox(server: Server) -> Iterator[Sandbox]:
    with server.create(memory_mb=256, timeout=300) as sb:
        yield sb


@contextlib.contextmanager
def restartable(srv: Server) -> Iterator[Server]:
    """A started server for a test that may kill it: started again if the test left it down, then
    emptied, stopped and checked for leaks."""
    try:
        yield srv.start()
    except BaseException:
        # A failed test still must not leave its server, sandboxes, table or bridge behind to fail
        # the tests after it; its own failure is what gets reported.
        with contextlib.suppress(Exception):
            if srv.proc is None or srv.proc.poll() is not None:
                srv.start()
            srv.delete_all()
        with contextlib.suppress(Exception):
            srv.stop()
        with contextlib.suppress(Exception):
            teardown_bridge(srv.bridge)
        raise
    if srv.proc is None or srv.proc.poll() is not None:
        srv.start()
    srv.delete_all()
    srv.stop()
    assert_no_leaks(srv.data_dir, srv.bridge)
    teardown_bridge(srv.bridge)


def kill_during(srv: Server, path: str, delay: float) -> None:
    """POSTs to path, kills the server with SIGKILL `delay` seconds later, and starts it again."""

    def call() -> None:
        try:
            with srv.client() as http:
                http.post(path)
        except httpx.HTTPError:
            pass  # the server died under it

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(delay)
    srv.kill9()
    thread.join()
    time.sleep(0.3)
    srv.start()


def teardown_bridge(bridge: str) -> None:
    asyncio.run(Network(bridge, "10.0.0.0/30").teardown_host())  # the subnet plays no part here


def oci_cli(data_dir: Path, sandbox_id: str) -> list[str]:
    """The runtime command line (binary and --root) of the class that holds a sandbox's container:
    crun's state root if it is there, else runc's."""
    crun_root = data_dir / "oci" / "crun"
    if (crun_root / sandbox_id).exists():
        return ["crun", "--root", str(crun_root)]
    return ["runc", "--root", str(data_dir / "runc")]


def server_running(data_dir: Path) -> bool:
    """A server holds its data directory's lock while it runs."""
    try:
        fd = os.open(data_dir / "server.lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def leaks(data_dir: Path, bridge: str) -> list[str]:
    found = []
    mounts = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines() if str(data_dir) in ln]
    # A running server keeps its scratch volume (a loop-mounted image) and its mount of the agent
    # binary (agent_mount.py); a stopped one does not.
    running = server_running(data_dir)
    if running:
        mounts = [m for m in mounts if m not in (str(data_dir / "scratch"), str(data_dir / "agent"))]
    if mounts:
        found.append(f"mounts: {mounts}")
    # runc's state root, and one per other runtime class (oci/cli.py), each read by its own binary
    # (crun's state is not runc's; the tests' other classes are wrappers of runc).
    for state in [data_dir / "runc", *(data_dir / "oci").glob("*")]:
        if state.exists():
            binary = "crun" if state.name == "crun" else "runc"
            listed = subprocess.run([binary, "--root", str(state), "list", "-q"], capture_output=True, text=True)
            if listed.stdout.strip():
                found.append(f"containers in {state.name}: {listed.stdout.split()}")
    sandboxes = data_dir / "sandboxes"
    ids = [p.name for p in sandboxes.iterdir()] if sandboxes.exists() else []
    if ids:
        found.append(f"sandbox dirs: {ids}")
    # Sandboxes' writable layers: subvolumes in the scratch volume, a loop-mounted image file.
    scratch = data_dir / "scratch"
    subvolumes = [p.name for p in scratch.iterdir()] if scratch.exists() else []
    if subvolumes:
        found.append(f"scratch subvolumes: {subvolumes}")  # sandboxes', volumes' and snapshots' (snp_)
    markers = [p.name for p in (data_dir / "snapshots").iterdir()] if (data_dir / "snapshots").exists() else []
    if markers:
        found.append(f"snapshot image markers: {markers}")
    # Hibernated sandboxes' saved processes (oci/checkpoints.py): none once their sandbox is gone.
    saved = [p.name for p in (data_dir / "checkpoints").iterdir()] if (data_dir / "checkpoints").exists() else []
    if saved:
        found.append(f"checkpoint images: {saved}")
    loops = subprocess.run(
        ["losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE"], capture_output=True, text=True
    )
    if str(data_dir) in loops.stdout and not running:
        found.append(f"loop devices: {[ln for ln in loops.stdout.splitlines() if str(data_dir) in ln]}")
    cgroups = [str(p) for p in Path("/sys/fs/cgroup").glob("*/sandboxd-*")]
    cgroups += [str(p) for p in Path("/sys/fs/cgroup").glob("sandboxd-*")]
    if cgroups:
        found.append(f"cgroups: {cgroups}")
    veths = subprocess.run(["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True).stdout
    if veths.strip():
        found.append(f"veths: {veths.strip()}")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    if [n for n in netns.split("\n") if n and not n.startswith(InternetHost.NETNS)]:
        found.append(f"network namespaces: {netns.strip()}")
    agents = subprocess.run(["pgrep", "-f", "^/.sandboxd/agent "], capture_output=True, text=True).stdout
    if agents.strip():
        found.append(f"agent processes: {agents.split()}")
    return found


def assert_no_leaks(data_dir: Path, bridge: str) -> None:
    deadline = time.monotonic() + 5
    while (found := leaks(data_dir, bridge)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not found, f"left behind: {found}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- databases: SQLite in a temp file, PostgreSQL started by the tests (tests/postgres.py) ----------

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresServer) -> str:
    return postgres.url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each backend for each test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sandboxd.db"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"contract_{next(_databases)}")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await open_store(database_url)
    await opened.ensure_default_tenant()
    yield opened
    await opened.close()
