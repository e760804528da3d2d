"""Images imported from a rootfs tarball and from a local OCI image layout, then run."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.runtimes.local.images.catalog import ImageStore
from tests.conftest import USERNS_BASE, Server


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "SANDBOXD_URL": server.url}
    return subprocess.run(
        [sys.executable, "-m", "sandboxd.cli.main", *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def base_layer(image_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The debian image as a plain rootfs tarball, owners as they would be outside sandboxd."""

    def unshift(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid -= USERNS_BASE
        info.gid -= USERNS_BASE
        info.uname = info.gname = ""
        return info

    path = tmp_path_factory.mktemp("layers") / "base.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(ImageStore(image_cache, USERNS_BASE).get("debian").layers[0], arcname=".", filter=unshift)
    return path


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def write_blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


@pytest.fixture
def oci_layout(base_layer: Path, tmp_path: Path) -> Path:
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    top = io.BytesIO()
    with tarfile.open(fileobj=top, mode="w") as tar:
        add_bytes(tar, "etc/.wh.motd")  # whiteout: the base layer's /etc/motd is gone
        add_bytes(tar, "usr/share/doc/.wh..wh..opq")  # opaque: nothing of the base's doc dir is left
        add_bytes(tar, "usr/share/doc/only.txt", b"only")
        add_bytes(tar, "hello.txt", b"from the top layer")
    layers = [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", **write_blob(layout, base_layer.read_bytes())},
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", **write_blob(layout, top.getvalue())},
    ]
    config = write_blob(layout, json.dumps({"architecture": "amd64", "os": "linux"}).encode())
    manifest = {"schemaVersion": 2, "config": config, "layers": layers}
    entry = write_blob(layout, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **entry,
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return layout


@pytest.fixture
def image_name(server: Server) -> Iterator[str]:
    name = "test-import-" + os.urandom(4).hex()
    yield name
    cli(server, "image", "rm", name)


def test_import_oci_layout_with_whiteouts_and_run_it(server: Server, oci_layout: Path, image_name: str) -> None:
    done = cli(server, "image", "import", image_name, str(oci_layout), "--ref", "v1")
    assert done.returncode == 0, done.stderr
    assert image_name in cli(server, "image", "ls").stdout.split()
    with server.create(image=image_name) as sb:
        assert sb.files.read("/hello.txt") == b"from the top layer"
        assert not sb.files.exists("/etc/motd")
        assert [e["name"] for e in sb.files.list("/usr/share/doc")] == ["only.txt"]
        assert sb.commands.run("python3 -c 'print(6*7)'").stdout == "42\n"
        # Owners were moved into the sandbox's range: root inside owns /usr, and su kept setuid.
        assert sb.commands.run("stat -c %u /usr").stdout == "0\n"
        assert sb.commands.run("stat -c %A /usr/bin/su").stdout.startswith("-rws")


def test_import_rootfs_tarball(server: Server, base_layer: Path, image_name: str) -> None:
    done = cli(server, "image", "import", image_name, str(base_layer))
    assert done.returncode == 0, done.stderr
    with server.create(image=image_name) as sb:
        assert sb.commands.run("cat /etc/debian_version").exit_code == 0


def test_hostile_tarball_is_refused_and_writes_nothing_outside(server: Server, tmp_path: Path, image_name: str) -> None:
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        add_bytes(tar, "ok.txt", b"fine")
        add_bytes(tar, "../../escaped.txt", b"gotcha")
    done = cli(server, "image", "import", image_name, str(evil))
    assert done.returncode != 0
    assert image_name not in cli(server, "image", "ls").stdout.split()
    assert not (server.data_dir.parent / "escaped.txt").exists()
    assert not list(Path(server.env["SANDBOXD_IMAGES_DIR"]).glob(".partial-*"))


def test_image_without_python_needs_none(server: Server, tmp_path: Path, image_name: str) -> None:
    """The agent is a static binary of sandboxd's own: an image needs no interpreter, no libc."""
    bare = tmp_path / "bare.tar"
    with tarfile.open(bare, "w") as tar:
        add_bytes(tar, "etc/motd", b"bare")
    assert cli(server, "image", "import", image_name, str(bare)).returncode == 0
    with server.create(image=image_name) as sb:
        assert sb.files.read("/etc/motd") == b"bare"


@pytest.mark.parametrize(
    "name", ["../../../../../../../var/tmp/.wh.sandboxd-wh-marker", "/var/tmp/.wh.sandboxd-wh-marker"]
)
def test_hostile_whiteouts_touch_nothing_outside(server: Server, tmp_path: Path, image_name: str, name: str) -> None:
    marker = Path("/var/tmp/sandboxd-wh-marker")
    marker.write_text("host file")
    try:
        layout = tmp_path / "layout"
        (layout / "blobs" / "sha256").mkdir(parents=True)
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w") as tar:
            add_bytes(tar, name)
        layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **write_blob(layout, layer.getvalue())}]
        config = write_blob(layout, b"{}")
        entry = write_blob(layout, json.dumps({"schemaVersion": 2, "config": config, "layers": layers}).encode())
        (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
        done = cli(server, "image", "import", image_name, str(layout))
        assert done.returncode != 0 and "outside the destination" in done.stderr, done.stderr
        assert marker.read_text() == "host file"
    finally:
        marker.unlink()


def test_a_create_that_fails_is_an_error_with_the_record_kept(server: Server, tmp_path: Path, image_name: str) -> None:
    # An image whose /etc is a symlink passes the checks before create and is refused by the
    # runtime, which will not write the sandbox's /etc/hosts through it.
    odd = tmp_path / "odd.tar"
    with tarfile.open(odd, "w") as tar:
        for name, target in (("etc", "tmp"), ("usr/bin/python3", "../../bin/false")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
    assert cli(server, "image", "import", image_name, str(odd)).returncode == 0
    with server.client() as http:
        r = http.post("/api/v1/sandboxes", json={"image": image_name, "metadata": {"t": image_name}})
        assert r.status_code == 400 and r.json()["field"] == "image", r.text
        assert "/etc is not a directory" in r.json()["message"]
        failed = http.get("/api/v1/sandboxes", params={"label": f"t={image_name}"}).json()["items"]
    assert [(s["status"]["state"], s["status"]["reason"]) for s in failed] == [("failed", "create_failed")]
    assert not (server.data_dir / "sandboxes" / failed[0]["id"]).exists()
