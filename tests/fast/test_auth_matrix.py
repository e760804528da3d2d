"""The auth matrix, generated from the app's route table (every HTTP and WebSocket route, plus the port
proxy's path route, which is middleware): a route added later is in it, or this test fails until it is
listed as public. On both stores.

Per route: no key, a revoked key, an expired key: 401; a read-only key: 403 on every write (before the
body is read: a body that is not JSON would be a 400) and admitted on reads; keys of another project
(an organization-wide admin of another organization, and a project admin of a sibling project): 404
on every route that addresses an object of project A, and lists show none of A's objects.

Explicit exceptions, each a rule of its own: organizations and /metrics are the operator's (403 to
every other key, whether or not the object exists); tenancy routes need admin (a read key gets 403
on their GETs too); the port proxy admits by traffic token as well as by key, so a request without
an admitting key is 404, the answer a sandbox that does not exist gets.
"""

from __future__ import annotations

import io
import re
import socket
import tarfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from starlette.routing import Mount

from sandboxd.api import facades
from sandboxd.domain import DEFAULT_ORG, Scope, utcnow
from sandboxd.services.auth import new_key
from sandboxd.store.sql import open_store
from tests.fast.conftest import Api, error

pytestmark = pytest.mark.anyio

PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/docs/assets", "/redoc"}
OPERATOR_ONLY = ("/metrics", "/api/v1/orgs")
ADMIN_ONLY = ("/api/v1/projects", "/api/v1/keys", *OPERATOR_ONLY)
PROXY = "/api/v1/sandboxes/{sandbox_id}/ports/{port}/{rest}"
# Routes that make something in the caller's own project: another project's key addresses nothing
# of A's there (POST /keys does: its body names A's project).
CREATES_OWN = {
    ("POST", "/api/v1/sandboxes"),
    ("POST", "/api/v1/templates"),
    ("POST", "/api/v1/projects"),
    ("POST", "/api/v1/images/pull"),
    ("POST", "/api/v1/images/import"),
    ("POST", "/api/v1/volumes"),
    ("POST", "/api/v1/pools"),
}
# Shared by every project: the operator's runtimes; gc, which removes only what nothing references.
SHARED = {("POST", "/api/v1/runtimes/{runtime}/build"), ("POST", "/api/v1/images/gc")}
# Refused by the key's role before any lookup (a project's key never deletes projects): a 403 alike
# for A's object and for one that does not exist, so it confirms nothing.
BY_ROLE = {("sibling", "DELETE", "/api/v1/projects/{project_id}")}
UNKNOWN = {"org_id": "org_" + "0" * 26, "project_id": "prj_" + "0" * 26}
NOT_JSON = b"{this is not json"


def rootfs_tar() -> bytes:
    """A rootfs of one file: enough to be an image."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("etc/hostname")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"alpha\n"))
    return out.getvalue()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on return: a connect is refused at once


@dataclass
class World:
    api: Api
    params: dict[str, str]  # path parameter -> A's object
    a_ids: list[str]  # what no list may show another project
    keys: dict[str, str]  # case -> token

    def body(self, method: str, path: str) -> dict[str, Any]:
        p = self.params
        bodies: dict[tuple[str, str], dict[str, Any]] = {
            ("POST", "/api/v1/keys"): {"json": {"name": "k", "scopes": ["read"], "project_id": p["project_id"]}},
            ("POST", "/api/v1/orgs"): {"json": {"name": "neworg"}},
            ("POST", "/api/v1/projects"): {"json": {"name": "newproject"}},
            ("POST", "/api/v1/sandboxes"): {"json": {}},
            ("POST", "/api/v1/templates"): {"json": {"name": "other", "steps": []}},
            ("POST", "/api/v1/sandboxes/{sandbox_id}/commands"): {"json": {"command": "true"}},
            ("POST", "/api/v1/sandboxes/{sandbox_id}/commands/stream"): {"json": {"command": "true"}},
            ("PUT", "/api/v1/sandboxes/{sandbox_id}/egress"): {"json": {"mode": "deny_all"}},
            ("POST", "/api/v1/sandboxes/{sandbox_id}/files/mkdir"): {"json": {"path": "/tmp/d"}},
            ("POST", "/api/v1/sandboxes/{sandbox_id}/files/move"): {
                "json": {"source": "/tmp/f", "destination": "/tmp/g"}
            },
            ("POST", "/api/v1/sandboxes/{sandbox_id}/ports"): {"json": {"port": 9000}},
            ("POST", "/api/v1/sandboxes/{sandbox_id}/processes/{process_id}/signal"): {"json": {"signal": 15}},
            ("POST", "/api/v1/sandboxes/{sandbox_id}/processes/{process_id}/stdin"): {"json": {"data": "x"}},
            ("POST", "/api/v1/sandboxes/{sandbox_id}/timeout"): {"json": {"timeout": 600}},
            ("PUT", "/api/v1/sandboxes/{sandbox_id}/files"): {"content": b"x"},
            ("PUT", "/api/v1/sandboxes/{sandbox_id}/archive"): {"content": b""},
            # Loopback, a port nothing serves, and refused by the outbound rules before any packet.
            ("POST", "/api/v1/images/pull"): {"json": {"reference": "127.0.0.1:9/none/x:1"}},
            ("POST", "/api/v1/images/import"): {"content": rootfs_tar()},
            ("POST", "/api/v1/volumes"): {"json": {"name": "another", "size_mb": 16}},
            ("POST", "/api/v1/pools"): {"json": {"target": 0}},
            ("PATCH", "/api/v1/pools/{pool_id}"): {"json": {"target": 0}},
        }
        return bodies.get((method, path), {})

    def url(self, path: str, params: dict[str, str] | None = None) -> str:
        values = {**self.params, **(params or {})}
        if path.startswith("/api/v1/images/"):  # {name:path}: an image's name, not a template's
            path = path.replace("{name:path}", values["image"])
        url = re.sub(r"\{(\w+)\}", lambda m: values[m[1]], path)
        if path == "/api/v1/images/import":
            url += "?name=another"
        if path == "/api/v1/events":  # every event kept, then the end (a followed stream has none)
            url += "?follow=false&last_event_id=0"
        needs_path = ("/files", "/files/list", "/files/stat", "/archive")
        if path.startswith("/api/v1/sandboxes/{sandbox_id}") and path.endswith(needs_path):
            url += "?path=" + ("/" if path.endswith("/list") else "/etc/hostname")
        return url


async def world(api: Api) -> World:
    """Project A (alpha, in the default organization) with one of everything, made through the API;
    its keys of every kind; and the keys of two other projects."""
    c = api.client
    alpha = (await c.post("/api/v1/projects", json={"name": "alpha"})).json()
    gamma = (await c.post("/api/v1/projects", json={"name": "gamma"})).json()
    beta = (await c.post("/api/v1/orgs", json={"name": "beta"})).json()

    async def key(scopes: list[str], **where: str) -> dict[str, Any]:
        r = await c.post("/api/v1/keys", json={"name": "k", "scopes": scopes, **where})
        assert r.status_code == 201, r.text
        return dict(r.json())

    admin = await key(["admin"], project_id=alpha["id"])
    read = await key(["read"], project_id=alpha["id"])
    revoked = await key(["admin"], project_id=alpha["id"])
    assert (await c.delete(f"/api/v1/keys/{revoked['id']}")).status_code == 200
    # An expiry cannot be set in the past through the API: written to the store directly.
    record, expired = new_key("old", DEFAULT_ORG, alpha["id"], [Scope.ADMIN], utcnow() - timedelta(seconds=1))
    store = await open_store(api.settings.resolved_database_url())
    try:
        await store.create_key(record)
    finally:
        await store.close()
    other_org = await key(["admin"], org_id=beta["id"])
    sibling = await key(["admin"], project_id=gamma["id"])

    a = {"authorization": f"Bearer {admin['key']}"}
    port = closed_port()
    r = await c.post("/api/v1/sandboxes", json={"ports": [port]}, headers=a)
    assert r.status_code == 201, r.text
    sandbox = r.json()
    r = await c.post(
        f"/api/v1/sandboxes/{sandbox['id']}/commands", json={"command": "sleep 600", "background": True}, headers=a
    )
    assert r.status_code in (200, 201, 202), r.text
    process = r.json()
    r = await c.post(
        "/api/v1/templates", json={"name": "tpl-alpha", "steps": [{"type": "env", "env": {"A": "1"}}]}, headers=a
    )
    assert r.status_code == 202, r.text
    r = await c.post("/api/v1/images/import?name=app-alpha", content=rootfs_tar(), headers=a)
    assert r.status_code in (200, 201), r.text
    # A volume of the same name as the template: {name} addresses both.
    r = await c.post("/api/v1/volumes", json={"name": "tpl-alpha", "size_mb": 16}, headers=a)
    assert r.status_code == 201, r.text
    r = await c.post(f"/api/v1/sandboxes/{sandbox['id']}/snapshots", json={}, headers=a)
    assert r.status_code == 201, r.text
    snapshot = r.json()
    r = await c.post("/api/v1/pools", json={"target": 0}, headers=a)
    assert r.status_code == 201, r.text
    pool = r.json()
    params = {
        "sandbox_id": sandbox["id"],
        "snapshot_id": snapshot["id"],
        "process_id": process.get("process_id") or process["id"],
        "port": str(port),
        "name": "tpl-alpha",
        "version": "1",
        "runtime": "python3.11",
        "org_id": DEFAULT_ORG,
        "project_id": alpha["id"],
        "key_id": read["id"],
        "rest": "index.html",
        "image": "app-alpha",
        "pool_id": pool["id"],
        "session_id": "term_none",  # a terminal session: refused alike whether it exists or not
    }
    keys = {
        "none": "",
        "revoked": revoked["key"],
        "expired": expired,
        "read": read["key"],
        "other_org": other_org["key"],
        "sibling": sibling["key"],
        "admin": admin["key"],
    }
    a_ids = [sandbox["id"], params["process_id"], "tpl-alpha", read["id"], admin["id"], alpha["id"], "app-alpha"]
    a_ids.append(snapshot["id"])
    a_ids.append(pool["id"])
    return World(api, params, a_ids, keys)


def routes(api: Api) -> tuple[list[tuple[str, str]], list[str]]:
    """(method, path) of every HTTP route that needs a key, and the WebSocket routes; fails on a
    route that is neither public nor of a kind this matrix knows."""
    http, websockets = [], []
    for context in iter_route_contexts(api.app.routes):
        route, path = context.original_route, context.path
        assert path is not None
        if path in PUBLIC:
            continue
        if isinstance(route, Mount) and path in facades.FACADES:
            continue  # each facade has its own auth, and its own matrix (tests/facades/test_facade_auth_matrix.py)
        if isinstance(route, APIWebSocketRoute):
            websockets.append(path)
        elif isinstance(route, APIRoute):
            http += [(m, path) for m in sorted(set(route.methods or ()) - {"HEAD"})]
        else:
            raise AssertionError(f"a route this matrix does not cover: {type(route).__name__} {path}")
    return http, websockets


def headers(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


async def test_auth_matrix(api: Api) -> None:
    w = await world(api)
    http, websockets = routes(api)
    assert len(http) > 45 and websockets == ["/api/v1/sandboxes/{sandbox_id}/terminal"]
    checked = 0
    async with api.anonymous() as c:
        for method, path in [*http, ("GET", PROXY), ("POST", PROXY)]:
            url, body = w.url(path), w.body(method, path)
            for case in ("none", "revoked", "expired"):
                r = await c.request(method, url, headers=headers(w.keys[case]), **body)
                expected = 404 if path == PROXY else 401  # the proxy: as if there were no such sandbox
                assert r.status_code == expected, (case, method, path, r.text)
                checked += 1
            # read-only: writes refused before the body (not JSON) is read; reads admitted.
            read = headers(w.keys["read"])
            if method in ("GET", "HEAD"):
                r = await c.request(method, url, headers=read)
                if path.startswith(ADMIN_ONLY):
                    assert r.status_code == 403, (method, path, r.text)
                elif path == PROXY:
                    assert r.status_code == 502, (method, path, r.text)  # admitted; nothing listens
                else:
                    assert r.status_code < 400, (method, path, r.text)
            else:
                r = await c.request(method, url, headers=read, content=NOT_JSON)
                # The proxy: a read key does not admit a write, and unadmitted is the unknown's 404.
                assert r.status_code == (404 if path == PROXY else 403), (method, path, r.text)
            checked += 1
            # another project's keys
            for case in ("other_org", "sibling"):
                theirs = headers(w.keys[case])
                r = await c.request(method, url, headers=theirs, **body)
                if path.startswith(OPERATOR_ONLY) or (case, method, path) in BY_ROLE:
                    # Refused alike whether the object exists or not.
                    unknown = await c.request(method, w.url(path, UNKNOWN), headers=theirs, **body)
                    assert r.status_code == unknown.status_code == 403, (case, method, path, r.text)
                    assert error(r)["message"] == error(unknown)["message"]
                elif (method, path) in CREATES_OWN | SHARED:
                    assert r.status_code < 500, (case, method, path, r.text)
                elif "{" in path or (method, path) == ("POST", "/api/v1/keys"):
                    assert r.status_code == 404, (case, method, path, r.text)
                    if path != PROXY:
                        assert error(r)["code"].endswith("NOT_FOUND"), r.text
                else:  # a list: none of A's objects
                    assert r.status_code == 200, (case, method, path, r.text)
                    assert not [i for i in w.a_ids if i in r.text], (case, path, r.text)
                checked += 1
        # A's own key reaches its port: the proxy tries (and the fake's address refuses).
        r = await c.get(w.url(PROXY), headers=headers(w.keys["admin"]))
        assert r.status_code == 502, r.text

    for path in websockets:
        url = w.url(path)
        for case, status in (("none", 401), ("revoked", 401), ("expired", 401), ("read", 403)):
            result = await api.websocket(url, headers(w.keys[case]))
            assert result.status == status and not result.accepted, (case, path, result)
            checked += 1
        for case in ("other_org", "sibling"):
            result = await api.websocket(url, headers(w.keys[case]))
            assert result.accepted and result.close_code == 4404, (case, result)
            assert "SANDBOX_NOT_FOUND" in result.texts[0], result
            checked += 1
        mine = await api.websocket(url + "?argv=echo&argv=hi", headers(w.keys["admin"]))
        assert mine.accepted and any('"exit"' in t for t in mine.texts), mine

    # Nothing of A's was changed by anyone refused: its sandbox runs, its read key still works.
    r = await api.client.get(f"/api/v1/sandboxes/{w.params['sandbox_id']}", headers={"x-sandboxd-project": "alpha"})
    assert r.json()["status"]["state"] == "running"
    assert (await api.client.get(f"/api/v1/keys/{w.params['key_id']}")).json()["revoked_at"] is None
    assert checked >= 6 * (len(http) + 2)
