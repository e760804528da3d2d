"""OpenSandbox's egress sidecar API served by sandboxd over the native egress policy, driven by the
official SDK's egress client and by raw httpx; each policy is proven by connecting from inside the
sandbox to a test host on "the internet"."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opensandbox.models.sandboxes import NetworkRule
from opensandbox.sync.adapters.egress_adapter import EgressAdapterSync

from sandboxd import Sandbox
from sandboxd.api.facades.opensandbox.tokens import EGRESS, EGRESS_HEADER, EXECD, access_token
from tests.conftest import InternetHost, Server
from tests.facades.test_opensandbox_execd import base, config, endpoint
from tests.test_isolation import connect


@pytest.fixture(scope="module")
def sb(server: Server) -> Iterator[Sandbox]:
    with server.create(memory_mb=256, timeout=600) as sandbox:
        yield sandbox


@pytest.fixture
def egress(server: Server, sb: Sandbox) -> Iterator[httpx.Client]:
    token = access_token(server.key, EGRESS, sb.id, sb.traffic_token)
    with httpx.Client(base_url=base(server, sb, 18080), headers={EGRESS_HEADER: token}, timeout=60) as client:
        yield client


def native_policy(server: Server, sb: Sandbox) -> object:
    with server.client() as http:
        return http.get(f"/api/v1/sandboxes/{sb.id}").json()["egress"]


def test_sdk_get_patch_delete_policy(server: Server, sb: Sandbox, test_host: InternetHost) -> None:
    target = f"{test_host.ADDRESS}/32"
    with config(server) as conf:
        client = EgressAdapterSync(conf, endpoint(server, sb, 18080, EGRESS, EGRESS_HEADER))
        policy = client.get_policy()
        assert policy.default_action == "allow" and not policy.egress
        assert connect(sb, test_host.ADDRESS, test_host.port).startswith("hello")

        client.patch_rules(
            [NetworkRule(action="deny", target=test_host.ADDRESS), NetworkRule(action="deny", target="example.com")]
        )
        assert connect(sb, test_host.ADDRESS, test_host.port).startswith("refused")
        policy = client.get_policy()
        assert [(r.action, r.target) for r in policy.egress or []] == [("deny", target), ("deny", "example.com")]
        assert native_policy(server, sb) == {
            "mode": "custom",
            "allowed_domains": [],
            "allowed_cidrs": [],
            "rules": [{"action": "deny", "target": target}, {"action": "deny", "target": "example.com"}],
            "default_action": "allow",
        }

        # Merge: the incoming rule for a target replaces the one there; the others stay.
        client.patch_rules([NetworkRule(action="allow", target=target)])
        assert connect(sb, test_host.ADDRESS, test_host.port).startswith("hello")
        assert [(r.action, r.target) for r in client.get_policy().egress or []] == [
            ("allow", target),
            ("deny", "example.com"),
        ]

        client.delete_rules([target, "example.com", "not-there.example.org"])
        policy = client.get_policy()
        assert policy.default_action == "allow" and not policy.egress
        assert connect(sb, test_host.ADDRESS, test_host.port).startswith("hello")
        assert native_policy(server, sb)["mode"] == "allow_all"  # type: ignore[index]


def test_deny_default_is_kept_by_a_patch(server: Server, test_host: InternetHost) -> None:
    with server.create(memory_mb=128, timeout=120, egress={"mode": "custom", "allowed_domains": ["example.com"]}) as sb:
        token = access_token(server.key, EGRESS, sb.id, sb.traffic_token)
        url = f"{base(server, sb, 18080)}/policy"
        got = httpx.get(url, headers={EGRESS_HEADER: token}).json()
        assert got["mode"] == "custom" and got["policy"] == {
            "defaultAction": "deny",
            "egress": [{"action": "allow", "target": "example.com"}],
        }
        assert connect(sb, test_host.ADDRESS, test_host.port).startswith("refused")
        patched = httpx.patch(
            url, headers={EGRESS_HEADER: token}, json=[{"action": "allow", "target": test_host.ADDRESS}]
        )
        assert patched.status_code == 200 and patched.json()["policy"]["defaultAction"] == "deny"
        assert connect(sb, test_host.ADDRESS, test_host.port).startswith("hello")


def test_egress_gate_and_validation(server: Server, sb: Sandbox, egress: httpx.Client) -> None:
    url = f"{base(server, sb, 18080)}/policy"
    assert httpx.get(url).status_code == 401
    execd_token = access_token(server.key, EXECD, sb.id, sb.traffic_token)
    wrong_api = httpx.get(url, headers={EGRESS_HEADER: execd_token})
    assert wrong_api.status_code == 401 and set(wrong_api.json()) == {"code", "message"}
    assert httpx.patch(url, headers={"OPEN-SANDBOX-API-KEY": server.key}, json=[]).status_code == 401
    before = native_policy(server, sb)
    for body, field in (
        ([{"action": "allow", "target": "not a domain"}], "target"),
        ([{"action": "maybe", "target": "example.com"}], "action"),
        ([{"action": "allow", "target": "example.com", "port": 443}], "port"),
        ({"action": "allow", "target": "example.com"}, "list"),
        ([{"action": "allow", "target": "2001:db8::/32"}], "target"),
    ):
        refused = egress.patch("/policy", json=body)
        assert refused.status_code == 400 and field in refused.json()["message"].lower(), (body, refused.text)
    assert egress.request("DELETE", "/policy", json=["*"]).status_code == 400
    assert native_policy(server, sb) == before  # nothing refused was applied
    inside = egress.patch("/policy", json=[{"action": "allow", "target": "*.example.com"}])
    assert inside.status_code == 200 and inside.json()["mode"] == "custom"
    assert egress.request("DELETE", "/policy", json=["*.example.com"]).json()["mode"] == "allow_all"
    assert egress.get("/credential-vault").status_code == 404
