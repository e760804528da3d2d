"""A project's named volumes are bounded in number and in size together (they share the scratch
filesystem with every sandbox): past either, a 429 naming the setting, and nothing is made."""

from __future__ import annotations

import pytest

from tests.fast.conftest import Api, error

pytestmark = pytest.mark.anyio
VOLUMES = "/api/v1/volumes"


async def test_a_projects_volumes_are_bounded_in_count(api: Api) -> None:
    api.settings.max_project_volumes = 2
    for name in ("a", "b"):
        assert (await api.client.post(VOLUMES, json={"name": name, "size_mb": 16})).status_code == 201
    refused = await api.client.post(VOLUMES, json={"name": "c", "size_mb": 16})
    assert refused.status_code == 429, refused.text
    assert error(refused)["code"] == "QUOTA_EXCEEDED" and "max_project_volumes" in error(refused)["message"]
    assert len(api.runtime.volumes) == 2  # no storage made for the refused one
    assert (await api.client.delete(f"{VOLUMES}/a")).status_code == 204
    assert (await api.client.post(VOLUMES, json={"name": "c", "size_mb": 16})).status_code == 201


async def test_a_projects_volumes_are_bounded_in_size_together(api: Api) -> None:
    api.settings.max_project_volume_mb = 100
    assert (await api.client.post(VOLUMES, json={"name": "a", "size_mb": 60})).status_code == 201
    refused = await api.client.post(VOLUMES, json={"name": "b", "size_mb": 41})
    assert refused.status_code == 429, refused.text
    assert error(refused)["field"] == "size_mb" and "max_project_volume_mb" in error(refused)["message"]
    assert (await api.client.post(VOLUMES, json={"name": "b", "size_mb": 40})).status_code == 201
    assert sorted(api.runtime.volumes.values()) == [40, 60]
