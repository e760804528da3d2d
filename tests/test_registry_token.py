"""Token (Bearer) auth as Docker Hub and most registries do it, and concurrent pulls that pull once.

A small proxy on loopback stands in front of the real docker-registry: it answers 401 with a Bearer
challenge naming its token endpoint, hands out a token for the right basic credentials, admits only
requests that carry it, and counts the requests it passes on."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from sandboxd.errors import InvalidRequest
from sandboxd.runtimes.local.images.catalog import ImageStore
from sandboxd.runtimes.local.images.registry import Credentials
from tests.conftest import USERNS_BASE, Server
from tests.test_images import base_layer  # noqa: F401 - the fixture, shared
from tests.test_registry import LOOPBACK_REGISTRY, TAR, Registry, tar_bytes

USER, PASSWORD = "bob", "t0ken-pass"


class TokenProxy:
    def __init__(self, upstream: Registry) -> None:
        self.token = os.urandom(16).hex()
        self.seen: Counter[str] = Counter()
        self.scopes: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlparse(self.path)
                if url.path == "/token":
                    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                    if self.headers.get("Authorization") != expected:
                        self._answer(401, b'{"errors": [{"code": "UNAUTHORIZED"}]}')
                        return
                    proxy.scopes += parse_qs(url.query).get("scope", [])
                    self._answer(200, f'{{"token": "{proxy.token}"}}'.encode())
                    return
                if self.headers.get("Authorization") != f"Bearer {proxy.token}":
                    repo = url.path.removeprefix("/v2/").split("/manifests/")[0].split("/blobs/")[0]
                    challenge = (
                        f'Bearer realm="http://127.0.0.1:{proxy.port}/token",service="test",'
                        f'scope="repository:{repo}:pull"'
                    )
                    self._answer(401, b"{}", {"WWW-Authenticate": challenge})
                    return
                proxy.seen[url.path] += 1
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept",)}
                with httpx.Client(base_url=upstream.url, timeout=60) as http:
                    r = http.get(self.path, headers=headers)
                extra = {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "docker-content-digest")}
                time.sleep(0.05)  # slow enough that concurrent pulls overlap
                self._answer(r.status_code, r.content, extra)

            def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, TokenProxy]]:
    registry = Registry(tmp_path_factory.mktemp("token-registry"))
    front = TokenProxy(registry)
    yield registry, front
    front.close()
    registry.close()


def test_token_auth_pulls_with_the_right_credentials_only(proxy: tuple[Registry, TokenProxy], tmp_path: Path) -> None:
    registry, front = proxy
    registry.push_image("team/tool", "v1", [(tar_bytes(("usr/bin/python3", b""), ("tool.txt", b"tokened")), TAR)])
    ref = f"{front.host}/team/tool:v1"
    store = ImageStore(tmp_path / "images", USERNS_BASE, outbound=LOOPBACK_REGISTRY)
    with pytest.raises(InvalidRequest, match="refused the credentials"):
        store.pull(ref)  # no credentials: the token endpoint says no
    with pytest.raises(InvalidRequest, match="refused the credentials"):
        store.pull(ref, credentials=Credentials(USER, "wrong"))
    image = store.pull(ref, credentials=Credentials(USER, PASSWORD))
    assert (image.layers[-1] / "tool.txt").read_bytes() == b"tokened"
    assert front.scopes[-1] == "repository:team/tool:pull"  # the token asked for this repository only


def test_concurrent_creates_of_one_image_pull_it_once(
    server: Server,
    proxy: tuple[Registry, TokenProxy],
    base_layer: Path,  # noqa: F811 - pytest fixture injection
) -> None:
    registry, front = proxy
    top = tar_bytes(("once.txt", os.urandom(64)))  # unique per run: nothing of it is cached yet
    registry.push_image("team/once", "v1", [(base_layer.read_bytes(), TAR), (top, TAR)])
    ref = f"{front.host}/team/once:v1"
    auth = {"username": USER, "password": PASSWORD}
    with server.client() as http:
        ids = []
        for _ in range(3):
            r = http.post(
                "/api/v1/sandboxes?wait=false", json={"image": ref, "image_auth": auth, "metadata": {"t": "once"}}
            )
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        deadline = time.monotonic() + 60
        states: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            states = [http.get(f"/api/v1/sandboxes/{i}").json()["status"] for i in ids]
            if all(s["state"] != "pending" for s in states):
                break
            time.sleep(0.1)
        assert all(s["state"] == "running" for s in states), states
        for i in ids:
            http.delete(f"/api/v1/sandboxes/{i}")
    ImageStore(Path(server.env["SANDBOXD_IMAGES_DIR"]), USERNS_BASE).delete(ref)  # the cache is shared
    blob_gets = {path: n for path, n in front.seen.items() if "/team/once/blobs/" in path}
    manifest_gets = {path: n for path, n in front.seen.items() if "/team/once/manifests/" in path}
    assert blob_gets and all(n == 1 for n in blob_gets.values()), blob_gets
    # The project's first create asks the registry once for the manifest with its credentials
    # before the project holds the reference (services/images.py), then the pull fetches it: two;
    # the later creates find the reference and the image, and ask nothing.
    assert sum(manifest_gets.values()) == 2, manifest_gets
