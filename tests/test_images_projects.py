"""Image references per project on a real server, with real sandboxes and registries: a project
starts sandboxes from its own images and the operator's, never from another project's (not even
one a registry would refuse it: another project's pull of a private image is not its pull), and
the bytes stay shared while any project refers to them."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server
from tests.test_images import base_layer  # noqa: F401 - the fixture, shared
from tests.test_registry import TAR, Registry, tar_bytes


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture
def project_b(http: httpx.Client) -> dict[str, str]:
    name = "imgs-" + os.urandom(3).hex()
    r = http.post("/api/v1/projects", json={"name": name})
    assert r.status_code == 201, r.text
    return {"x-sandboxd-project": name}


def run_from(http: httpx.Client, image: str, headers: dict[str, str], **body: Any) -> httpx.Response:
    """Creates a sandbox, reads its /etc/motd into the response's `motd`, deletes it."""
    r = http.post("/api/v1/sandboxes", json={"image": image, **body}, headers=headers)
    if r.status_code == 201:
        sid = r.json()["id"]
        try:
            motd = http.get(f"/api/v1/sandboxes/{sid}/files", params={"path": "/etc/motd"}, headers=headers)
            r.extensions["motd"] = motd.content if motd.status_code == 200 else None
        finally:
            http.delete(f"/api/v1/sandboxes/{sid}", headers=headers)
    return r


def pull(http: httpx.Client, ref: str, headers: dict[str, str], auth: tuple[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"reference": ref}
    if auth:
        body["auth"] = {"username": auth[0], "password": auth[1]}
    lines = http.post("/api/v1/images/pull", json=body, headers=headers).text.splitlines()
    return dict(json.loads(lines[-1]))


def test_imported_images_are_the_projects_and_the_bytes_shared(
    http: httpx.Client, project_b: dict[str, str], server: Server
) -> None:
    name = "mine-" + os.urandom(3).hex()
    content = tar_bytes(("etc/motd", b"imported by the default project"))
    a = http.post("/api/v1/images/import", params={"name": name}, content=content)
    assert a.status_code == 201, a.text
    try:
        mine = run_from(http, name, {})
        assert mine.status_code == 201 and mine.extensions["motd"] == b"imported by the default project"
        refused = run_from(http, name, project_b)
        assert (refused.status_code, refused.json()["code"], refused.json()["field"]) == (
            400,
            "IMAGE_NOT_FOUND",
            "image",
        )
        # The operator's image is every project's.
        assert run_from(http, "debian", project_b).status_code == 201

        # B imports the same content under the same name: its own image, the same layer.
        b = http.post("/api/v1/images/import", params={"name": name}, content=content, headers=project_b)
        assert b.status_code == 201 and b.json()["layers"] == a.json()["layers"]
        assert http.delete(f"/api/v1/images/{name}").status_code == 204
        assert http.post("/api/v1/images/gc").status_code == 200
        images_dir = Path(server.env["SANDBOXD_IMAGES_DIR"])
        assert (images_dir / ".layers" / a.json()["layers"][0]).is_dir()
        theirs = run_from(http, name, project_b)
        assert theirs.status_code == 201 and theirs.extensions["motd"] == b"imported by the default project"
        assert run_from(http, name, {}).status_code == 400  # the default project's is gone
    finally:
        http.delete(f"/api/v1/images/{name}")
        http.delete(f"/api/v1/images/{name}", headers=project_b)


def test_another_projects_private_pull_is_not_this_projects(
    http: httpx.Client, project_b: dict[str, str], tmp_path: Path, server: Server
) -> None:
    private = Registry(tmp_path, auth=("alice", "s3cret"))
    try:
        private.push_image("secret/app", "v1", [(tar_bytes(("etc/motd", b"private")), TAR)])
        ref = f"{private.host}/secret/app:v1"
        assert pull(http, ref, {}, ("alice", "s3cret"))["type"] == "done"
        assert run_from(http, ref, {}).extensions["motd"] == b"private"

        # B knows the name; the image is here; neither is enough.
        assert ref not in [i["name"] for i in http.get("/api/v1/images", headers=project_b).json()["items"]]
        assert http.get(f"/api/v1/images/{ref}", headers=project_b).status_code == 404
        assert http.delete(f"/api/v1/images/{ref}", headers=project_b).status_code == 404
        refused = pull(http, ref, project_b)
        assert refused["type"] == "error" and "credentials" in refused["message"]
        refused = pull(http, ref, project_b, ("alice", "wrong"))
        assert refused["type"] == "error" and refused["status"] == 400
        created = run_from(http, ref, project_b)
        assert (created.status_code, created.json()["field"]) == (400, "image") and "credentials" in created.text
        assert http.get(f"/api/v1/images/{ref}", headers=project_b).status_code == 404

        # With the credentials B is given the image already here (its blobs are not fetched again).
        created = run_from(http, ref, project_b, image_auth={"username": "alice", "password": "s3cret"})
        assert created.status_code == 201 and created.extensions["motd"] == b"private"
        layers = http.get(f"/api/v1/images/{ref}", headers=project_b).json()["layers"]
        assert layers == http.get(f"/api/v1/images/{ref}").json()["layers"]

        # B's remove drops B's reference only; the default project's stays, bytes and all.
        assert http.delete(f"/api/v1/images/{ref}", headers=project_b).status_code == 204
        assert http.get(f"/api/v1/images/{ref}", headers=project_b).status_code == 404
        assert http.get(f"/api/v1/images/{ref}").status_code == 200
        assert (Path(server.env["SANDBOXD_IMAGES_DIR"]) / ".layers" / layers[0]).is_dir()
    finally:
        http.delete(f"/api/v1/images/{ref}", headers=project_b)
        http.delete(f"/api/v1/images/{ref}")
        private.close()


def build(http: httpx.Client, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    r = http.post("/api/v1/templates", json=body, headers=headers)
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 120
    while (
        version := http.get(f"/api/v1/templates/{body['name']}/versions/{r.json()['version']}", headers=headers).json()
    )["state"] in ("pending", "building"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return dict(version)


def test_a_template_on_the_projects_own_image(
    http: httpx.Client,
    project_b: dict[str, str],
    base_layer: Path,  # noqa: F811
) -> None:
    name = "own-base-" + os.urandom(3).hex()
    imported = http.post(
        "/api/v1/images/import", params={"name": name}, content=base_layer.read_bytes(), headers=project_b
    )
    assert imported.status_code == 201, imported.text
    template = {"name": name, "base": name, "steps": [{"type": "run", "command": f"echo {name} > /etc/motd"}]}
    try:
        built = build(http, template, project_b)
        assert built["state"] == "ready", built["message"]
        r = http.post("/api/v1/sandboxes", json={"template": name}, headers=project_b)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        motd = http.get(f"/api/v1/sandboxes/{sid}/files", params={"path": "/etc/motd"}, headers=project_b)
        http.delete(f"/api/v1/sandboxes/{sid}", headers=project_b)
        assert motd.content == f"{name}\n".encode()
        # The template's image is B's: B sees it, the default project does not, nor may build on B's base.
        assert http.get(f"/api/v1/images/{built['image']}", headers=project_b).status_code == 200
        assert http.get(f"/api/v1/images/{built['image']}").status_code == 404
        assert run_from(http, built["image"], {}).status_code == 400
        theirs = build(http, template, {})
        assert theirs["state"] == "failed" and name in theirs["message"]
    finally:
        for headers in (project_b, {}):
            for version in http.get("/api/v1/templates", params={"name": name}, headers=headers).json()["items"]:
                http.delete(f"/api/v1/templates/{name}/versions/{version['version']}", headers=headers)
        http.delete(f"/api/v1/images/{name}", headers=project_b)
