"""The tenancy routes and the auth points of the API, in-process: the real app and its lifespan over
httpx's ASGI transport, with a runtime that has no sandboxes (none is ever created here)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from sandboxd.api.app import create_app
from sandboxd.config import Settings
from sandboxd.runtimes.base import Liveness

pytestmark = pytest.mark.anyio
SERVER_KEY = "server-key-for-tests"
OTHER_SANDBOX = "sbx_" + "0" * 26


class IdleRuntime:
    """Starts, stops and sweeps: enough for a server that never runs a sandbox. Anything else is a
    test that strayed into the real-sandbox tier."""

    name = "idle"

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def sweep(self, known: set[str]) -> list[str]:
        return []

    async def liveness(self, sandbox_id: str, record: dict[str, Any]) -> Liveness:
        return Liveness.MISSING

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"the idle runtime has no {name}")  # isinstance(runtime, Protocol) asks too


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(data_dir=tmp_path, api_key=SERVER_KEY, reaper_interval=3600)
    app = create_app(settings, runtime=IdleRuntime())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandboxd.test") as c:
            c.headers["authorization"] = f"Bearer {SERVER_KEY}"
            yield c


def bearer(token: str, project: str | None = None) -> dict[str, str]:
    headers = {"authorization": f"Bearer {token}"}
    if project:
        headers["x-sandboxd-project"] = project
    return headers


async def make_key(c: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await c.post("/api/v1/keys", json={"name": "k", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_orgs_projects_keys_round_trip(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/orgs", json={"name": "acme"})
    assert r.status_code == 201, r.text
    org = r.json()
    assert org["created_at"].endswith("Z") or org["created_at"].endswith("+00:00")
    assert {o["name"] for o in (await client.get("/api/v1/orgs")).json()} == {"default", "acme"}
    assert (await client.get(f"/api/v1/orgs/{org['id']}")).json() == org

    key = await make_key(client, name="acme-admin", scopes=["admin"], org_id=org["id"], expires_in=3600)
    token = key.pop("key")
    assert token.startswith(f"sbx_{key['id']}_") and "secret_hash" not in key
    acme = bearer(token)
    projects = (await client.get("/api/v1/projects", headers=acme)).json()
    assert [p["name"] for p in projects] == ["default"]
    r = await client.post("/api/v1/projects", json={"name": "web"}, headers=acme)
    assert r.status_code == 201, r.text
    web = r.json()
    assert web["org_id"] == org["id"]

    # The secret is in the creation response only: list and get show neither it nor its hash.
    listed = (await client.get("/api/v1/keys", headers=acme)).json()
    got = (await client.get(f"/api/v1/keys/{key['id']}", headers=acme)).json()
    for shown in (*listed, got):
        assert "key" not in shown and "secret_hash" not in shown
        assert token.removeprefix(f"sbx_{key['id']}_") not in str(shown)
    assert got["last_used_at"] is not None and got["expires_at"] is not None

    r = await client.delete(f"/api/v1/projects/{web['id']}", headers=acme)
    assert r.status_code == 204
    r = await client.delete(f"/api/v1/keys/{key['id']}", headers=acme)  # revoking itself
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    r = await client.get("/api/v1/projects", headers=acme)
    assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED"
    assert (await client.delete(f"/api/v1/orgs/{org['id']}")).status_code == 204
    assert (await client.get(f"/api/v1/orgs/{org['id']}")).status_code == 404


async def test_validation_errors_name_the_field(client: httpx.AsyncClient) -> None:
    cases = [
        ("/api/v1/projects", {"name": "Bad Name"}, "name"),
        ("/api/v1/orgs", {"name": ""}, "name"),
        ("/api/v1/keys", {"name": "k", "scopes": ["root"]}, "scopes.0"),
        ("/api/v1/keys", {"name": "k", "scopes": []}, "scopes"),
        ("/api/v1/keys", {"name": "k", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ("/api/v1/keys", {"name": "k", "scopes": ["read"], "expires_at": "2100-01-01T00:00:00"}, "expires_at"),
        ("/api/v1/keys", {"name": "k", "scopes": ["read"], "expires_in": -5}, "expires_in"),
    ]
    for path, body, field in cases:
        r = await client.post(path, json=body)
        assert r.status_code == 400, (path, body, r.text)
        assert r.json()["field"] == field, (path, body, r.json())


async def test_who_may_do_what(client: httpx.AsyncClient) -> None:
    read = bearer((await make_key(client, scopes=["read"]))["key"])
    write = bearer((await make_key(client, scopes=["write"]))["key"])
    admin = bearer((await make_key(client, scopes=["admin"]))["key"])
    # A read key may list, not change; 403 before the body is even looked at.
    assert (await client.get("/api/v1/sandboxes", headers=read)).status_code == 200
    r = await client.post("/api/v1/sandboxes", content=b"not json", headers=read)
    assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN"
    r = await client.delete(f"/api/v1/sandboxes/{OTHER_SANDBOX}", headers=read)
    assert r.status_code == 403
    assert (await client.delete(f"/api/v1/sandboxes/{OTHER_SANDBOX}", headers=write)).status_code == 404
    # Tenancy is an admin's; organizations and metrics the operator's.
    for headers in (read, write):
        assert (await client.get("/api/v1/keys", headers=headers)).status_code == 403
        assert (await client.get("/api/v1/projects", headers=headers)).status_code == 403
    assert (await client.get("/api/v1/keys", headers=admin)).status_code == 200
    for headers in (read, write, admin):
        assert (await client.get("/api/v1/orgs", headers=headers)).status_code == 403
        assert (await client.get("/metrics", headers=headers)).status_code == 403
    assert (await client.get("/metrics")).status_code == 200


async def test_refused_keys_are_401_before_the_body(client: httpx.AsyncClient) -> None:
    key = await make_key(client, scopes=["write"])
    revoked = await make_key(client, scopes=["write"])
    await client.delete(f"/api/v1/keys/{revoked['id']}")
    wrong = key["key"][:-2] + ("AA" if not key["key"].endswith("AA") else "BB")
    for headers in (
        {"authorization": ""},
        bearer(wrong),
        bearer(revoked["key"]),
        bearer("sbx_key_" + "1" * 26 + "_" + "A" * 43),
        bearer("x" * 5000),
    ):
        # A body larger than any cap: refused by the key alone, it is never read.
        r = await client.post("/api/v1/sandboxes", content=b"x" * (64 << 20), headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"


async def test_project_header_and_project_keys(client: httpx.AsyncClient) -> None:
    other = (await client.post("/api/v1/projects", json={"name": "other"})).json()
    pkey = await make_key(client, scopes=["admin"], project_id=other["id"])
    mine = bearer(pkey["key"])
    assert [p["id"] for p in (await client.get("/api/v1/projects", headers=mine)).json()] == [other["id"]]
    # Naming another project (or a missing one) is the same 404; naming its own is fine.
    for ref in ("default", "prj_default", "missing"):
        r = await client.get("/api/v1/sandboxes", headers=bearer(pkey["key"], ref))
        assert r.status_code == 404 and r.json()["code"] == "PROJECT_NOT_FOUND", r.text
    assert (await client.get("/api/v1/sandboxes", headers=bearer(pkey["key"], "other"))).status_code == 200
    assert (await client.get("/api/v1/projects/prj_default", headers=mine)).status_code == 404
    r = await client.post("/api/v1/keys", json={"name": "x", "scopes": ["read"]}, headers=mine)
    assert r.status_code == 403  # an organization-wide key is not a project admin's to make
    # The operator (and organization-wide keys) pick a project by name or id.
    assert (await client.get("/api/v1/sandboxes", headers={"x-sandboxd-project": "other"})).status_code == 200
    assert (await client.get("/api/v1/sandboxes", headers={"x-sandboxd-project": "nope"})).status_code == 404


async def test_other_orgs_objects_are_not_found(client: httpx.AsyncClient) -> None:
    org = (await client.post("/api/v1/orgs", json={"name": "acme"})).json()
    acme = bearer((await make_key(client, scopes=["admin"], org_id=org["id"]))["key"])
    default_key = await make_key(client, scopes=["read"])
    for method, path in (
        ("GET", "/api/v1/projects/prj_default"),
        ("DELETE", "/api/v1/projects/prj_default"),
        ("GET", f"/api/v1/keys/{default_key['id']}"),
        ("DELETE", f"/api/v1/keys/{default_key['id']}"),
        ("GET", "/api/v1/keys?project_id=prj_default"),
    ):
        r = await client.request(method, path, headers=acme)
        assert r.status_code == 404, (method, path, r.text)
    r = await client.get("/api/v1/sandboxes", headers=bearer(acme["authorization"][7:], "prj_default"))
    assert r.status_code == 404


async def test_every_api_route_needs_a_key(client: httpx.AsyncClient, tmp_path: Path) -> None:
    """From the API's route table (its OpenAPI document), so a new route cannot be forgotten."""
    app = create_app(Settings(data_dir=tmp_path), runtime=IdleRuntime())
    table = [(m, p) for p, ops in app.openapi()["paths"].items() for m in ops if p.startswith(("/api/", "/metrics"))]
    assert len(table) > 25
    for method, route in table:
        path = re.sub(r"\{[a-z_]+\}", "1", route.replace("{sandbox_id}", OTHER_SANDBOX))
        r = await client.request(method.upper(), path, headers={"authorization": "Bearer nope"})
        assert r.status_code == 401, (method, route, r.status_code)


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_terminal_websocket_uses_the_same_check(tmp_path: Path) -> None:
    """httpx has no WebSocket client over ASGI: Starlette's test client, for this one door."""
    from starlette.testclient import TestClient, WebSocketDenialResponse

    app = create_app(Settings(data_dir=tmp_path, api_key=SERVER_KEY), runtime=IdleRuntime())
    url = f"/api/v1/sandboxes/{OTHER_SANDBOX}/terminal"
    with TestClient(app) as c:
        c.headers["authorization"] = f"Bearer {SERVER_KEY}"
        read = c.post("/api/v1/keys", json={"name": "r", "scopes": ["read"]}).json()["key"]
        write = c.post("/api/v1/keys", json={"name": "w", "scopes": ["write"]}).json()["key"]
        del c.headers["authorization"]
        for query, status in (("", 401), ("?api_key=bad", 401), (f"?api_key={read}", 403)):
            with pytest.raises(WebSocketDenialResponse) as denied, c.websocket_connect(url + query):
                pass
            assert denied.value.status_code == status, query
        with pytest.raises(WebSocketDenialResponse) as denied, c.websocket_connect(f"{url}?api_key={write}&project=x"):
            pass
        assert denied.value.status_code == 404
        # Admitted (by query or header): the route itself then looks for the sandbox.
        for target, headers in ((f"{url}?api_key={write}", {}), (url, {"authorization": f"Bearer {write}"})):
            with c.websocket_connect(target, headers=headers) as ws:
                assert "SANDBOX_NOT_FOUND" in ws.receive_text()
