"""The OpenSandbox facade as an attacker calls it (fast tier: the real app and services over the
fake runtime): a read-only key gets no execd token and exposes no port; no caller removes or sets
the server's own labels through metadata; a bind outside the operator's allowlist is refused."""

from __future__ import annotations

from typing import Any

import pytest

from sandboxd.api.facades.opensandbox.tokens import EXECD_HEADER
from tests.facades.test_opensandbox_lifecycle_fast import BASE, BODY, KEY, create, os_error, running
from tests.fast.conftest import Api

pytestmark = pytest.mark.anyio


async def key(api: Api, scopes: list[str]) -> dict[str, str]:
    r = await api.client.post("/api/v1/keys", json={"name": "-".join(scopes), "scopes": scopes})
    assert r.status_code == 201, r.text
    return {"OPEN-SANDBOX-API-KEY": r.json()["key"]}


async def test_read_only_key_gets_no_execd_token_and_exposes_no_port(api: Api) -> None:
    sid = (await create(api))["id"]
    await running(api, sid)
    reader = await key(api, ["read"])
    assert (await api.client.get(f"{BASE}/sandboxes/{sid}", headers=reader)).status_code == 200  # it may read
    for port in (44772, 18080, 8080):
        r = await api.client.get(f"{BASE}/sandboxes/{sid}/endpoints/{port}", headers=reader)
        body = os_error(r, 403)
        assert EXECD_HEADER not in str(body)
    assert (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()["ports"] == []  # nothing exposed
    writer = await key(api, ["write"])
    r = await api.client.get(f"{BASE}/sandboxes/{sid}/endpoints/44772", headers=writer)
    assert r.status_code == 200 and EXECD_HEADER in r.json()["headers"]


async def test_metadata_cannot_touch_the_servers_or_the_facades_labels(api: Api) -> None:
    sid = (await create(api, metadata={"mine": "1"}, extensions={"team": "a"}))["id"]
    for patch in (
        {"sandboxd.template-build": None},
        {"sandboxd.template-build": "v1"},
        {"opensandbox.io/ext.team": None},
        {"opensandbox.io/ext.team": "b"},
    ):
        r = await api.client.patch(f"{BASE}/sandboxes/{sid}/metadata", json=patch, headers=KEY)
        os_error(r, 400, mentions=next(iter(patch)).split("/")[0].split(".")[0])
    native: dict[str, Any] = (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()
    assert native["metadata"] == {"mine": "1", "opensandbox.io/ext.team": "a"}
    os_error(
        await api.client.post(f"{BASE}/sandboxes", json={**BODY, "metadata": {"sandboxd.x": "1"}}, headers=KEY), 400
    )


async def test_host_volume_outside_the_allowlist_is_refused(api: Api) -> None:
    for path in ("/etc", "/var/../etc", str(api.settings.data_dir)):
        volume = {"name": "h", "mountPath": "/h", "host": {"path": path}}
        r = await api.client.post(f"{BASE}/sandboxes", json={**BODY, "volumes": [volume]}, headers=KEY)
        os_error(r, 400, mentions="volumes[0].host")
    volume = {"name": "h", "mountPath": "/h", "host": {"path": "/tmp"}, "subPath": "../etc"}
    r = await api.client.post(f"{BASE}/sandboxes", json={**BODY, "volumes": [volume]}, headers=KEY)
    os_error(r, 400, mentions="volumes[0].subPath")
    listed = (await api.client.get("/api/v1/sandboxes")).json()
    assert listed["items"] == []
