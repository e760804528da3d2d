"""Image references per project, in-process (the real app and image catalog, a runtime that runs
nothing): a project sees its own references and the operator's images, and another project's
image is absent, to list, inspect, remove and to create a sandbox from, even by its catalog name.
The bytes stay shared: identical content is stored once, and stays while anyone refers to it."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from sandboxd.api.app import create_app
from sandboxd.config import Settings
from sandboxd.runtimes.local.images.catalog import ImageStore
from tests.conftest import USERNS_BASE
from tests.test_tenancy_api import SERVER_KEY, IdleRuntime, make_key

pytestmark = pytest.mark.anyio
A = {"x-sandboxd-project": "a"}
B = {"x-sandboxd-project": "b"}


def rootfs(*entries: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    # The operator's image: in the image directory before the server starts.
    ImageStore(tmp_path / "images", USERNS_BASE).import_tarball("opimg", _tarball(tmp_path, b"operator"))
    settings = Settings(data_dir=tmp_path, api_key=SERVER_KEY, reaper_interval=3600)
    app = create_app(settings, runtime=IdleRuntime())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandboxd.test") as c:
            c.headers["authorization"] = f"Bearer {SERVER_KEY}"
            for name in ("a", "b"):
                assert (await c.post("/api/v1/projects", json={"name": name})).status_code == 201
            yield c


def _tarball(tmp_path: Path, motd: bytes) -> Path:
    path = tmp_path / f"rootfs-{len(list(tmp_path.glob('rootfs-*')))}.tar"
    path.write_bytes(rootfs(("etc/motd", motd)))
    return path


async def import_(c: httpx.AsyncClient, name: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await c.post("/api/v1/images/import", params={"name": name}, content=body, headers=headers)


async def names(c: httpx.AsyncClient, headers: dict[str, str]) -> set[str]:
    r = await c.get("/api/v1/images", headers=headers)
    assert r.status_code == 200, r.text
    return {i["name"] for i in r.json()["items"]}


async def create(c: httpx.AsyncClient, image: str, headers: dict[str, str]) -> dict[str, Any]:
    r = await c.post("/api/v1/sandboxes", json={"image": image}, headers=headers)
    assert r.status_code == 400, r.text
    body = dict(r.json())
    body.pop("request_id", None)
    return body


async def test_another_projects_image_is_absent(client: httpx.AsyncClient, tmp_path: Path) -> None:
    r = await import_(client, "app", rootfs(("etc/motd", b"a's")), A)
    assert r.status_code == 201 and r.json()["name"] == "app", r.text
    catalog_name = next(n for n in ImageStore(tmp_path / "images", USERNS_BASE).list() if n.startswith("img-"))

    assert "app" in await names(client, A)
    assert "app" not in await names(client, B) and catalog_name not in await names(client, B)
    assert "app" not in await names(client, {})  # the default project's is another project too
    never = await client.get("/api/v1/images/never-was", headers=B)
    for target in ("app", catalog_name):
        got = await client.get(f"/api/v1/images/{target}", headers=B)
        assert (
            (got.status_code, got.json()["code"])
            == (404, "IMAGE_NOT_FOUND")
            == (never.status_code, never.json()["code"])
        )
        assert got.json()["message"] == never.json()["message"].replace("never-was", target)
        gone = await client.delete(f"/api/v1/images/{target}", headers=B)
        assert (gone.status_code, gone.json()["code"]) == (404, "IMAGE_NOT_FOUND")
        # A sandbox from it: what an image that does not exist gets (400 on image), never reaching the runtime.
        refused, unknown = await create(client, target, B), await create(client, "never-was", B)
        assert refused["field"] == unknown["field"] == "image" and refused["code"] == unknown["code"]
        assert refused["message"] == unknown["message"].replace("never-was", target)
    assert (await client.get("/api/v1/images/app", headers=A)).status_code == 200  # A's is untouched


async def test_names_are_per_project_and_bytes_are_shared(client: httpx.AsyncClient, tmp_path: Path) -> None:
    body = rootfs(("etc/motd", b"the same content"))
    a = (await import_(client, "app", body, A)).json()
    assert (await import_(client, "app", body, A)).status_code == 400  # the name is A's already
    b = (await import_(client, "app", body, B)).json()  # B's own "app": no clash, nothing revealed
    assert a["layers"] == b["layers"] and len(a["layers"]) == 1  # one copy of the content
    layer = tmp_path / "images" / ".layers" / a["layers"][0]

    assert (await client.delete("/api/v1/images/app", headers=A)).status_code == 204
    assert (await client.get("/api/v1/images/app", headers=A)).status_code == 404
    assert (await client.post("/api/v1/images/gc", headers=A)).status_code == 200
    assert layer.is_dir()  # B still refers to the content
    assert (await client.get("/api/v1/images/app", headers=B)).json()["layers"] == b["layers"]

    assert (await client.delete("/api/v1/images/app", headers=B)).status_code == 204
    assert f"layer:{layer.name}" in (await client.post("/api/v1/images/gc", headers=B)).json()["removed"]
    assert not layer.exists()


async def test_the_operators_images_are_shared(client: httpx.AsyncClient) -> None:
    for headers in (A, B, {}):
        assert "opimg" in await names(client, headers)
        assert (await client.get("/api/v1/images/opimg", headers=headers)).json()["source"] == "tarball"
    # Shared, so a project cannot take the name, nor remove it for everyone.
    assert (await import_(client, "opimg", rootfs(("x", b"x")), B)).status_code == 400
    # No project's key may, the default project's included: only the server's key (the operator).
    projects = {p["name"]: p["id"] for p in (await client.get("/api/v1/projects")).json()}
    for project_id in (projects["b"], projects["default"]):
        made = await client.post("/api/v1/keys", json={"name": "k", "scopes": ["admin"], "project_id": project_id})
        assert made.status_code == 201, made.text
        refused = await client.delete("/api/v1/images/opimg", headers={"authorization": f"Bearer {made.json()['key']}"})
        assert (refused.status_code, refused.json()["code"]) == (409, "CONFLICT"), refused.text
    assert "opimg" in await names(client, A)
    # The server's key (the operator) still may, as before there were projects.
    assert (await client.delete("/api/v1/images/opimg")).status_code == 204
    assert "opimg" not in await names(client, A)


async def test_a_project_key_is_scoped_the_same(client: httpx.AsyncClient) -> None:
    projects = {p["name"]: p["id"] for p in (await client.get("/api/v1/projects")).json()}
    key = (await make_key(client, scopes=["write"], project_id=projects["b"]))["key"]
    b_key = {"authorization": f"Bearer {key}"}
    assert (await import_(client, "mine", rootfs(("x", b"b")), b_key)).status_code == 201
    assert (await import_(client, "theirs", rootfs(("x", b"a")), A)).status_code == 201
    assert "mine" in await names(client, B) and "mine" in await names(client, b_key)
    assert "theirs" not in await names(client, b_key)
    assert (await client.get("/api/v1/images/theirs", headers=b_key)).status_code == 404
