"""Idempotency-Key in-process (fake runtime, both stores): what is kept, replayed and refused. The
real-sandbox tier (tests/test_idempotency.py) proves the same on real sandboxes and a server kill."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager

from sandboxd.api.app import create_app
from sandboxd.config import Settings
from sandboxd.store.schema import idempotency_keys
from sandboxd.store.sql import open_store
from tests.fake_runtime import FakeRuntime
from tests.fast.conftest import SERVER_KEY, Api, error, state_per_request

pytestmark = pytest.mark.anyio
SANDBOXES = "/api/v1/sandboxes"


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def live(api: Api, **labels: str) -> list[dict[str, Any]]:
    query = {"state": ["pending", "running"], "label": [f"{k}={v}" for k, v in labels.items()]}
    return list((await api.client.get(SANDBOXES, params=query)).json()["items"])


async def test_a_retry_gets_the_first_answer_and_makes_nothing(api: Api) -> None:
    body = {"metadata": {"t": "seq"}}
    first = await api.client.post(SANDBOXES, json=body, headers=key("seq-1"))
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    # The same request by value: key order and spacing do not make it another.
    spaced = b'{ "metadata" : {"t": "seq"} }'
    as_json = {**key("seq-1"), "content-type": "application/json"}
    again = await api.client.post(SANDBOXES, content=spaced, headers=as_json)
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == f"{SANDBOXES}/{first.json()['id']}"
    assert again.headers["x-request-id"] != first.headers["x-request-id"]  # this request's own
    assert [s["id"] for s in await live(api, t="seq")] == [first.json()["id"]]


async def test_another_request_with_the_key_is_a_422_naming_it(api: Api) -> None:
    first = await api.client.post(SANDBOXES, json={"metadata": {"t": "a"}}, headers=key("reused"))
    assert first.status_code == 201
    sandbox = first.json()["id"]
    for method_path, kwargs in (
        (SANDBOXES, {"json": {"metadata": {"t": "b"}}}),  # another body
        (SANDBOXES, {"json": {"metadata": {"t": "a"}}, "params": {"wait": "false"}}),  # another query
        (f"{SANDBOXES}/{sandbox}/timeout", {"json": {"timeout": 60}}),  # another route
    ):
        r = await api.client.post(method_path, headers=key("reused"), **kwargs)
        assert r.status_code == 422, r.text
        body = error(r)
        assert body["code"] == "IDEMPOTENCY_KEY_REUSED" and body["field"] == "Idempotency-Key"
        assert "'reused'" in body["message"] and f"POST {SANDBOXES}" in body["message"]
    assert len(await live(api, t="b")) == 0
    assert (await api.client.get(f"{SANDBOXES}/{sandbox}")).json()["timeout"] != 60


async def test_keys_are_the_projects_own(api: Api) -> None:
    assert (await api.client.post("/api/v1/projects", json={"name": "other"})).status_code == 201
    mine = await api.client.post(SANDBOXES, json={"metadata": {"t": "p"}}, headers=key("shared"))
    theirs = await api.client.post(
        SANDBOXES, json={"metadata": {"t": "p"}}, headers={**key("shared"), "X-Sandboxd-Project": "other"}
    )
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"] and "idempotent-replayed" not in theirs.headers
    # Another project's key with another body is not a 422 either: nothing is shared.
    other = await api.client.post(SANDBOXES, json={}, headers={**key("shared"), "X-Sandboxd-Project": "other"})
    assert other.status_code == 422  # but its own first request with it is
    assert error(other)["code"] == "IDEMPOTENCY_KEY_REUSED"


@pytest.mark.parametrize(
    ("value", "why"), [("x" * 256, "1 to 255"), ("tab\there", "control"), ("del\x7f", "control"), ("é", "control")]
)
async def test_a_bad_key_is_a_400(api: Api, value: str, why: str) -> None:
    headers = {b"Idempotency-Key": value.encode("latin-1")}
    r = await api.client.post(SANDBOXES, json={}, headers=headers)
    assert r.status_code == 400, r.text
    assert error(r)["field"] == "Idempotency-Key" and why in error(r)["message"]
    assert await live(api) == []
    ok = await api.client.post(SANDBOXES, json={"metadata": {"t": "k"}}, headers=key("x" * 255))
    assert ok.status_code == 201


async def test_streamed_routes_refuse_the_key(api: Api) -> None:
    sandbox = (await api.client.post(SANDBOXES, json={})).json()["id"]
    r = await api.client.post(
        f"{SANDBOXES}/{sandbox}/commands/stream", json={"command": "echo hi"}, headers=key("stream")
    )
    assert r.status_code == 400 and "stream" in error(r)["message"] and error(r)["field"] == "Idempotency-Key"
    r = await api.client.post("/api/v1/keys", json={"name": "k"}, headers=key("keys"))
    assert r.status_code == 400 and "secret" in error(r)["message"]
    # Other methods are idempotent already: the header is ignored there.
    assert (await api.client.get(f"{SANDBOXES}/{sandbox}", headers=key("stream"))).status_code == 200


async def test_concurrent_retries_wait_for_the_first(api: Api) -> None:
    gate = asyncio.Event()
    create = api.runtime.create

    async def held(*args: Any, **kwargs: Any) -> dict[str, Any]:
        await gate.wait()
        return await create(*args, **kwargs)

    api.runtime.create = held  # type: ignore[method-assign]
    body = {"metadata": {"t": "conc"}}
    calls = [asyncio.create_task(api.client.post(SANDBOXES, json=body, headers=key("conc"))) for _ in range(3)]
    await asyncio.sleep(0.3)  # all three are in: one creating, two waiting for it
    assert not any(c.done() for c in calls)
    gate.set()
    answers = await asyncio.gather(*calls)
    assert {r.status_code for r in answers} == {201}
    assert len({r.json()["id"] for r in answers}) == 1
    assert sorted(r.headers.get("idempotent-replayed", "no") for r in answers) == ["no", "true", "true"]
    assert len(await live(api, t="conc")) == 1


async def test_a_5xx_is_not_kept_a_4xx_is(api: Api) -> None:
    create = api.runtime.create
    failures = [RuntimeError("disk on fire")]

    async def flaky(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if failures:
            raise failures.pop()
        return await create(*args, **kwargs)

    api.runtime.create = flaky  # type: ignore[method-assign]
    body = {"metadata": {"t": "5xx"}}
    first = await api.client.post(SANDBOXES, json=body, headers=key("5xx"))
    assert first.status_code == 500, first.text
    again = await api.client.post(SANDBOXES, json=body, headers=key("5xx"))  # run again: it works now
    assert again.status_code == 201 and "idempotent-replayed" not in again.headers
    assert [s["id"] for s in await live(api, t="5xx")] == [again.json()["id"]]

    bad = {"image": "no-such-image"}
    refused = await api.client.post(SANDBOXES, json=bad, headers=key("4xx"))
    assert refused.status_code == 400
    replayed = await api.client.post(SANDBOXES, json=bad, headers=key("4xx"))
    assert replayed.status_code == 400 and replayed.json() == refused.json()
    assert replayed.headers["idempotent-replayed"] == "true"


async def test_an_answer_past_the_cap_is_not_run_again(api: Api) -> None:
    api.settings.idempotency_max_response_kb = 0  # every answer is past it
    body = {"metadata": {"t": "big"}}
    first = await api.client.post(SANDBOXES, json=body, headers=key("big"))
    assert first.status_code == 201 and first.json()["status"]["state"] == "running"  # passed on whole
    again = await api.client.post(SANDBOXES, json=body, headers=key("big"))
    assert again.status_code == 409, again.text
    assert error(again)["code"] == "IDEMPOTENT_RESPONSE_NOT_KEPT" and "status 201" in error(again)["message"]
    assert [s["id"] for s in await live(api, t="big")] == [first.json()["id"]]


@pytest.fixture
async def swept(tmp_path: Path, database_url: str) -> AsyncIterator[Api]:
    """A server whose reaper runs often and keeps answers for a moment only."""
    runtime = FakeRuntime()
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        api_key=SERVER_KEY,
        reaper_interval=0.05,
        idempotency_retention_seconds=1,
    )
    app = create_app(settings, runtime=runtime)
    async with LifespanManager(state_per_request(app)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandboxd.test") as client:
            client.headers["authorization"] = f"Bearer {SERVER_KEY}"
            yield Api(app, manager.app, client, runtime, settings)


async def test_keys_expire(swept: Api) -> None:
    body = {"metadata": {"t": "exp"}}
    first = await swept.client.post(SANDBOXES, json=body, headers=key("exp"))
    again = await swept.client.post(SANDBOXES, json=body, headers=key("exp"))
    assert again.json()["id"] == first.json()["id"]
    await asyncio.sleep(1.5)
    later = await swept.client.post(SANDBOXES, json=body, headers=key("exp"))
    assert later.status_code == 201 and later.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in later.headers


async def test_another_api_key_never_gets_a_keys_answer(api: Api) -> None:
    """An answer kept for one API key (it may hold the sandbox's traffic token) is not replayed to
    another key of the same project, whatever its scope: the Idempotency-Key is the API key's own."""
    made = await api.client.post("/api/v1/keys", json={"name": "ci", "scopes": ["write"]})
    assert made.status_code == 201, made.text
    second = {"Authorization": f"Bearer {made.json()['key']}"}
    mine = await api.client.post(SANDBOXES, json={"metadata": {"t": "k"}}, headers=key("per-key"))
    theirs = await api.client.post(SANDBOXES, json={"metadata": {"t": "k"}}, headers={**key("per-key"), **second})
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"] and "idempotent-replayed" not in theirs.headers


async def test_a_project_holds_a_bounded_number_of_keys(api: Api) -> None:
    """Replaying fresh keys must not fill the database: past the project's count, a clear 429."""
    api.settings.idempotency_max_keys = 3
    for i in range(3):
        made = await api.client.post(SANDBOXES, json={"metadata": {"t": "many"}}, headers=key(f"many-{i}"))
        assert made.status_code == 201, made.text
    refused = await api.client.post(SANDBOXES, json={"metadata": {"t": "many"}}, headers=key("many-3"))
    assert refused.status_code == 429, refused.text
    assert (
        error(refused)["code"] == "IDEMPOTENCY_KEYS_EXHAUSTED" and "idempotency_max_keys" in error(refused)["message"]
    )
    assert len(await live(api, t="many")) == 3  # refused before any work
    again = await api.client.post(SANDBOXES, json={"metadata": {"t": "many"}}, headers=key("many-1"))
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"  # a held key still replays
    made = await api.client.post("/api/v1/keys", json={"name": "other", "scopes": ["write"]})
    other = {"Authorization": f"Bearer {made.json()['key']}"}  # another API key of the project: the same count
    also = await api.client.post(SANDBOXES, json={"metadata": {"t": "many"}}, headers={**key("x"), **other})
    assert also.status_code == 429, also.text


async def test_a_project_keeps_a_bounded_number_of_answer_bytes(api: Api) -> None:
    """Past the project's stored bytes an answer is not kept: its retry is a 409, never the work again."""
    first = await api.client.post(SANDBOXES, json={"metadata": {"t": "bytes"}}, headers=key("b-0"))
    assert first.status_code == 201
    api.settings.idempotency_max_stored_mb = 0  # what is kept already fills it
    second = await api.client.post(SANDBOXES, json={"metadata": {"t": "bytes"}}, headers=key("b-1"))
    assert second.status_code == 201 and second.json()["status"]["state"] == "running"
    again = await api.client.post(SANDBOXES, json={"metadata": {"t": "bytes"}}, headers=key("b-1"))
    assert again.status_code == 409 and error(again)["code"] == "IDEMPOTENT_RESPONSE_NOT_KEPT", again.text
    assert "idempotency_max_stored_mb" in error(again)["message"]
    kept = await api.client.post(SANDBOXES, json={"metadata": {"t": "bytes"}}, headers=key("b-0"))
    assert kept.status_code == 201 and kept.json()["id"] == first.json()["id"]
    assert len(await live(api, t="bytes")) == 2


async def test_secrets_are_not_kept_with_an_answer_but_a_replay_has_them(api: Api) -> None:
    """The env values and traffic token are not stored for the retention; the retry still gets
    them (from the sandbox's record)."""
    body = {"metadata": {"t": "secret"}, "env": {"API_TOKEN": "hunter2-value"}}
    first = await api.client.post(SANDBOXES, json=body, headers=key("secret"))
    assert first.status_code == 201, first.text
    token = first.json()["traffic_token"]
    assert token and first.json()["env"]["API_TOKEN"] == "hunter2-value"
    store = await open_store(api.settings.resolved_database_url())
    try:
        rows = [r for r in await _rows(store) if r.key == "secret"]
    finally:
        await store.close()
    assert len(rows) == 1 and rows[0].body is not None
    assert b"hunter2-value" not in rows[0].body and token.encode() not in rows[0].body
    again = await api.client.post(SANDBOXES, json=body, headers=key("secret"))
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-redacted" not in again.headers
    assert again.json() == first.json()


async def _rows(store: Any) -> list[Any]:
    query = sa.select(idempotency_keys.c.key, idempotency_keys.c.body)
    return list(await store.runner.read(lambda conn: conn.execute(query).all()))
