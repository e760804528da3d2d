"""The SDK's organizations, projects and keys, and its project selection, against the real app
in-process (its lifespan, httpx's ASGI transport handed to the SDK). No sandbox is ever started:
the runtime is test_tenancy_api's idle one. The sync SDK is generated from this async one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sandboxd_sdk import AsyncClient, AsyncSandbox, CreatedKey, SandboxError

from sandboxd.api.app import create_app
from sandboxd.config import Settings
from tests.test_tenancy_api import IdleRuntime

pytestmark = pytest.mark.anyio
SERVER_KEY = "server-key-for-sdk-tests"
URL = "http://sandboxd.test"


@pytest.fixture
async def transport(tmp_path: Path) -> AsyncIterator[httpx.AsyncBaseTransport]:
    settings = Settings(data_dir=tmp_path, api_key=SERVER_KEY, reaper_interval=3600)
    app = create_app(settings, runtime=IdleRuntime())
    async with LifespanManager(app) as manager:
        yield httpx.ASGITransport(app=manager.app)


def connect(transport: httpx.AsyncBaseTransport, key: str = SERVER_KEY, project: str | None = None) -> AsyncClient:
    return AsyncClient(url=URL, api_key=key, project=project, transport=transport)


async def test_orgs_projects_and_keys_round_trip(transport: httpx.AsyncBaseTransport) -> None:
    async with connect(transport) as operator:
        org = await operator.orgs.create("acme")
        assert org.created_at.utcoffset() is not None
        assert {o.name for o in await operator.orgs.list()} == {"default", "acme"}
        assert await operator.orgs.get(org.id) == org
        admin = await operator.keys.create("acme-admin", ["admin"], org_id=org.id, expires_in=3600)
    assert isinstance(admin, CreatedKey) and admin.key.startswith(f"sbx_{admin.id}_")
    assert admin.key not in repr(admin)  # a logged record shows no secret
    assert admin.org_id == org.id and admin.project_id is None and admin.expires_at is not None

    async with connect(transport, admin.key) as acme:
        web = await acme.projects.create("web")
        assert web.org_id == org.id
        assert await acme.projects.get("web") == web == await acme.projects.get(web.id)
        assert [p.name for p in await acme.projects.list()] == ["default", "web"]

        ci = await acme.keys.create("ci", ["write"], project="web")  # by name: the SDK finds its id
        assert ci.project_id == web.id and ci.scopes == ["write"]
        assert ci.expires_at == admin.expires_at  # made by an expiring key: expires with it at the latest
        listed = await acme.keys.list(project="web")
        assert [k.id for k in listed] == [ci.id]
        assert not hasattr(listed[0], "key") and ci.key.removeprefix(f"sbx_{ci.id}_") not in repr(listed)
        assert (await acme.keys.get(admin.id)).last_used_at is not None
        assert {k.id for k in await acme.keys.list()} == {admin.id, ci.id}

        async with connect(transport, ci.key) as web_client:
            assert await web_client.sandboxes() == []
            with pytest.raises(SandboxError) as not_admin:
                await web_client.projects.list()
            assert not_admin.value.status == 403
        revoked = await acme.keys.revoke(ci.id)
        assert revoked.revoked_at is not None
        async with connect(transport, ci.key) as web_client:
            with pytest.raises(SandboxError) as refused:
                await web_client.sandboxes()
        assert (refused.value.status, refused.value.code) == (401, "UNAUTHORIZED")

        with pytest.raises(SandboxError) as missing:
            await acme.projects.get("nope")
        assert (missing.value.status, missing.value.code) == (404, "PROJECT_NOT_FOUND")
        await acme.projects.delete("web")
        assert [p.name for p in await acme.projects.list()] == ["default"]
        with pytest.raises(SandboxError) as gone:
            await acme.keys.list(project=web.id)
        assert gone.value.code == "PROJECT_NOT_FOUND"

    async with connect(transport) as operator:
        await operator.orgs.delete(org.id)
        with pytest.raises(SandboxError) as deleted:
            await operator.orgs.get(org.id)
        assert deleted.value.status == 404


async def test_a_read_key_cannot_make_keys(transport: httpx.AsyncBaseTransport) -> None:
    async with connect(transport) as operator:
        reader = await operator.keys.create("reader", ["read"], project="default")
    async with connect(transport, reader.key) as c:
        assert await c.sandboxes() == []
        with pytest.raises(SandboxError) as refused:
            await c.keys.create("more", ["read"])
    assert refused.value.status == 403


async def test_the_project_is_sent_from_the_argument_or_the_environment(
    transport: httpx.AsyncBaseTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(transport) as operator:
        other = await operator.projects.create("other")
    async with connect(transport, project="other") as c:
        assert await c.sandboxes() == []
    # A project that does not exist is refused by the server: the header went out.
    for project in ("nope", other.id + "x"):
        async with connect(transport, project=project) as c:
            with pytest.raises(SandboxError) as refused:
                await c.sandboxes()
        assert refused.value.code == "PROJECT_NOT_FOUND", project
    monkeypatch.setenv("SANDBOXD_PROJECT", "nope")
    async with connect(transport) as c:
        with pytest.raises(SandboxError) as from_env:
            await c.sandboxes()
    assert from_env.value.code == "PROJECT_NOT_FOUND"
    async with connect(transport, project="other") as c:  # the argument wins over the environment
        assert await c.sandboxes() == []
    # Sandbox.create and connect send it too: the project is refused before any sandbox is made.
    with pytest.raises(SandboxError) as create_refused:
        await AsyncSandbox.create(url=URL, api_key=SERVER_KEY, transport=transport)
    assert create_refused.value.code == "PROJECT_NOT_FOUND"
    with pytest.raises(SandboxError) as connect_refused:
        await AsyncSandbox.connect("sbx_" + "0" * 26, url=URL, api_key=SERVER_KEY, transport=transport)
    assert connect_refused.value.code == "PROJECT_NOT_FOUND"
    monkeypatch.delenv("SANDBOXD_PROJECT")
    with pytest.raises(SandboxError) as not_found:
        await AsyncSandbox.connect("sbx_" + "0" * 26, url=URL, api_key=SERVER_KEY, project="other", transport=transport)
    assert not_found.value.code == "SANDBOX_NOT_FOUND"
