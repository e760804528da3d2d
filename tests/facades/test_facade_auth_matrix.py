"""The facades' auth matrix, generated from each mounted facade sub-app's own route table (fast
tier: the real app over the fake runtime, both stores). A route added to a facade later is in it,
and fails here until it refuses a caller without a credential.

Per facade route, with no credential, a wrong one, a revoked key and an expired key: 401 in that
system's error body (OpenSandbox `{code, message}`, Vercel `{"error": {code, message}}`), for an
object that exists and for one that does not. OpenSandbox's execd and egress routes
(`/sandboxes/{id}/proxy/{44772|18080}/…`) admit by their per-sandbox access token only: an API key
in its place (in either header), the other API's token and another sandbox's token are 401 too.
Vercel's PTY WebSocket admits by its per-session token only: refused before accept otherwise.
The native API's matrix is tests/fast/test_auth_matrix.py (it leaves the facades' mounts to this one).
"""

from __future__ import annotations

import json
import re
import types
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from starlette.routing import Mount

from sandboxd.api import facades
from sandboxd.api.facades.opensandbox.tokens import EGRESS, EGRESS_HEADER, EXECD, EXECD_HEADER, access_token
from sandboxd.api.facades.vercel import interactive
from sandboxd.domain import DEFAULT_ORG, Sandbox, Scope, utcnow
from sandboxd.services.auth import new_key
from sandboxd.store.sql import open_store
from tests.fast.conftest import SERVER_KEY, Api

pytestmark = pytest.mark.anyio

OS_KEY_HEADER = "OPEN-SANDBOX-API-KEY"
PROXY = re.compile(r"^/sandboxes/\{sandbox_id\}/proxy/(44772|18080)/")
UNKNOWN_SANDBOX = "sbx_" + "0" * 26
WRONG = "sk_" + "x" * 40  # the shape of a key, but no key's


@dataclass(frozen=True)
class Route:
    prefix: str  # the facade's mount
    method: str  # "WEBSOCKET" for a WebSocket route
    path: str  # the facade's own path

    @property
    def proxy(self) -> str | None:
        """44772 (execd) or 18080 (egress) for an OpenSandbox proxy route, else None."""
        found = PROXY.match(self.path) if self.prefix == "/opensandbox" else None
        return found[1] if found else None


def facade_routes(app: FastAPI) -> list[Route]:
    """Every route of every mounted facade; fails on a facade or a route kind this matrix does not know."""
    mounts = {}
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, Mount) and context.path in facades.FACADES:
            mounts[context.path] = route.app
    assert sorted(mounts) == sorted(facades.FACADES) == ["/opensandbox", "/vercel"], mounts
    found: list[Route] = []
    for prefix, sub in mounts.items():
        assert isinstance(sub, FastAPI), (prefix, sub)
        for context in iter_route_contexts(sub.routes):
            route, path = context.original_route, context.path
            assert path is not None
            if isinstance(route, APIWebSocketRoute):
                found.append(Route(prefix, "WEBSOCKET", path))
            elif isinstance(route, APIRoute):
                found += [Route(prefix, m, path) for m in sorted(set(route.methods or ()) - {"HEAD"})]
            else:
                raise AssertionError(
                    f"a facade route this matrix does not cover: {type(route).__name__} {prefix}{path}"
                )
    return found


@dataclass
class World:
    api: Api
    sandbox: dict[str, Any]  # the native record of A's sandbox (a Vercel session too)
    other: dict[str, Any]  # another sandbox of the same project
    keys: dict[str, str]  # case -> a credential that must not admit

    def url(self, route: Route, sandbox_id: str | None = None) -> str:
        sid = sandbox_id or self.sandbox["id"]
        values = {
            "sandbox_id": sid,
            "session_id": sid,
            "snapshot_id": "snp_" + "0" * 26,
            "command_id": "cmd_none",
            "port": "44772",
            "name": "alpha",
            "name_or_id": "alpha",
        }
        path = re.sub(r"\{(\w+)\}", lambda m: values[m[1]], route.path)
        return f"{route.prefix}{path}?teamId={DEFAULT_ORG}"


def headers(route: Route, credential: str) -> dict[str, str]:
    """The credential where this route's clients send theirs."""
    if not credential:
        return {}
    if route.prefix == "/vercel":
        return {"authorization": f"Bearer {credential}"}
    if route.proxy == "44772":
        return {EXECD_HEADER: credential}
    if route.proxy == "18080":
        return {EGRESS_HEADER: credential}
    return {OS_KEY_HEADER: credential}


def check_401(route: Route, r: httpx.Response, case: str) -> None:
    """A 401 in the route's system's own error body."""
    where = (case, route.method, route.prefix + route.path, r.status_code, r.text[:300])
    assert r.status_code == 401, where
    body = json.loads(r.content)
    if route.prefix == "/opensandbox":
        assert isinstance(body, dict) and set(body) == {"code", "message"}, where
        codes = (
            {"MISSING_ACCESS_TOKEN", "INVALID_ACCESS_TOKEN"} if route.proxy else {"MISSING_API_KEY", "INVALID_API_KEY"}
        )
        assert body["code"] in codes and body["message"], where
    else:
        assert isinstance(body, dict) and set(body) == {"error"}, where
        assert isinstance(body["error"], dict) and {"code", "message"} <= set(body["error"]), where
        assert body["error"]["code"] == "unauthorized" and body["error"]["message"], where


async def world(api: Api) -> World:
    c = api.client
    alpha = (await c.post("/api/v1/projects", json={"name": "alpha"})).json()

    async def key(**where: Any) -> dict[str, Any]:
        r = await c.post("/api/v1/keys", json={"name": "k", "scopes": ["admin"], **where})
        assert r.status_code == 201, r.text
        return dict(r.json())

    admin = await key(project_id=alpha["id"])
    revoked = await key(project_id=alpha["id"])
    assert (await c.delete(f"/api/v1/keys/{revoked['id']}")).status_code == 200
    # An expiry cannot be set in the past through the API: written to the store directly.
    record, expired = new_key("old", DEFAULT_ORG, alpha["id"], [Scope.ADMIN], utcnow() - timedelta(seconds=1))
    store = await open_store(api.settings.resolved_database_url())
    try:
        await store.create_key(record)
    finally:
        await store.close()
    a = {"authorization": f"Bearer {admin['key']}"}
    made = []
    for name in ("alpha", "beta"):  # a Vercel sandbox's session is a native sandbox with its label
        r = await c.post("/api/v1/sandboxes", json={"name": name, "metadata": {"vercel.sandbox": name}}, headers=a)
        assert r.status_code == 201, r.text
        made.append(r.json())
    sandbox, other = made
    assert sandbox["traffic_token"] and other["traffic_token"], sandbox
    keys = {"none": "", "wrong": WRONG, "revoked": revoked["key"], "expired": expired}
    return World(api, sandbox, other, keys | {"admin": admin["key"]})


async def test_facade_auth_matrix(api: Api) -> None:
    w = await world(api)
    routes = facade_routes(api.app)
    http = [r for r in routes if r.method != "WEBSOCKET"]
    sockets = [r for r in routes if r.method == "WEBSOCKET"]
    proxied = [r for r in http if r.proxy]
    assert len(http) > 60 and len(proxied) > 15, routes
    assert [(r.prefix, r.path) for r in sockets] == [
        ("/vercel", "/v2/sandboxes/sessions/{session_id}/interactive/connect")
    ]
    sid, other = w.sandbox["id"], w.other["id"]
    admin = w.keys["admin"]
    checked = 0
    async with api.anonymous() as c:
        for route in http:
            for case in ("none", "wrong", "revoked", "expired"):
                for target in (sid, UNKNOWN_SANDBOX):
                    r = await c.request(route.method, w.url(route, target), headers=headers(route, w.keys[case]))
                    check_401(route, r, f"{case} on {target}")
                    checked += 1
            if route.prefix == "/opensandbox" and not route.proxy:
                # The native header's key is not this API's credential.
                r = await c.request(route.method, w.url(route), headers={"authorization": f"Bearer {admin}"})
                check_401(route, r, "a key as Bearer")
                checked += 1
            if not route.proxy:
                continue
            api_name, header = (EXECD, EXECD_HEADER) if route.proxy == "44772" else (EGRESS, EGRESS_HEADER)
            wrong_api = EGRESS if api_name == EXECD else EXECD
            refused = {
                # An API key, valid for this sandbox's project, in place of the token, in any header.
                "key as token": {header: admin},
                "key in the lifecycle header": {OS_KEY_HEADER: admin},
                "key as Bearer": {"authorization": f"Bearer {admin}"},
                "server key as token": {header: SERVER_KEY},
                # Tokens that are not this sandbox's for this API.
                "another sandbox's token": {
                    header: access_token(SERVER_KEY, api_name, other, w.other["traffic_token"])
                },
                "the other API's token": {header: access_token(SERVER_KEY, wrong_api, sid, w.sandbox["traffic_token"])},
                "the traffic token": {header: w.sandbox["traffic_token"]},
                "the token in the other API's header": {
                    (EGRESS_HEADER if header == EXECD_HEADER else EXECD_HEADER): access_token(
                        SERVER_KEY, api_name, sid, w.sandbox["traffic_token"]
                    )
                },
            }
            for case, sent in refused.items():
                r = await c.request(route.method, w.url(route), headers=sent)
                check_401(route, r, case)
                checked += 1
            # The sandbox's own token on the other sandbox's path: refused too.
            mine = access_token(SERVER_KEY, api_name, sid, w.sandbox["traffic_token"])
            r = await c.request(route.method, w.url(route, other), headers={header: mine})
            check_401(route, r, "this sandbox's token on another's path")
            checked += 1

        # The token does admit (so the refusals above are the token's doing): ping and the policy.
        for port, api_name, header, path in (
            (44772, EXECD, EXECD_HEADER, "ping"),
            (18080, EGRESS, EGRESS_HEADER, "policy"),
        ):
            token = access_token(SERVER_KEY, api_name, sid, w.sandbox["traffic_token"])
            r = await c.get(f"/opensandbox/sandboxes/{sid}/proxy/{port}/{path}", headers={header: token})
            assert r.status_code == 200, (port, r.text)
        # And the keys that admit nothing above are refused for their own reason: a good key admits.
        r = await c.get("/opensandbox/v1/sandboxes", headers={OS_KEY_HEADER: admin})
        assert r.status_code == 200, r.text
        r = await c.get(
            f"/vercel/v2/sandboxes/sessions/{sid}?teamId={DEFAULT_ORG}", headers={"authorization": f"Bearer {admin}"}
        )
        assert r.status_code == 200, r.text

    # Vercel's PTY WebSocket: its token only, this session's, unexpired.
    fake = cast(Sandbox, types.SimpleNamespace(id=sid, traffic_token=w.sandbox["traffic_token"]))
    fake_other = cast(Sandbox, types.SimpleNamespace(id=other, traffic_token=w.other["traffic_token"]))
    expired_token = interactive.token(SERVER_KEY, fake, now=utcnow().timestamp() - interactive.TOKEN_SECONDS - 1)
    for route in sockets:
        url = w.url(route).split("?")[0]
        cases: dict[str, tuple[str, dict[str, str]]] = {
            "none": ("", {}),
            "a key as Bearer": ("", {"authorization": f"Bearer {admin}"}),
            "a key as token": (f"?token={admin}", {}),
            "the server key as token": (f"?token={SERVER_KEY}", {}),
            "a wrong token": ("?token=1999999999.00", {}),
            "an expired token": (f"?token={expired_token}", {}),
            "another session's token": (f"?token={interactive.token(SERVER_KEY, fake_other)}", {}),
            "the traffic token": (f"?token={w.sandbox['traffic_token']}", {}),
        }
        for case, (query, sent) in cases.items():
            result = await api.websocket(url + query, sent)
            assert not result.accepted and result.close_code == 4401, (case, route.path, result)
            checked += 1
        # The right token opens it: accepted, then a first frame that is not a start frame is refused.
        good = await api.websocket(
            url + f"?token={interactive.token(SERVER_KEY, fake)}", {}, [{"type": "websocket.receive", "text": "{"}]
        )
        assert good.accepted and good.close_code == 4400, good
    assert checked >= 8 * len(http) + 9 * len(proxied) + 8 * len(sockets)
