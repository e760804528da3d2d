"""Bad input gets a 4xx naming the field, and nothing is made: the API's and the services' own
checks, which need no sandbox (the image checks of the real runtime stay in tests/test_bad_input.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fast.conftest import Api, error

pytestmark = pytest.mark.anyio
MISSING = "sbx_" + "0" * 26


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"env": {"1BAD": "x"}}, "env", "invalid environment variable name"),
        ({"env": {"A-B": "x"}}, "env", "invalid environment variable name"),
        ({"cpu": 0}, "cpu", "greater than or equal to 0.01"),
        ({"cpu": 512}, "cpu", "at most"),
        ({"memory_mb": 1}, "memory_mb", "greater than or equal to 16"),
        ({"memory_mb": 10**9}, "memory_mb", "at most"),
        ({"pids": 2}, "pids", "greater than or equal to 16"),
        ({"pids": 10**9}, "pids", "at most"),
        ({"timeout": 0}, "timeout", "greater than or equal to 1"),
        ({"timeout": 10**9}, "timeout", "at most"),
        ({"cwd": "relative"}, "cwd", "absolute"),
        ({"cwd": "/a/../b"}, "cwd", ".."),
        ({"metadata": {"bad key!": "v"}}, "metadata", "invalid label key"),
        ({"entrypoint": []}, "entrypoint", "at least 1"),
        ({"unknown_field": 1}, "unknown_field", "Extra inputs"),
        ({"image": "no-such-image"}, "image", "not available"),
    ],
)
async def test_create_rejects_bad_fields(api: Api, body: dict[str, Any], field: str, words: str) -> None:
    r = await api.client.post("/api/v1/sandboxes", json=body)
    assert r.status_code == 400, r.text
    err = error(r)
    assert err["field"] == field and words in err["message"], err
    assert err["request_id"] == r.headers["X-Request-ID"]
    # Nothing was made: no record, nothing asked of the runtime.
    assert (await api.client.get("/api/v1/sandboxes")).json()["items"] == []
    assert api.runtime.sandboxes == {}


async def test_a_good_create_is_accepted(api: Api) -> None:
    """The table's counterpart: the same server makes a sandbox from a valid body (so the 400s
    above are about the fields, not a server that refuses everything)."""
    r = await api.client.post("/api/v1/sandboxes", json={"cpu": 0.5, "memory_mb": 256, "env": {"A_B": "x"}})
    assert r.status_code == 201, r.text
    assert r.json()["status"]["state"] == "running"
    assert list(api.runtime.sandboxes) == [r.json()["id"]]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/commands"),
        ("GET", "/files?path=/etc/hostname"),
        ("GET", "/processes"),
        ("GET", "/logs"),
    ],
)
async def test_unknown_sandbox_is_404(api: Api, method: str, path: str) -> None:
    kwargs: dict[str, Any] = {"json": {"command": "true"}} if method == "POST" else {}
    for sandbox_id in (MISSING, "sbx_missing"):
        r = await api.client.request(method, f"/api/v1/sandboxes/{sandbox_id}{path}", **kwargs)
        assert r.status_code == 404, (method, path, r.text)
        assert error(r)["code"] == "SANDBOX_NOT_FOUND"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "field"),
    [
        ("POST", "/commands", {"json": {"command": ""}}, "command"),
        ("POST", "/commands", {"json": {"command": "true", "env": {"=x": "1"}}}, "env"),
        ("POST", "/commands", {"json": {"command": "true", "timeout": -1}}, "timeout"),
        ("POST", "/commands", {"json": {"command": "true", "cwd": "../etc"}}, "cwd"),
        ("PUT", "/files?path=/tmp/x&mode=999", {"content": b"x"}, "mode"),
        ("PUT", "/files?path=tmp/x", {"content": b"x"}, "path"),
        ("POST", "/files/move", {"json": {"source": "/tmp/a", "destination": "/../b"}}, "destination"),
        ("GET", "/files/list?path=/etc/../..", {}, "path"),
    ],
)
async def test_command_and_file_input_errors(
    api: Api, method: str, path: str, kwargs: dict[str, Any], field: str
) -> None:
    sandbox = (await api.client.post("/api/v1/sandboxes", json={})).json()
    agent = api.runtime.sandboxes[sandbox["id"]]
    files_before, procs_before = dict(agent.files), dict(agent.procs)
    r = await api.client.request(method, f"/api/v1/sandboxes/{sandbox['id']}{path}", **kwargs)
    assert r.status_code == 400, (path, r.text)
    assert error(r)["field"] == field, (path, r.json())
    # Refused before the agent was asked anything.
    assert agent.files == files_before and agent.procs == procs_before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"name": "ok", "steps": [{"type": "frobnicate"}]}, "steps.0"),
        ({"name": "ok", "steps": [{"type": "copy", "path": "relative", "content": ""}]}, "steps.0.copy.path"),
        ({"name": "ok", "steps": [{"type": "env", "env": {"1BAD": "x"}}]}, "steps.0.env.env"),
        ({"name": "ok", "steps": [{"type": "run", "command": "true", "timeout": 0}]}, "steps.0.run.timeout"),
    ],
)
async def test_bad_template_definitions_are_refused_by_field(api: Api, body: dict[str, object], field: str) -> None:
    r = await api.client.post("/api/v1/templates", json=body)
    assert r.status_code == 400 and error(r)["field"] == field, r.text
    assert (await api.client.get("/api/v1/templates")).json()["items"] == []


async def test_sandboxes_name_templates_and_runtimes_that_exist(api: Api) -> None:
    both = await api.client.post("/api/v1/sandboxes", json={"image": "debian", "runtime": "node18"})
    assert both.status_code == 400 and "not image and runtime" in error(both)["message"]
    missing = await api.client.post("/api/v1/sandboxes", json={"template": "no-such-template"})
    assert missing.status_code == 404 and error(missing)["code"] == "TEMPLATE_NOT_FOUND"
    unknown = await api.client.post("/api/v1/sandboxes", json={"runtime": "python3.13"})
    assert unknown.status_code == 400 and error(unknown)["field"] == "runtime"
    assert "configured: node18, python3.11" in error(unknown)["message"]
    listed = (await api.client.get("/api/v1/runtimes")).json()["items"]
    assert [r["name"] for r in listed] == ["node18", "python3.11"]


async def test_bad_port_requests(api: Api) -> None:
    too_many = await api.client.post("/api/v1/sandboxes", json={"ports": list(range(8000, 8016))})
    assert too_many.status_code == 400 and error(too_many)["field"] == "ports"
    zero = await api.client.post("/api/v1/sandboxes", json={"ports": [0]})
    assert zero.status_code == 400 and error(zero)["field"] == "ports"
    unknown = await api.client.get("/", headers={"Host": f"sbx-{'0' * 26}-80.localhost:8080"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "SANDBOX_NOT_FOUND"


async def test_huge_numbers_in_urls(api: Api) -> None:
    sandbox = (await api.client.post("/api/v1/sandboxes", json={})).json()
    base = f"/api/v1/sandboxes/{sandbox['id']}"
    process = (await api.client.post(f"{base}/commands", json={"command": "echo hi"})).json()["process_id"]
    for path, field in [
        (f"{base}/logs?offset={10**21}", "offset"),
        (f"{base}/processes/{process}/logs?offset={10**21}", "offset"),
        (f"/api/v1/templates/x/versions/{10**21}", "version"),
        (f"/api/v1/templates/x/versions/1/logs?offset={10**30}", "offset"),
        (f"{base}/ports/{10**21}", "port"),
    ]:
        r = await api.client.get(path)
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert error(r)["field"] == field, r.text
    r = await api.client.post(f"{base}/files/mkdir", json={"path": "/tmp/d", "mode": 10**30})
    assert r.status_code == 400 and error(r)["field"] == "mode", r.text
