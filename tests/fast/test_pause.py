"""Pause and resume as the API answers them: the state machine, the 409s and auto_resume at the
one gate requests pass. What a frozen sandbox does (its memory, its processes) is the real tier's
(tests/test_pause.py)."""

from __future__ import annotations

import pytest

from tests.fast.conftest import Api, error

pytestmark = pytest.mark.anyio


async def create(api: Api, **body: object) -> str:
    r = await api.client.post("/api/v1/sandboxes", json={"image": "debian", **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_pause_and_resume_are_recorded_and_idempotent(api: Api) -> None:
    sid = await create(api)
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/pause")
    assert r.status_code == 200 and r.json()["status"]["state"] == "paused" and r.json()["status"]["reason"] == "paused"
    assert sid in api.runtime.paused
    again = await api.client.post(f"/api/v1/sandboxes/{sid}/pause")
    assert again.json()["status"]["changed_at"] == r.json()["status"]["changed_at"]  # nothing changed
    listed = await api.client.get("/api/v1/sandboxes", params={"state": "paused"})
    assert [s["id"] for s in listed.json()["items"]] == [sid]
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/resume")
    assert r.json()["status"]["state"] == "running" and r.json()["status"]["reason"] == "resumed"
    assert sid not in api.runtime.paused
    assert (await api.client.post(f"/api/v1/sandboxes/{sid}/resume")).json()["status"]["state"] == "running"


async def test_requests_to_a_paused_sandbox_are_a_409_saying_how(api: Api) -> None:
    sid = await create(api)
    await api.client.post(f"/api/v1/sandboxes/{sid}/pause")
    for method, path, body in [
        ("POST", "commands", {"command": "true"}),
        ("GET", "files?path=/etc/hostname", None),
        ("GET", "processes", None),
        ("POST", "ports", {"port": 8000}),
    ]:
        r = await api.client.request(method, f"/api/v1/sandboxes/{sid}/{path}", json=body)
        assert r.status_code == 409, (path, r.text)
        message = error(r)["message"]
        assert f"sandbox {sid} is paused" in message and "sb.resume()" in message and "auto_resume" in message
    assert (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()["status"]["state"] == "paused"


async def test_auto_resume_resumes_on_the_first_request(api: Api) -> None:
    sid = await create(api, auto_resume=True)
    assert (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()["auto_resume"] is True
    await api.client.post(f"/api/v1/sandboxes/{sid}/pause")
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/commands", json={"command": ["echo", "hi"]})
    assert r.status_code == 200 and r.json()["stdout"] == "echo hi\n"
    status = (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()["status"]
    assert status["state"] == "running" and status["reason"] == "auto_resume"


async def test_pause_and_resume_of_a_sandbox_not_running_are_a_409(api: Api) -> None:
    sid = await create(api)
    await api.client.delete(f"/api/v1/sandboxes/{sid}")
    for action in ("pause", "resume"):
        r = await api.client.post(f"/api/v1/sandboxes/{sid}/{action}")
        assert r.status_code == 409 and "terminated" in error(r)["message"]
    other = await create(api)
    r = await api.client.post(f"/api/v1/sandboxes/{other}/resume")
    assert r.status_code == 200 and r.json()["status"]["state"] == "running"  # running: as it is


async def test_a_paused_sandbox_is_deleted_with_the_reason(api: Api) -> None:
    sid = await create(api)
    await api.client.post(f"/api/v1/sandboxes/{sid}/pause")
    r = await api.client.delete(f"/api/v1/sandboxes/{sid}")
    assert r.json()["status"]["state"] == "terminated" and r.json()["status"]["reason"] == "deleted"
    assert sid not in api.runtime.sandboxes


@pytest.mark.parametrize("action", ["sleep", "", "PAUSE", "HIBERNATE"])
async def test_timeout_action_takes_destroy_pause_stop_or_hibernate(api: Api, action: str) -> None:
    r = await api.client.post("/api/v1/sandboxes", json={"image": "debian", "timeout_action": action})
    assert r.status_code == 400 and error(r)["field"] == "timeout_action", r.text
    for taken in ("pause", "stop", "hibernate"):
        sid = await create(api, timeout_action=taken)
        assert (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()["timeout_action"] == taken
    default = await create(api)
    assert (await api.client.get(f"/api/v1/sandboxes/{default}")).json()["timeout_action"] == "destroy"


async def test_an_egress_change_resumes_an_auto_resume_sandbox(api: Api) -> None:
    """set_egress holds the sandbox's lock, which a resume takes too: resumed before, not inside."""
    sid = await create(api, auto_resume=True)
    await api.client.post(f"/api/v1/sandboxes/{sid}/pause")
    r = await api.client.put(f"/api/v1/sandboxes/{sid}/egress", json={"mode": "deny_all"})
    assert r.status_code == 200, r.text
    assert (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()["status"]["state"] == "running"
