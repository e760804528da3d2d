"""The images API (list, inspect, pull with progress, import, rm, gc) through the SDK and the CLI,
and the client distribution on its own: what it requires, what it imports, that it installs alone."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from sandboxd import Client, SandboxError
from tests.conftest import ROOT, Server
from tests.test_registry import TAR, Registry, tar_bytes

SERVER_MODULES = ("fastapi", "uvicorn", "sqlalchemy", "pydantic_settings", "cryptography", "sandboxd")


# -- the client distribution ---------------------------------------------------------------------


def test_client_distribution_requires_only_the_four_client_libraries() -> None:
    required = {
        req.split(">")[0].split("=")[0].split("[")[0].strip() for req in metadata.requires("sandboxd-sdk") or []
    }
    assert required == {"httpx", "websockets", "click", "rich"}
    server = metadata.requires("sandboxd") or []
    assert any(req.startswith("sandboxd-sdk") for req in server)
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts") if ep.name == "sandboxd"}
    assert scripts == {"sandboxd": "sandboxd_sdk.cli.main:main"}  # declared once, by the client


def test_the_sdk_and_cli_import_nothing_of_the_server() -> None:
    probe = (
        "import sys, json\n"
        "import sandboxd_sdk, sandboxd_sdk.cli.main\n"
        "from sandboxd_sdk import Client, Sandbox, AsyncSandbox\n"
        "try:\n"
        "    sandboxd_sdk.cli.main.main(['--help'], standalone_mode=False)\n"
        "    sandboxd_sdk.cli.main.main(['image', '--help'], standalone_mode=False)\n"
        "finally:\n"
        "    sys.stdout.flush()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert "Commands:" in done.stdout and "pull" in done.stdout  # the help was really rendered
    loaded = json.loads(done.stdout.splitlines()[-1])
    server = [m for m in loaded if m.split(".")[0] in SERVER_MODULES]
    assert server == [], server


def test_the_client_installs_alone_and_says_what_serve_needs(tmp_path: Path) -> None:
    """pip install --no-deps ./sdk into a fresh venv. Its four libraries come from this venv's
    site-packages as a plain path: its .pth files are not read, so the server's editable install
    does not come along, and `serve` finds no server."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # Building needs setuptools (from the configured index or wheel cache); nothing else is fetched.
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "./sdk"]
    subprocess.run(install, cwd=ROOT, check=True, capture_output=True, timeout=180)
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "client-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    helped = subprocess.run([str(venv / "bin" / "sandboxd"), "--help"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0 and "serve" in helped.stdout, helped.stderr
    served = subprocess.run([str(venv / "bin" / "sandboxd"), "serve"], capture_output=True, text=True, env=env)
    assert served.returncode == 1 and "pip install sandboxd" in served.stderr, served.stderr
    assert len(served.stderr.strip().splitlines()) == 1, served.stderr


# -- the API on a real server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.close()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(url=server.url, api_key=server.key) as c:
        yield c


def rootfs_tar(*entries: tuple[str, bytes]) -> bytes:
    return tar_bytes(*entries)


def test_pull_with_progress_list_inspect_remove_and_gc(client: Client, registry: Registry) -> None:
    tag = "v" + os.urandom(3).hex()
    registry.push_image("api/small", tag, [(tar_bytes(("hello.txt", b"pulled through the API")), TAR)])
    ref = f"{registry.host}/api/small:{tag}"  # a name with "/" and ":" in the path
    seen: list[tuple[int, int]] = []
    image = client.images.pull(ref, on_progress=lambda done, total: seen.append((done, total)))
    assert image["name"] == ref and image["source"] == "registry" and image["digest"].startswith("sha256:")
    assert seen and seen[-1][0] == seen[-1][1] > 0, seen
    assert ref in [i["name"] for i in client.images.list()]
    inspected = client.images.inspect(ref)
    assert inspected["layers"] == image["layers"] and len(inspected["blobs"]) == 2

    client.images.remove(ref)
    with pytest.raises(SandboxError) as gone:
        client.images.inspect(ref)
    assert gone.value.code == "IMAGE_NOT_FOUND"
    removed = client.images.gc()
    assert f"layer:{image['layers'][0]}" in removed and image["blobs"][0] in removed


def test_pull_errors_are_field_level(client: Client, registry: Registry, server: Server) -> None:
    with pytest.raises(SandboxError) as bad:
        client.images.pull("Not A Reference")
    assert (bad.value.status, bad.value.code, bad.value.field) == (400, "INVALID_REQUEST", "reference")
    with pytest.raises(SandboxError) as missing:  # found out after the stream began: its last line
        client.images.pull(f"{registry.host}/api/nothing:here")
    assert (missing.value.status, missing.value.code, missing.value.field) == (400, "INVALID_REQUEST", "image")
    assert "not found" in missing.value.message
    with server.client() as http:  # the stream itself, as another client would read it
        lines = http.post("/api/v1/images/pull", json={"reference": f"{registry.host}/api/nothing:here"})
    assert lines.headers["content-type"].startswith("application/x-ndjson")
    assert json.loads(lines.text.splitlines()[-1])["type"] == "error"


def test_import_a_tarball_run_it_and_rm_is_refused_while_in_use(client: Client, server: Server) -> None:
    name = "api-import-" + os.urandom(3).hex()
    image = client.images.import_(name, rootfs_tar(("etc/motd", b"imported through the API")))
    assert image["name"] == name and image["source"] == "tarball" and len(image["layers"]) == 1
    try:
        with server.create(image=name) as sb:
            assert sb.files.read("/etc/motd") == b"imported through the API"
            with pytest.raises(SandboxError) as busy:
                client.images.remove(name)
            assert busy.value.status == 409 and "in use" in busy.value.message
        client.images.remove(name)
    finally:
        if name in [i["name"] for i in client.images.list()]:
            client.images.remove(name)
    assert name not in [i["name"] for i in client.images.list()]


def test_a_hostile_import_is_refused_and_leaves_nothing(client: Client, server: Server, tmp_path: Path) -> None:
    name = "api-evil-" + os.urandom(3).hex()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../escaped-through-api.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"gotcha"))
    with pytest.raises(SandboxError) as refused:
        client.images.import_(name, buf.getvalue())
    assert refused.value.status == 400 and refused.value.field == "image"
    assert name not in [i["name"] for i in client.images.list()]
    assert not (server.data_dir.parent / "escaped-through-api.txt").exists()
    assert not list(server.data_dir.glob(".import-*"))  # the spooled upload is gone


def cli_elsewhere(server: Server, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with a data and images directory of its own (empty): as on another host, or for a
    server started with another SANDBOXD_DATA_DIR."""
    env = {
        **os.environ,
        "SANDBOXD_URL": server.url,
        "SANDBOXD_API_KEY": server.key,
        "SANDBOXD_DATA_DIR": str(home / "data"),
        "SANDBOXD_IMAGES_DIR": str(home / "images"),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "sandboxd_sdk.cli.main", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_cli_sees_the_servers_images_not_its_own_directory(
    client: Client, server: Server, registry: Registry, tmp_path: Path
) -> None:
    listed = json.loads(cli_elsewhere(server, tmp_path, "image", "ls", "--json").stdout)
    assert "debian" in [i["name"] for i in listed]
    assert "debian" in cli_elsewhere(server, tmp_path, "image", "ls").stdout
    assert json.loads(cli_elsewhere(server, tmp_path, "image", "inspect", "debian").stdout)["name"] == "debian"

    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(rootfs_tar(("etc/motd", b"from the cli")))
    name = "cli-import-" + os.urandom(3).hex()
    imported = cli_elsewhere(server, tmp_path, "image", "import", name, str(tarball))
    assert imported.returncode == 0, imported.stderr
    assert client.images.inspect(name)["source"] == "tarball"  # on the server, not in tmp_path
    assert not (tmp_path / "images").exists() or not any((tmp_path / "images").iterdir())

    tag = "v" + os.urandom(3).hex()
    registry.push_image("cli/app", tag, [(tar_bytes(("a.txt", b"a")), TAR)])
    ref = f"{registry.host}/cli/app:{tag}"
    pulled = cli_elsewhere(server, tmp_path, "image", "pull", ref)
    assert pulled.returncode == 0 and pulled.stdout.strip() == ref, pulled.stderr
    assert client.images.inspect(ref)["reference"] == ref

    with server.create(image=name):
        refused = cli_elsewhere(server, tmp_path, "image", "rm", name)
        assert refused.returncode == 1 and "CONFLICT" in refused.stderr and "in use" in refused.stderr
    for gone in (name, ref):
        assert cli_elsewhere(server, tmp_path, "image", "rm", gone).returncode == 0
        assert gone not in [i["name"] for i in client.images.list()]
    collected = cli_elsewhere(server, tmp_path, "image", "gc")
    assert collected.returncode == 0 and any(line.startswith("layer:") for line in collected.stdout.split())


def test_an_uploaded_oci_layout_cannot_name_a_host_file(client: Client, tmp_path: Path) -> None:
    """A layout used to be a local directory of the operator's; uploaded, its digests are the
    caller's: one that climbs out of blobs/ would make a host file (another image's blob, a key)
    into a layer."""
    name = "api-layout-" + os.urandom(3).hex()
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    manifest = json.dumps({"schemaVersion": 2, "layers": [{"digest": "sha256:../../../../../../etc/passwd"}]})
    digest = hashlib.sha256(manifest.encode()).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_text(manifest)
    (layout / "index.json").write_text(json.dumps({"manifests": [{"digest": f"sha256:{digest}"}]}))
    with pytest.raises(SandboxError) as refused:
        client.images.import_(name, layout)
    assert (refused.value.status, refused.value.field) == (400, "body") and "invalid digest" in refused.value.message
    (layout / "index.json").write_text("[]")  # the wrong shape: a 400, not a 500
    with pytest.raises(SandboxError) as shapeless:
        client.images.import_(name, layout)
    assert (shapeless.value.status, shapeless.value.field) == (400, "body"), shapeless.value
    assert name not in [i["name"] for i in client.images.list()]
