"""Pulling from a real registry: Debian's docker-registry on loopback, filled by the tests' own pusher."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
import zstandard

from sandboxd.errors import InvalidRequest, UpstreamFailure
from sandboxd.runtimes.local.images.catalog import ImageStore
from sandboxd.runtimes.local.images.registry import parse_reference
from sandboxd.runtimes.outbound import OutboundRules
from tests.conftest import USERNS_BASE, Server, free_port
from tests.test_images import add_bytes, base_layer  # noqa: F401 - the fixture, shared

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
TAR = "application/vnd.oci.image.layer.v1.tar"
# The test registries listen on loopback, where a pull may go only if the operator says so.
LOOPBACK_REGISTRY = OutboundRules(allow_hosts=("127.0.0.1",))


class Registry:
    """A docker-registry process on 127.0.0.1, optionally behind htpasswd basic auth."""

    def __init__(self, root: Path, auth: tuple[str, str] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.auth = auth
        config = {
            "version": 0.1,
            "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{self.port}"},
            "log": {"level": "warn"},
        }
        if auth:
            hashed = bcrypt.hashpw(auth[1].encode(), bcrypt.gensalt(rounds=4)).decode()
            (root / "htpasswd").write_text(f"{auth[0]}:{hashed}\n")
            config["auth"] = {"htpasswd": {"realm": "test", "path": str(root / "htpasswd")}}
        (root / "config.json").write_text(json.dumps(config))  # YAML is a superset of JSON
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(root / "config.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "docker-registry did not start"
                time.sleep(0.05)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=self.auth, timeout=120)

    def push_blob(self, repo: str, data: bytes, media_type: str) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self.client() as http:
            start = http.post(f"/v2/{repo}/blobs/uploads/")
            start.raise_for_status()
            location = start.headers["Location"]  # keeps its own query (_state): add to it
            http.put(f"{location}{'&' if '?' in location else '?'}digest={digest}", content=data).raise_for_status()
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def push_manifest(self, repo: str, tag: str, manifest: dict[str, object], media_type: str) -> str:
        body = json.dumps(manifest).encode()
        with self.client() as http:
            http.put(
                f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": media_type}
            ).raise_for_status()
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def push_image(self, repo: str, tag: str, layers: list[tuple[bytes, str]]) -> str:
        descriptors = [self.push_blob(repo, data, media) for data, media in layers]
        config = self.push_blob(
            repo,
            json.dumps({"architecture": "amd64", "os": "linux"}).encode(),
            "application/vnd.oci.image.config.v1+json",
        )
        return self.push_manifest(
            repo,
            tag,
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": descriptors},
            OCI_MANIFEST,
        )

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def tar_bytes(*entries: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            add_bytes(tar, name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def pushed(registry: Registry, base_layer: Path) -> str:  # noqa: F811 - pytest fixture injection
    """demo:v1 — an uncompressed base, a gzip layer with a whiteout, a zstd layer on top — behind a
    multi-arch index whose other entry is arm64."""
    middle = gzip.compress(tar_bytes(("etc/.wh.motd", b""), ("middle.txt", b"gzip layer")), compresslevel=1)
    top = zstandard.ZstdCompressor().compress(tar_bytes(("top.txt", b"zstd layer")))
    image = registry.push_image(
        "demo",
        "v1-amd64",
        [
            (base_layer.read_bytes(), TAR),
            (middle, TAR + "+gzip"),
            (top, TAR + "+zstd"),
        ],
    )
    other = registry.push_image(
        "demo", "v1-arm64", [(tar_bytes(("wrong-arch.txt", b"arm")), "application/vnd.oci.image.layer.v1.tar")]
    )
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": other,
                "size": 1,
                "platform": {"os": "linux", "architecture": "arm64"},
            },
            {
                "mediaType": OCI_MANIFEST,
                "digest": image,
                "size": 1,
                "platform": {"os": "linux", "architecture": "amd64"},
            },
        ],
    }
    registry.push_manifest("demo", "v1", index, OCI_INDEX)
    return f"{registry.host}/demo:v1"


def cli(server: Server, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandboxd.cli.main", *args],
        env={**server.env, "SANDBOXD_URL": server.url, **env},  # the CLI asks the server for its images
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_create_pulls_a_multi_arch_image_with_gzip_and_zstd_layers(server: Server, pushed: str) -> None:
    try:
        with server.create(image=pushed) as sb:
            assert sb.files.read("/top.txt") == b"zstd layer"
            assert sb.files.read("/middle.txt") == b"gzip layer"
            assert not sb.files.exists("/etc/motd")  # whited out by the middle layer
            assert not sb.files.exists("/wrong-arch.txt")  # the index's arm64 entry was not taken
            assert sb.commands.run("python3 -c 'print(7*6)'").stdout == "42\n"
        assert pushed in cli(server, "image", "ls").stdout.split()
        # A second create uses the local copy: the registry is not needed any more.
        with server.create(image=pushed) as sb:
            assert sb.files.read("/top.txt") == b"zstd layer"
    finally:
        cli(server, "image", "rm", pushed)


def test_pull_by_digest_and_errors_that_name_the_problem(server: Server, registry: Registry, pushed: str) -> None:
    with registry.client() as http:
        digest = (
            "sha256:"
            + hashlib.sha256(
                http.get("/v2/demo/manifests/v1-amd64", headers={"Accept": OCI_MANIFEST}).content
            ).hexdigest()
        )
    by_digest = f"{registry.host}/demo@{digest}"
    try:
        done = cli(server, "image", "pull", by_digest)
        assert done.returncode == 0, done.stderr
        with server.client() as http:
            missing = http.post("/api/v1/sandboxes", json={"image": f"{registry.host}/demo:nope"})
            assert missing.status_code == 400 and missing.json()["field"] == "image"
            assert "not found" in missing.json()["message"]
            bad = http.post("/api/v1/sandboxes", json={"image": f"{registry.host}/Bad Name:x"})
            assert bad.status_code == 400 and bad.json()["field"] == "image"
    finally:
        cli(server, "image", "rm", by_digest)


def test_private_repository_needs_credentials(server: Server, tmp_path: Path) -> None:
    private = Registry(tmp_path, auth=("alice", "s3cret"))
    try:
        private.push_image(
            "secret/app", "v1", [(tar_bytes(("hello.txt", b"private")), "application/vnd.oci.image.layer.v1.tar")]
        )
        ref = f"{private.host}/secret/app:v1"
        refused = cli(server, "image", "pull", ref)
        assert refused.returncode == 1 and "credentials" in refused.stderr
        wrong = json.dumps({private.host: {"username": "alice", "password": "nope"}})
        assert cli(server, "image", "pull", ref, SANDBOXD_REGISTRY_AUTH=wrong).returncode == 1
        right = json.dumps({private.host: {"username": "alice", "password": "s3cret"}})
        pulled = cli(server, "image", "pull", ref, SANDBOXD_REGISTRY_AUTH=right)
        assert pulled.returncode == 0, pulled.stderr
        rootfs = ImageStore(Path(server.env["SANDBOXD_IMAGES_DIR"]), USERNS_BASE).get(ref).layers[-1]
        assert (rootfs / "hello.txt").read_bytes() == b"private"
        # Per request (OpenSandbox's image.auth): used for the pull, never stored or shown.
        private.push_image("secret/app", "v2", [(tar_bytes(("usr/bin/python3", b""), ("v2.txt", b"2")), TAR)])
        v2 = f"{private.host}/secret/app:v2"
        with server.client() as http:
            body = {"image": v2, "image_auth": {"username": "alice", "password": "nope"}}
            assert http.post("/api/v1/sandboxes", json=body).status_code == 400
            body["image_auth"]["password"] = "s3cret"  # type: ignore[index]
            r = http.post("/api/v1/sandboxes", json=body, params={"wait": "false"})
            assert r.status_code == 202 and "s3cret" not in r.text
            deadline = time.monotonic() + 30
            while http.get(f"/api/v1/sandboxes/{r.json()['id']}").json()["status"]["state"] == "pending":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            http.delete(f"/api/v1/sandboxes/{r.json()['id']}")  # (its image has no working python3)
        assert ImageStore(Path(server.env["SANDBOXD_IMAGES_DIR"]), USERNS_BASE).exists(v2)
        stored = b"".join(p.read_bytes() for p in server.data_dir.glob("sandboxd.db*"))
        assert b"s3cret" not in stored
    finally:
        for tag in ("v1", "v2"):
            cli(server, "image", "rm", f"{private.host}/secret/app:{tag}")
        private.close()


def test_tampered_blob_and_decompression_bomb_are_refused(registry: Registry, tmp_path: Path) -> None:
    bomb = zstandard.ZstdCompressor().compress(tar_bytes(("zeros", bytes(8 * 1024 * 1024))))
    registry.push_image("bomb", "v1", [(bomb, TAR + "+zstd")])
    store = ImageStore(tmp_path / "images", USERNS_BASE, max_layer_bytes=1024 * 1024, outbound=LOOPBACK_REGISTRY)
    with pytest.raises(InvalidRequest, match="more than the allowed size"):
        store.pull(f"{registry.host}/bomb:v1")
    assert store.list() == [] and not list((tmp_path / "images").glob(".partial-*"))

    digest = registry.push_blob("tamper", tar_bytes(("a.txt", b"original")), "application/vnd.oci.image.layer.v1.tar")[
        "digest"
    ]
    registry.push_image("tamper", "v1", [(tar_bytes(("a.txt", b"original")), "application/vnd.oci.image.layer.v1.tar")])
    hexdigest = str(digest).split(":")[1]
    data = registry.root / "data/docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    data.write_bytes(tar_bytes(("a.txt", b"tampered")))
    fresh = ImageStore(tmp_path / "images2", USERNS_BASE, outbound=LOOPBACK_REGISTRY)
    with pytest.raises(UpstreamFailure, match="did not match its digest"):
        fresh.pull(f"{registry.host}/tamper:v1")
    assert not list((tmp_path / "images2" / ".blobs").rglob(hexdigest))


def test_references_are_parsed_like_docker() -> None:
    assert str(parse_reference("python")) == "registry-1.docker.io/library/python:latest"
    ref = parse_reference("localhost:5000/team/app:1.2")
    assert (ref.registry, ref.repository, ref.tag) == ("localhost:5000", "team/app", "1.2")
    for bad in ("UPPER/x", "a b", "host/x@sha256:short", ""):
        with pytest.raises(InvalidRequest):
            parse_reference(bad)


def test_inspect_delete_refused_in_use_and_gc(server: Server, registry: Registry) -> None:
    registry.push_image("small", "v1", [(tar_bytes(("usr/bin/python3", b"")), TAR)])
    ref = f"{registry.host}/small:v1"
    assert cli(server, "image", "pull", ref).returncode == 0
    info = json.loads(cli(server, "image", "inspect", ref).stdout)
    assert info["reference"] == ref and info["digest"].startswith("sha256:") and len(info["layers"]) == 1
    with server.create() as sb:  # a sandbox on the debian image: debian cannot go
        refused = cli(server, "image", "rm", "debian")
        assert refused.returncode == 1 and "in use" in refused.stderr
        assert sb.commands.run("true").exit_code == 0
    assert cli(server, "image", "rm", ref).returncode == 0
    collected = cli(server, "image", "gc").stdout.split()
    images_dir = Path(server.env["SANDBOXD_IMAGES_DIR"])
    assert info["blobs"][0] in collected and f"layer:{info['layers'][0]}" in collected
    assert not (images_dir / ".blobs" / "sha256" / info["blobs"][0].split(":")[1]).exists()
    assert not (images_dir / ".layers" / info["layers"][0]).exists()
    assert ImageStore(images_dir, USERNS_BASE).get("debian").python  # what is in use stays


def test_pull_progress_is_visible_while_a_create_waits(server: Server, registry: Registry, base_layer: Path) -> None:  # noqa: F811
    registry.push_image("progress", "v1", [(base_layer.read_bytes(), TAR)])
    ref = f"{registry.host}/progress:v1"
    seen: list[str] = []
    try:
        with server.client() as http:
            sid = http.post("/api/v1/sandboxes", params={"wait": "false"}, json={"image": ref}).json()["id"]
            deadline = time.monotonic() + 60
            while (status := http.get(f"/api/v1/sandboxes/{sid}").json()["status"])["state"] == "pending":
                if status["reason"] == "pulling":
                    seen.append(status["message"])
                assert time.monotonic() < deadline
                time.sleep(0.005)
            assert status["state"] == "running"
            http.delete(f"/api/v1/sandboxes/{sid}")
        assert seen and all(ref in m and " MB" in m for m in seen), seen
    finally:
        cli(server, "image", "rm", ref)
