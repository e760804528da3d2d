"""A Docker-style short name (`python:3.12`) is a local name here: the refusal says how a registry
image is named instead, and Docker Hub's own names for itself in a reference reach its registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sandboxd_sdk.cli.images import _credentials

from sandboxd.config import Settings
from sandboxd.runtimes.local.images.registry import DEFAULT_REGISTRY, Credentials, parse_reference
from sandboxd.runtimes.registry import image_store
from tests.fast.conftest import Api, error

pytestmark = pytest.mark.anyio


async def test_a_short_docker_name_explains_registry_references(api: Api) -> None:
    r = await api.client.post("/api/v1/sandboxes", json={"image": "python:3.12"})
    assert r.status_code == 400
    body = error(r)
    assert body["code"] == "IMAGE_NOT_FOUND" and body["field"] == "image"
    assert "'python:3.12' is not available" in body["message"]
    assert "docker.io/library/python:3.12" in body["message"]


def test_docker_hub_names_in_a_reference_reach_its_registry() -> None:
    for text in ("docker.io/library/python:3.12", "index.docker.io/library/python:3.12", "python:3.12"):
        ref = parse_reference(text)
        assert (ref.registry, ref.repository, ref.tag) == (DEFAULT_REGISTRY, "library/python", "3.12")
    assert parse_reference("registry.example.com/team/app:1").registry == "registry.example.com"


def test_docker_hubs_credentials_are_found_under_any_of_its_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's SANDBOXD_REGISTRY_AUTH as docker writes it (keyed docker.io) is used for Hub pulls.
    settings = Settings(data_dir=tmp_path, registry_auth={"docker.io": {"username": "u", "password": "p"}})
    store = image_store(settings)
    ref = parse_reference("python:3.12")
    assert store.registry_auth.get(ref.registry) == Credentials("u", "p")
    # And the CLI's own, sent with `sandboxd image pull`.
    monkeypatch.setenv("SANDBOXD_REGISTRY_AUTH", json.dumps({"docker.io": {"username": "u", "password": "p"}}))
    for text in ("python:3.12", "docker.io/library/python:3.12", "index.docker.io/library/python"):
        assert _credentials(text) == {"username": "u", "password": "p"}
    assert _credentials("registry.example.com/team/app:1") is None
