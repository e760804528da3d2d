"""The OpenSandbox lifecycle facade in the fast tier (the real app and services over the fake
runtime, both stores): every create field's boundaries with upstream's error body, auth, another
project's 404, and what each call did to the native record. The official SDK against real
sandboxes is tests/facades/test_opensandbox_lifecycle.py."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from sandboxd.api.facades.opensandbox.states import host_arch
from sandboxd.api.facades.opensandbox.tokens import EGRESS, EXECD, access_token
from tests.fast.conftest import SERVER_KEY, Api

pytestmark = pytest.mark.anyio

BASE = "/opensandbox/v1"
KEY = {"OPEN-SANDBOX-API-KEY": SERVER_KEY}
BODY: dict[str, Any] = {
    "image": {"uri": "debian"},
    "entrypoint": ["tail", "-f", "/dev/null"],
    "timeout": 600,
    "resourceLimits": {"cpu": "500m", "memory": "512Mi"},
    "secureAccess": False,
}


def os_error(r: httpx.Response, status: int, code: str | None = None, mentions: str | None = None) -> dict[str, Any]:
    """Upstream's error body: exactly {code, message}."""
    assert r.status_code == status, r.text
    body = json.loads(r.content)
    assert set(body) == {"code", "message"}, body
    if code is not None:
        assert body["code"] == code, body
    if mentions is not None:
        assert mentions in body["message"], body
    return dict(body)


async def create(api: Api, **fields: Any) -> dict[str, Any]:
    r = await api.client.post(f"{BASE}/sandboxes", json={**BODY, **fields}, headers=KEY)
    assert r.status_code == 202, r.text
    return dict(r.json())


async def running(api: Api, sandbox_id: str) -> dict[str, Any]:
    for _ in range(200):
        got = (await api.client.get(f"/api/v1/sandboxes/{sandbox_id}")).json()
        if got["status"]["state"] != "pending":
            assert got["status"]["state"] == "running", got
            return dict(got)
        await asyncio.sleep(0.01)
    raise AssertionError("never ran")


async def other_project_key(api: Api) -> dict[str, str]:
    project = (await api.client.post("/api/v1/projects", json={"name": "other"})).json()
    r = await api.client.post("/api/v1/keys", json={"name": "k", "scopes": ["admin"], "project_id": project["id"]})
    assert r.status_code == 201, r.text
    return {"OPEN-SANDBOX-API-KEY": r.json()["key"]}


async def test_auth_header_missing_and_wrong(api: Api) -> None:
    async with api.anonymous() as anon:
        os_error(await anon.get(f"{BASE}/sandboxes"), 401, "MISSING_API_KEY")
        os_error(await anon.post(f"{BASE}/sandboxes", json=BODY), 401, "MISSING_API_KEY")
        wrong = {"OPEN-SANDBOX-API-KEY": "nope"}
        os_error(await anon.get(f"{BASE}/sandboxes", headers=wrong), 401, "INVALID_API_KEY")
        # The native Authorization header is not this API's: alone it is a missing key.
        bearer = {"authorization": f"Bearer {SERVER_KEY}"}
        os_error(await anon.get(f"{BASE}/sandboxes", headers=bearer), 401, "MISSING_API_KEY")
        assert (await anon.get(f"{BASE}/sandboxes", headers=KEY)).status_code == 200


async def test_create_maps_every_field_onto_the_native_sandbox(api: Api) -> None:
    r = await api.client.post(
        f"{BASE}/sandboxes",
        headers=KEY,
        json={
            **BODY,
            "timeout": 3600,
            "env": {"A": "1"},
            "metadata": {"team": "ml", "example.com/tier": "gold"},
            "networkPolicy": {"defaultAction": "deny", "egress": [{"action": "allow", "target": "pypi.org"}]},
            "extensions": {"storage.id": "abc", "x": ""},
            "secureAccess": True,
            "platform": {"os": "linux", "arch": host_arch()},
        },
    )
    assert r.status_code == 202, r.text
    out = r.json()
    assert r.headers["location"] == f"/opensandbox/v1/sandboxes/{out['id']}"
    assert out["status"]["state"] == "Pending" and out["status"]["lastTransitionAt"].endswith("Z")
    assert out["entrypoint"] == BODY["entrypoint"] and out["metadata"] == {"team": "ml", "example.com/tier": "gold"}
    assert "image" not in out  # as upstream's create answer
    native = await running(api, out["id"])
    assert native["cpu"] == 0.5 and native["memory_mb"] == 512 and native["env"]["A"] == "1"
    assert native["egress"]["mode"] == "custom" and native["egress"]["default_action"] == "deny"
    assert native["egress"]["rules"] == [{"action": "allow", "target": "pypi.org"}]
    assert native["timeout"] == 3600
    got = (await api.client.get(f"{BASE}/sandboxes/{out['id']}", headers=KEY)).json()
    assert got["status"]["state"] == "Running" and got["image"] == {"uri": "debian"}
    assert got["extensions"] == {"storage.id": "abc", "x": ""}  # verbatim
    assert got["metadata"] == {"team": "ml", "example.com/tier": "gold"}  # the facade's own labels hidden
    assert got["platform"] == {"os": "linux", "arch": host_arch()}


@pytest.mark.parametrize(("timeout", "ok"), [(59, False), (60, True), (86400, True), (86401, False)])
async def test_timeout_boundaries(api: Api, timeout: int, ok: bool) -> None:
    r = await api.client.post(f"{BASE}/sandboxes", json={**BODY, "timeout": timeout}, headers=KEY)
    if ok:
        assert r.status_code == 202, r.text
        expires = datetime.fromisoformat(r.json()["expiresAt"])
        assert abs((expires - datetime.now(UTC)).total_seconds() - timeout) < 30
    else:
        os_error(r, 400, "INVALID_REQUEST", "timeout")


async def test_timeout_null_is_the_servers_longest(api: Api) -> None:
    """sandboxd has no sandbox without an expiry: null is max_timeout, and expiresAt says so."""
    out = await create(api, timeout=None)
    expires = datetime.fromisoformat(out["expiresAt"])
    assert abs((expires - datetime.now(UTC)).total_seconds() - api.settings.max_timeout) < 30


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"cpu": "abc"}, "resourceLimits.cpu"),
        ({"cpu": "0m"}, "resourceLimits.cpu"),
        ({"memory": "12Qi"}, "resourceLimits.memory"),
        ({"memory": "1Ti"}, "resourceLimits.memory"),  # past the server's max_memory_mb
        ({"cpu": "1000"}, "resourceLimits.cpu"),  # past max_cpu
        ({"gpu": "1"}, "resourceLimits.gpu"),
        ({"disk": "1Gi"}, "resourceLimits.disk"),
    ],
)
async def test_bad_resource_limits(api: Api, limits: dict[str, str], field: str) -> None:
    r = await api.client.post(f"{BASE}/sandboxes", json={**BODY, "resourceLimits": limits}, headers=KEY)
    os_error(r, 400, "INVALID_REQUEST", field)


async def test_resource_limits_quantities(api: Api) -> None:
    out = await create(api, resourceLimits={"cpu": "1.5", "memory": "1G"})
    native = await running(api, out["id"])
    assert native["cpu"] == 1.5 and native["memory_mb"] == 954  # 10^9 bytes, rounded up to MiB


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"metadata": {"opensandbox.io/owner": "x"}}, "metadata.opensandbox.io/owner"),
        ({"metadata": {"bad key": "x"}}, "metadata.bad key"),
        ({"metadata": {"k": "v" * 64}}, "metadata.k"),
        ({"metadata": {"k": "-v"}}, "metadata.k"),
        ({"foo": 1}, "foo"),
        ({"image": {"uri": "debian", "tag": "x"}}, "image.tag"),
        ({"platform": {"os": "linux", "arch": "s390x"}}, "platform.arch"),
        ({"platform": {"os": "linux", "arch": "arm64" if host_arch() == "amd64" else "amd64"}}, "platform.arch"),
        ({"platform": {"os": "windows", "arch": host_arch()}}, "platform.os"),
        ({"entrypoint": []}, "entrypoint"),
        ({"entrypoint": None}, "entrypoint"),
        ({"snapshotId": "snp_01hzzzzzzzzzzzzzzzzzzzzzzz"}, "image"),  # image and snapshotId
        ({"env": {"1A": "x"}}, "env"),
        ({"resourceRequests": {"cpu": "1"}}, "resourceRequests"),
        ({"credentialProxy": {"enabled": True}}, "credentialProxy.enabled"),
        ({"lifecycle": {"preStart": {}}}, "lifecycle"),
        ({"extensions": {"access.renew.extend.seconds": "600"}}, "extensions.access.renew.extend.seconds"),
        ({"extensions": {"bad key!": "x"}}, "extensions"),
        ({"networkPolicy": {"defaultAction": "maybe"}}, "networkPolicy.defaultAction"),
        ({"networkPolicy": {"egress": [{"action": "allow", "target": "not a domain"}]}}, "networkPolicy.egress[0]"),
        ({"volumes": [{"name": "v", "mountPath": "/data", "ossfs": {"bucket": "b"}}]}, "volumes[0].ossfs"),
        ({"volumes": [{"name": "V!", "mountPath": "/data", "pvc": {"claimName": "v"}}]}, "volumes[0].name"),
        ({"volumes": [{"name": "v", "mountPath": "/data", "host": {"path": "/srv"}}]}, "volumes[0].host.path"),
        (
            {"volumes": [{"name": "v", "mountPath": "/data", "pvc": {"claimName": "v", "createIfNotExists": False}}]},
            "volumes[0].pvc.claimName",
        ),
        (
            {"volumes": [{"name": "v", "mountPath": "/data", "pvc": {"claimName": "v", "storageClass": "ssd"}}]},
            "volumes[0].pvc.storageClass",
        ),
        ({"volumes": [{"name": "v", "mountPath": "/proc/x", "pvc": {"claimName": "v"}}]}, "volumes[0].mountPath"),
    ],
)
async def test_refused_fields_name_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    r = await api.client.post(f"{BASE}/sandboxes", json={**BODY, **body}, headers=KEY)
    os_error(r, 400, "INVALID_REQUEST", field)
    assert not api.runtime.sandboxes and not api.runtime.volumes  # nothing was made


async def test_pvc_volume_is_a_named_volume_made_on_demand(api: Api) -> None:
    volume = {"name": "data", "mountPath": "/data", "pvc": {"claimName": "cache", "storage": "64Mi"}}
    out = await create(api, volumes=[volume])
    native = await running(api, out["id"])
    assert native["volumes"] == [{"type": "volume", "name": "cache", "mount_path": "/data", "read_only": False}]
    listed = (await api.client.get("/api/v1/volumes")).json()
    assert [(v["name"], v["size_mb"]) for v in listed["items"]] == [("cache", 64)]
    again = await create(api, volumes=[{**volume, "readOnly": True}])  # exists now: mounted, not made again
    assert (await running(api, again["id"]))["volumes"][0]["read_only"] is True


async def test_another_projects_sandbox_is_not_found(api: Api) -> None:
    out = await create(api)
    await running(api, out["id"])
    other = await other_project_key(api)
    sid = out["id"]
    for method, path in [
        ("GET", f"/sandboxes/{sid}"),
        ("DELETE", f"/sandboxes/{sid}"),
        ("POST", f"/sandboxes/{sid}/pause"),
        ("POST", f"/sandboxes/{sid}/resume"),
        ("GET", f"/sandboxes/{sid}/endpoints/44772"),
        ("GET", f"/sandboxes/{sid}/endpoints/8080"),
        ("POST", f"/sandboxes/{sid}/snapshots"),
    ]:
        os_error(await api.client.request(method, BASE + path, headers=other), 404, "SANDBOX_NOT_FOUND")
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = await api.client.post(f"{BASE}/sandboxes/{sid}/renew-expiration", json={"expiresAt": soon}, headers=other)
    os_error(r, 404, "SANDBOX_NOT_FOUND")
    os_error(await api.client.patch(f"{BASE}/sandboxes/{sid}/metadata", json={"a": "b"}, headers=other), 404)
    listed = (await api.client.get(f"{BASE}/sandboxes", headers=other)).json()
    assert listed["items"] == [] and listed["pagination"]["totalItems"] == 0
    assert (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()["status"]["state"] == "running"  # untouched
    snap = (await api.client.post(f"{BASE}/sandboxes/{sid}/snapshots", json={}, headers=KEY)).json()
    os_error(await api.client.get(f"{BASE}/snapshots/{snap['id']}", headers=other), 404, "SNAPSHOT_NOT_FOUND")
    os_error(await api.client.delete(f"{BASE}/snapshots/{snap['id']}", headers=other), 404, "SNAPSHOT_NOT_FOUND")
    r = await api.client.post(
        f"{BASE}/sandboxes", json={**BODY, "snapshotId": snap["id"], "image": None}, headers=other
    )
    os_error(r, 404, "SNAPSHOT_NOT_FOUND")


async def test_list_filters_and_pages(api: Api) -> None:
    ids = [(await create(api, metadata={"batch": "b1", "n": str(i)}))["id"] for i in range(5)]
    await create(api, metadata={"batch": "b2"})
    for sid in ids:
        await running(api, sid)
    await api.client.post(f"{BASE}/sandboxes/{ids[0]}/pause", headers=KEY)
    r = await api.client.get(
        f"{BASE}/sandboxes", params={"metadata": "batch=b1", "pageSize": 2, "page": 2}, headers=KEY
    )
    body = r.json()
    assert [s["id"] for s in body["items"]] == ids[2:4]
    assert body["pagination"] == {"page": 2, "pageSize": 2, "totalItems": 5, "totalPages": 3, "hasNextPage": True}
    r = await api.client.get(f"{BASE}/sandboxes", params={"metadata": "batch=b1&n=3"}, headers=KEY)
    assert [s["id"] for s in r.json()["items"]] == [ids[3]]
    params: list[tuple[str, str | int | float | bool | None]] = [("metadata", "batch=b1"), ("state", "Paused")]
    r = await api.client.get(f"{BASE}/sandboxes", params=params, headers=KEY)
    assert [s["id"] for s in r.json()["items"]] == [ids[0]] and r.json()["items"][0]["status"]["state"] == "Paused"
    params = [("metadata", "batch=b1"), ("state", "Running"), ("state", "Paused")]
    assert r.json()["pagination"]["totalItems"] == 1
    assert (await api.client.get(f"{BASE}/sandboxes", params=params, headers=KEY)).json()["pagination"][
        "totalItems"
    ] == 5
    os_error(
        await api.client.get(f"{BASE}/sandboxes", params={"state": "Sleeping"}, headers=KEY), 400, mentions="state"
    )
    os_error(await api.client.get(f"{BASE}/sandboxes", params={"pageSize": 0}, headers=KEY), 400, mentions="pageSize")
    os_error(await api.client.get(f"{BASE}/sandboxes", params={"metadata": "novalue"}, headers=KEY), 400)


async def test_pause_resume_renew_patch_delete(api: Api) -> None:
    sid = (await create(api, metadata={"keep": "1", "drop": "1"}))["id"]
    await running(api, sid)
    r = await api.client.post(f"{BASE}/sandboxes/{sid}/pause", headers=KEY)
    assert r.status_code == 202 and r.content == b"" and sid in api.runtime.paused
    assert (await api.client.get(f"{BASE}/sandboxes/{sid}", headers=KEY)).json()["status"]["state"] == "Paused"
    r = await api.client.post(f"{BASE}/sandboxes/{sid}/resume", headers=KEY)
    assert r.status_code == 202 and sid not in api.runtime.paused
    when = datetime.now(UTC) + timedelta(hours=2)
    r = await api.client.post(
        f"{BASE}/sandboxes/{sid}/renew-expiration", json={"expiresAt": when.isoformat()}, headers=KEY
    )
    assert r.status_code == 200, r.text
    got = datetime.fromisoformat(r.json()["expiresAt"])
    assert timedelta(0) <= got - when < timedelta(seconds=2)
    native = (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()
    assert datetime.fromisoformat(native["expires_at"]) == got
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    os_error(
        await api.client.post(f"{BASE}/sandboxes/{sid}/renew-expiration", json={"expiresAt": past}, headers=KEY),
        400,
        mentions="expiresAt",
    )
    os_error(
        await api.client.post(f"{BASE}/sandboxes/{sid}/renew-expiration", json={"expiresAt": "tomorrow"}, headers=KEY),
        400,
        mentions="expiresAt",
    )
    r = await api.client.patch(f"{BASE}/sandboxes/{sid}/metadata", json={"drop": None, "new": "2"}, headers=KEY)
    assert r.status_code == 200 and r.json()["metadata"] == {"keep": "1", "new": "2"}
    assert (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()["metadata"] == {"keep": "1", "new": "2"}
    os_error(
        await api.client.patch(f"{BASE}/sandboxes/{sid}/metadata", json={"opensandbox.io/x": "1"}, headers=KEY),
        400,
        mentions="opensandbox.io/",
    )
    os_error(await api.client.patch(f"{BASE}/sandboxes/{sid}/metadata", json={"k": 5}, headers=KEY), 400)
    r = await api.client.delete(f"{BASE}/sandboxes/{sid}", headers=KEY)
    assert r.status_code == 204 and sid not in api.runtime.sandboxes
    got = (await api.client.get(f"{BASE}/sandboxes/{sid}", headers=KEY)).json()
    assert got["status"]["state"] == "Terminated" and got["status"]["reason"] == "user_delete"
    os_error(await api.client.post(f"{BASE}/sandboxes/{sid}/pause", headers=KEY), 409)


async def test_endpoints(api: Api) -> None:
    out = await create(api)
    sid = out["id"]
    native = (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()
    # Answered at once, pending or not, with the sandbox's token for that API.
    for port, api_name, header in [(44772, EXECD, "X-EXECD-ACCESS-TOKEN"), (18080, EGRESS, "OPENSANDBOX-EGRESS-AUTH")]:
        r = await api.client.get(
            f"{BASE}/sandboxes/{sid}/endpoints/{port}", params={"use_server_proxy": "false"}, headers=KEY
        )
        assert r.status_code == 200, r.text
        assert r.json() == {
            "endpoint": f"sandboxd.test/opensandbox/sandboxes/{sid}/proxy/{port}",
            "headers": {header: access_token(SERVER_KEY, api_name, sid, native["traffic_token"])},
        }
    await running(api, sid)
    r = await api.client.get(f"{BASE}/sandboxes/{sid}/endpoints/8080", headers=KEY)
    assert r.status_code == 200, r.text
    assert r.json()["endpoint"].endswith(f"/api/v1/sandboxes/{sid}/ports/8080/") and "://" not in r.json()["endpoint"]
    assert r.json()["headers"] == {"X-Sandbox-Token": native["traffic_token"]}
    assert (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()["ports"] == [8080]
    os_error(await api.client.get(f"{BASE}/sandboxes/{sid}/endpoints/70000", headers=KEY), 400, mentions="port")
    os_error(await api.client.get(f"{BASE}/sandboxes/nope/endpoints/44772", headers=KEY), 404)


async def test_snapshots_and_create_from_one(api: Api) -> None:
    sid = (await create(api))["id"]
    await running(api, sid)
    r = await api.client.post(f"{BASE}/sandboxes/{sid}/snapshots", json={"name": "first"}, headers=KEY)
    assert r.status_code == 202, r.text
    snap = r.json()
    assert snap["sandboxId"] == sid and snap["name"] == "first" and snap["status"]["state"] == "Ready"
    assert (await api.client.get(f"{BASE}/snapshots/{snap['id']}", headers=KEY)).json() == snap
    second = (await api.client.post(f"{BASE}/sandboxes/{sid}/snapshots", headers=KEY)).json()
    listed = (await api.client.get(f"{BASE}/snapshots", params={"sandboxId": sid, "pageSize": 1}, headers=KEY)).json()
    assert listed["pagination"]["totalItems"] == 2 and listed["pagination"]["hasNextPage"] is True
    named = (await api.client.get(f"{BASE}/snapshots", params={"name": "first"}, headers=KEY)).json()
    assert [s["id"] for s in named["items"]] == [snap["id"]]
    assert (await api.client.get(f"{BASE}/snapshots", params={"state": "Creating"}, headers=KEY)).json()["items"] == []
    body = {k: v for k, v in BODY.items() if k != "image"}
    r = await api.client.post(f"{BASE}/sandboxes", json={**body, "snapshotId": snap["id"]}, headers=KEY)
    assert r.status_code == 202, r.text
    restored = await running(api, r.json()["id"])
    got = (await api.client.get(f"{BASE}/sandboxes/{restored['id']}", headers=KEY)).json()
    assert got["snapshotId"] == snap["id"] and "image" not in got
    assert (await api.client.delete(f"{BASE}/snapshots/{second['id']}", headers=KEY)).status_code == 204
    os_error(await api.client.get(f"{BASE}/snapshots/{second['id']}", headers=KEY), 404)
    r = await api.client.post(f"{BASE}/sandboxes", json={**body, "snapshotId": "nope"}, headers=KEY)
    os_error(r, 400, mentions="snapshotId")


async def test_metrics_events_are_accepted(api: Api) -> None:
    event = {"eventType": "sandbox.create", "createDurationMs": 17, "success": True, "sandboxId": "x", "image": "d"}
    assert (await api.client.post(f"{BASE}/metrics/events", json=event, headers=KEY)).status_code == 204
    async with api.anonymous() as anon:
        os_error(await anon.post(f"{BASE}/metrics/events", json=event), 401, "MISSING_API_KEY")


async def test_stopped_is_paused_and_resume_starts_it(api: Api) -> None:
    """The native API's stop: OpenSandbox has no such state; it is Paused, and resume brings it back."""
    sid = (await create(api))["id"]
    await running(api, sid)
    assert (await api.client.post(f"/api/v1/sandboxes/{sid}/stop")).status_code == 200
    got = (await api.client.get(f"{BASE}/sandboxes/{sid}", headers=KEY)).json()
    assert got["status"]["state"] == "Paused" and got["status"]["reason"].startswith("stopped")
    assert (await api.client.post(f"{BASE}/sandboxes/{sid}/resume", headers=KEY)).status_code == 202
    assert (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()["status"]["state"] == "running"


async def test_template_id_names_a_template(api: Api) -> None:
    body = {k: v for k, v in BODY.items() if k != "image"}
    r = await api.client.post(f"{BASE}/sandboxes", json={**body, "templateId": "no-such-template"}, headers=KEY)
    assert r.status_code in (400, 404), r.text
    assert "no-such-template" in os_error(r, r.status_code)["message"]
    r = await api.client.post(f"{BASE}/sandboxes", json={**BODY, "templateId": "t"}, headers=KEY)
    os_error(r, 400, mentions="exactly one of image, snapshotId and templateId")
