"""Bad input gets a 4xx naming the field, and nothing on the host is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd import Sandbox
from tests.conftest import Server


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        ({"image": "no-such-image"}, 400, "image", "not available"),
        ({"image": "../../etc"}, 400, "image", "invalid repository name"),
        ({"env": {"1BAD": "x"}}, 400, "env", "invalid environment variable name"),
        ({"env": {"A-B": "x"}}, 400, "env", "invalid environment variable name"),
        ({"cpu": 0}, 400, "cpu", "greater than or equal to 0.01"),
        ({"cpu": 512}, 400, "cpu", "at most"),
        ({"memory_mb": 1}, 400, "memory_mb", "greater than or equal to 16"),
        ({"memory_mb": 10**9}, 400, "memory_mb", "at most"),
        ({"pids": 2}, 400, "pids", "greater than or equal to 16"),
        ({"pids": 10**9}, 400, "pids", "at most"),
        ({"timeout": 0}, 400, "timeout", "greater than or equal to 1"),
        ({"timeout": 10**9}, 400, "timeout", "at most"),
        ({"cwd": "relative"}, 400, "cwd", "absolute"),
        ({"cwd": "/a/../b"}, 400, "cwd", ".."),
        ({"metadata": {"bad key!": "v"}}, 400, "metadata", "invalid label key"),
        ({"entrypoint": []}, 400, "entrypoint", "at least 1"),
        ({"unknown_field": 1}, 400, "unknown_field", "Extra inputs"),
    ],
)
def test_create_rejects_bad_fields(server: Server, body: dict, status: int, field: str, words: str) -> None:  # type: ignore[type-arg]
    sandbox_dirs = server.data_dir / "sandboxes"
    dirs_before = set(sandbox_dirs.iterdir()) if sandbox_dirs.exists() else set()
    with server.client() as http:
        before = len(http.get("/api/v1/sandboxes", params={"limit": 1000}).json()["items"])
        r = http.post("/api/v1/sandboxes", json=body)
        assert r.status_code == status, r.text
        err = r.json()
        assert err["field"] == field and words in err["message"], err
        assert err["request_id"] == r.headers["X-Request-ID"]
        # Nothing was made: no record, no sandbox directory.
        assert len(http.get("/api/v1/sandboxes", params={"limit": 1000}).json()["items"]) == before
    made = (set(sandbox_dirs.iterdir()) if sandbox_dirs.exists() else set()) - dirs_before
    assert not made, made


def test_unknown_sandbox_is_404_everywhere(server: Server) -> None:
    with server.client() as http:
        for method, path in [
            ("GET", "/api/v1/sandboxes/sbx_missing"),
            ("DELETE", "/api/v1/sandboxes/sbx_missing"),
            ("POST", "/api/v1/sandboxes/sbx_missing/commands"),
            ("GET", "/api/v1/sandboxes/sbx_missing/files?path=/etc/hostname"),
            ("GET", "/api/v1/sandboxes/sbx_missing/processes"),
            ("GET", "/api/v1/sandboxes/sbx_missing/logs"),
        ]:
            kwargs = {"json": {"command": "true"}} if method == "POST" else {}
            r = http.request(method, path, **kwargs)
            assert r.status_code == 404, (method, path, r.text)
            assert r.json()["code"] == "SANDBOX_NOT_FOUND"


def test_command_and_file_input_errors(server: Server, sandbox: Sandbox) -> None:
    base = f"/api/v1/sandboxes/{sandbox.id}"
    with server.client() as http:
        cases = [
            ("POST", "/commands", {"json": {"command": ""}}, "command"),
            ("POST", "/commands", {"json": {"command": "true", "env": {"=x": "1"}}}, "env"),
            ("POST", "/commands", {"json": {"command": "true", "timeout": -1}}, "timeout"),
            ("POST", "/commands", {"json": {"command": "true", "cwd": "../etc"}}, "cwd"),
            ("PUT", "/files?path=/tmp/x&mode=999", {"content": b"x"}, "mode"),
            ("PUT", "/files?path=tmp/x", {"content": b"x"}, "path"),
            ("POST", "/files/move", {"json": {"source": "/tmp/a", "destination": "/../b"}}, "destination"),
            ("GET", "/files/list?path=/etc/../..", {}, "path"),
        ]
        for method, path, kwargs, field in cases:
            r = http.request(method, base + path, **kwargs)
            assert r.status_code == 400, (path, r.text)
            assert r.json()["field"] == field, (path, r.json())
    assert not Path("/b").exists()
