"""A Docker-style short name (`python:3.12`) is a local name here: the refusal says how a registry
image is named instead, and Docker Hub's own names for itself in a reference reach its registry."""

from __future__ import annotations

import pytest

from sandboxd.runtimes.local.images.registry import DEFAULT_REGISTRY, parse_reference
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
