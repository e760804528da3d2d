"""The one authentication check and the tenancy rules, in-process over the real store (SQLite and PostgreSQL)
(no server, no sandboxes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from sandboxd.domain import DEFAULT_ORG, DEFAULT_PROJECT, Scope
from sandboxd.errors import Conflict, Forbidden, InvalidRequest, SandboxdError, Unauthorized
from sandboxd.services.auth import (
    MAX_CREDENTIAL,
    SERVER_KEY_ID,
    AuthService,
    KeyNotFound,
    OrgNotFound,
    Principal,
    ProjectNotFound,
    new_key,
    scope_for_method,
)
from sandboxd.services.tenancy import TenancyService
from sandboxd.store.base import Store

pytestmark = pytest.mark.anyio
SERVER_KEY = "the-server-key"


class World:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.auth = AuthService(self.store, SERVER_KEY)
        self.busy: set[str] = set()  # projects that "have sandboxes"

        async def in_use(project_id: str) -> list[str]:
            return ["sandboxes"] if project_id in self.busy else []

        self.tenancy = TenancyService(self.store, self.auth, in_use)

    async def as_(self, token: str, project: str | None = None) -> Principal:
        headers = {"authorization": f"Bearer {token}"}
        if project is not None:
            headers["x-sandboxd-project"] = project
        return await self.auth.authenticate(headers)

    async def operator(self) -> Principal:
        return await self.as_(SERVER_KEY)


@pytest.fixture
async def world(store: Store) -> World:
    w = World(store)
    await w.store.ensure_default_tenant()
    return w


async def test_server_key_is_the_default_orgs_operator_admin(world: World) -> None:
    p = await world.operator()
    assert p == Principal(DEFAULT_ORG, DEFAULT_PROJECT, SERVER_KEY_ID, frozenset({Scope.ADMIN}), operator=True)
    # X-API-Key works as well as Bearer.
    assert await world.auth.authenticate({"x-api-key": SERVER_KEY}) == p


async def test_a_minted_key_authenticates_and_its_secret_is_only_hashed(world: World) -> None:
    op = await world.operator()
    record, token = await world.tenancy.create_key(op, name="ci", scopes=[Scope.WRITE], project_id=DEFAULT_PROJECT)
    assert token.startswith(f"sbx_{record.id}_") and len(token.removeprefix(f"sbx_{record.id}_")) >= 43
    stored = await world.store.get_key(record.id)
    assert stored is not None
    secret = token.removeprefix(f"sbx_{record.id}_")
    assert secret not in stored.model_dump_json() and token not in stored.model_dump_json()
    p = await world.as_(token)
    assert (p.org_id, p.project_id, p.key_id, p.operator) == (DEFAULT_ORG, DEFAULT_PROJECT, record.id, False)
    assert p.scopes == frozenset({Scope.WRITE}) and p.key_project_id == DEFAULT_PROJECT


@pytest.mark.parametrize(
    "bad",
    [
        None,  # no header
        "",
        "the-server-key ",  # trailing space is stripped: this one is fine, see below
        "the-server-kez",
        "sbx_key_" + "0" * 26 + "_" + "A" * 43,  # well-formed, unknown id
        "sbx_key_abc_" + "A" * 43,  # malformed id
        "sbx_" + "x" * 200,
        "x" * (MAX_CREDENTIAL + 1),  # oversized
        SERVER_KEY + "x" * MAX_CREDENTIAL,
    ],
)
async def test_refused_credentials(world: World, bad: str | None) -> None:
    headers = {} if bad is None else {"authorization": f"Bearer {bad}"}
    if bad == "the-server-key ":
        assert (await world.auth.authenticate(headers)).operator
        return
    with pytest.raises(Unauthorized):
        await world.auth.authenticate(headers)


async def test_wrong_secret_revoked_and_expired_are_401(world: World) -> None:
    op = await world.operator()
    record, token = await world.tenancy.create_key(op, name="k", scopes=[Scope.READ], project_id=DEFAULT_PROJECT)
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(Unauthorized):
        await world.as_(wrong)
    await world.tenancy.revoke_key(op, record.id)
    with pytest.raises(Unauthorized, match="revoked"):
        await world.as_(token)

    # A key whose expiry has passed (made straight in the store: the API refuses a past expiry).
    record2, token2 = new_key(
        "k2", DEFAULT_ORG, DEFAULT_PROJECT, [Scope.READ], datetime.now(UTC) - timedelta(seconds=1)
    )
    await world.store.create_key(record2)
    with pytest.raises(Unauthorized, match="expired"):
        await world.as_(token2)


async def test_last_used_is_written_at_most_once_a_minute(world: World) -> None:
    op = await world.operator()
    record, token = await world.tenancy.create_key(op, name="k", scopes=[Scope.READ])

    async def last_used() -> datetime | None:
        stored = await world.store.get_key(record.id)
        assert stored is not None
        return stored.last_used_at

    assert await last_used() is None
    await world.as_(token)
    first = await last_used()
    assert first is not None
    for _ in range(20):
        await world.as_(token)
    assert await last_used() == first  # not written again within the minute
    # A minute later (as this server remembers it), the next use is written again.
    world.auth._touched[record.id] = first - timedelta(minutes=2)
    await world.store.touch_key(record.id, first - timedelta(minutes=2))
    await world.as_(token)
    latest = await last_used()
    assert latest is not None and latest > first


def test_scope_for_method_and_ranks() -> None:
    assert scope_for_method("GET") == scope_for_method("head") == Scope.READ
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert scope_for_method(method) == Scope.WRITE
    read = Principal("o", "p", "k", frozenset({Scope.READ}))
    write = Principal("o", "p", "k", frozenset({Scope.WRITE}))
    admin = Principal("o", "p", "k", frozenset({Scope.ADMIN}))
    assert [read.allows(s) for s in (Scope.READ, Scope.WRITE, Scope.ADMIN)] == [True, False, False]
    assert [write.allows(s) for s in (Scope.READ, Scope.WRITE, Scope.ADMIN)] == [True, True, False]
    assert [admin.allows(s) for s in (Scope.READ, Scope.WRITE, Scope.ADMIN)] == [True, True, True]
    with pytest.raises(Forbidden):
        read.require(Scope.WRITE)


async def test_project_selection_by_header(world: World) -> None:
    op = await world.operator()
    other = await world.tenancy.create_project(op, "other")
    assert (await world.as_(SERVER_KEY, "other")).project_id == other.id
    assert (await world.as_(SERVER_KEY, other.id)).project_id == other.id
    assert (await world.as_(SERVER_KEY, "default")).project_id == DEFAULT_PROJECT
    with pytest.raises(ProjectNotFound):
        await world.as_(SERVER_KEY, "nope")
    with pytest.raises(ProjectNotFound):
        await world.as_(SERVER_KEY, "x" * 500)

    # An organization-wide key picks any project of its organization, the default one if none.
    _, org_key = await world.tenancy.create_key(op, name="org", scopes=[Scope.WRITE])
    assert (await world.as_(org_key)).project_id == DEFAULT_PROJECT
    assert (await world.as_(org_key, "other")).project_id == other.id

    # A project's key stays in its project: another one is "not found", exactly like a missing one.
    _, prj_key = await world.tenancy.create_key(op, name="p", scopes=[Scope.WRITE], project_id=other.id)
    assert (await world.as_(prj_key)).project_id == other.id
    assert (await world.as_(prj_key, "other")).project_id == other.id
    assert (await world.as_(prj_key, other.id)).project_id == other.id
    for elsewhere in ("default", DEFAULT_PROJECT, "nope"):
        with pytest.raises(ProjectNotFound) as found:
            await world.as_(prj_key, elsewhere)
        assert found.value.status == 404


async def test_org_isolation(world: World) -> None:
    op = await world.operator()
    acme = await world.tenancy.create_org(op, "acme")
    _, acme_admin = await world.tenancy.create_key(op, name="admin", scopes=[Scope.ADMIN], org_id=acme.id)
    a = await world.as_(acme_admin)
    assert a.org_id == acme.id and a.project_id is not None and a.project_id != DEFAULT_PROJECT
    [acme_default] = await world.tenancy.list_projects(a)
    assert acme_default.name == "default" and acme_default.id == a.project_id

    # The default organization's project, named by id or name, does not exist for acme.
    for ref in (DEFAULT_PROJECT, "default-x"):
        with pytest.raises(ProjectNotFound):
            await world.as_(acme_admin, ref)
    with pytest.raises(ProjectNotFound):
        await world.tenancy.get_project(a, DEFAULT_PROJECT)
    with pytest.raises(ProjectNotFound):
        await world.tenancy.delete_project(a, DEFAULT_PROJECT)
    with pytest.raises(ProjectNotFound):
        await world.tenancy.create_key(a, name="x", scopes=[Scope.READ], project_id=DEFAULT_PROJECT)
    with pytest.raises(ProjectNotFound):
        await world.tenancy.list_keys(a, DEFAULT_PROJECT)
    default_key, _ = await world.tenancy.create_key(op, name="d", scopes=[Scope.READ])
    with pytest.raises(KeyNotFound):
        await world.tenancy.get_key(a, default_key.id)
    with pytest.raises(KeyNotFound):
        await world.tenancy.revoke_key(a, default_key.id)
    assert default_key.id not in {k.id for k in await world.tenancy.list_keys(a)}
    with pytest.raises(OrgNotFound):
        await world.tenancy.create_key(a, name="x", scopes=[Scope.READ], org_id=DEFAULT_ORG)
    # Organizations are the operator's.
    for call in (world.tenancy.list_orgs(a), world.tenancy.get_org(a, acme.id), world.tenancy.create_org(a, "z")):
        with pytest.raises(Forbidden):
            await call


async def test_project_keys_manage_their_project_only(world: World) -> None:
    op = await world.operator()
    mine = await world.tenancy.create_project(op, "mine")
    theirs = await world.tenancy.create_project(op, "theirs")
    _, token = await world.tenancy.create_key(op, name="padmin", scopes=[Scope.ADMIN], project_id=mine.id)
    p = await world.as_(token)
    assert [x.id for x in await world.tenancy.list_projects(p)] == [mine.id]
    with pytest.raises(ProjectNotFound):
        await world.tenancy.get_project(p, theirs.id)
    with pytest.raises(Forbidden):
        await world.tenancy.create_project(p, "more")
    with pytest.raises(Forbidden):
        await world.tenancy.create_key(p, name="orgwide", scopes=[Scope.READ])
    with pytest.raises(ProjectNotFound):
        await world.tenancy.create_key(p, name="there", scopes=[Scope.READ], project_id=theirs.id)
    theirs_key, _ = await world.tenancy.create_key(op, name="t", scopes=[Scope.READ], project_id=theirs.id)
    with pytest.raises(KeyNotFound):
        await world.tenancy.get_key(p, theirs_key.id)
    made, _ = await world.tenancy.create_key(p, name="here", scopes=[Scope.WRITE], project_id=mine.id)
    assert {k.id for k in await world.tenancy.list_keys(p)} == {p.key_id, made.id}


async def test_non_admins_manage_nothing(world: World) -> None:
    op = await world.operator()
    _, token = await world.tenancy.create_key(op, name="w", scopes=[Scope.WRITE, Scope.READ])
    w = await world.as_(token)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: world.tenancy.list_projects(w),
        lambda: world.tenancy.create_project(w, "x"),
        lambda: world.tenancy.list_keys(w),
        lambda: world.tenancy.create_key(w, name="x", scopes=[Scope.READ]),
        lambda: world.tenancy.get_key(w, w.key_id),
    ]
    for call in calls:
        with pytest.raises(Forbidden):
            await call()


async def test_deletes_refused_while_in_use_and_for_the_defaults(world: World) -> None:
    op = await world.operator()
    project = await world.tenancy.create_project(op, "busy")
    _, token = await world.tenancy.create_key(op, name="k", scopes=[Scope.READ], project_id=project.id)
    world.busy.add(project.id)
    with pytest.raises(Conflict):
        await world.tenancy.delete_project(op, project.id)
    world.busy.clear()
    await world.tenancy.delete_project(op, project.id)
    with pytest.raises(Unauthorized):  # its keys went with it
        await world.as_(token)
    for call in (world.tenancy.delete_project(op, DEFAULT_PROJECT), world.tenancy.delete_org(op, DEFAULT_ORG)):
        with pytest.raises(Conflict):
            await call

    org = await world.tenancy.create_org(op, "gone")
    [its_default] = await world.store.find_projects(org.id)
    _, org_token = await world.tenancy.create_key(op, name="a", scopes=[Scope.ADMIN], org_id=org.id)
    world.busy.add(its_default.id)
    with pytest.raises(Conflict):
        await world.tenancy.delete_org(op, org.id)
    world.busy.clear()
    await world.tenancy.delete_org(op, org.id)
    with pytest.raises(Unauthorized):
        await world.as_(org_token)
    with pytest.raises(OrgNotFound):
        await world.tenancy.get_org(op, org.id)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "", "scopes": [Scope.READ]}, "name"),
        ({"name": "a\nb", "scopes": [Scope.READ]}, "name"),
        ({"name": "k", "scopes": []}, "scopes"),
        ({"name": "k", "scopes": [Scope.READ], "expires_in": 0}, "expires_in"),
        (
            {"name": "k", "scopes": [Scope.READ], "expires_in": 10, "expires_at": datetime(2100, 1, 1, tzinfo=UTC)},
            "expires_in",
        ),
        ({"name": "k", "scopes": [Scope.READ], "expires_at": datetime(2000, 1, 1, tzinfo=UTC)}, "expires_at"),
        ({"name": "k", "scopes": [Scope.READ], "expires_at": datetime(2100, 1, 1)}, "expires_at"),
    ],
)
async def test_key_fields_are_validated(world: World, kwargs: dict[str, object], field: str) -> None:
    op = await world.operator()
    with pytest.raises(InvalidRequest) as refused:
        await world.tenancy.create_key(op, **kwargs)  # type: ignore[arg-type]
    assert refused.value.field == field


@pytest.mark.parametrize("name", ["", "A", "-a", "a-", "a_b", "a" * 64, "prj_x"])
async def test_names_are_dns_labels(world: World, name: str) -> None:
    op = await world.operator()
    for call in (world.tenancy.create_project(op, name), world.tenancy.create_org(op, name)):
        with pytest.raises(InvalidRequest) as refused:
            await call
        assert refused.value.field == "name"


async def test_duplicate_names_conflict(world: World) -> None:
    op = await world.operator()
    await world.tenancy.create_project(op, "twice")
    with pytest.raises(Conflict):
        await world.tenancy.create_project(op, "twice")
    await world.tenancy.create_org(op, "twice")
    with pytest.raises(Conflict):
        await world.tenancy.create_org(op, "twice")


async def test_revoke_keeps_the_first_time(world: World) -> None:
    op = await world.operator()
    record, _ = await world.tenancy.create_key(op, name="k", scopes=[Scope.READ])
    first = await world.tenancy.revoke_key(op, record.id)
    again = await world.tenancy.revoke_key(op, record.id)
    assert first.revoked_at is not None and again.revoked_at == first.revoked_at


async def test_errors_are_domain_errors(world: World) -> None:
    # Never an HTTPException: every refusal above renders through the one error handler.
    with pytest.raises(SandboxdError):
        await world.auth.authenticate({})


async def test_a_key_made_by_an_expiring_key_expires_with_it(world: World) -> None:
    op = await world.operator()
    maker, maker_token = await world.tenancy.create_key(op, name="temp", scopes=[Scope.ADMIN], expires_in=60)
    assert maker.expires_at is not None
    temp = await world.as_(maker_token)
    forever, _ = await world.tenancy.create_key(temp, name="child", scopes=[Scope.READ], project_id=DEFAULT_PROJECT)
    later, _ = await world.tenancy.create_key(
        temp, name="later", scopes=[Scope.READ], project_id=DEFAULT_PROJECT, expires_in=3600
    )
    assert forever.expires_at == maker.expires_at and later.expires_at == maker.expires_at
    sooner, _ = await world.tenancy.create_key(
        temp, name="sooner", scopes=[Scope.READ], project_id=DEFAULT_PROJECT, expires_in=10
    )
    assert sooner.expires_at is not None and sooner.expires_at < maker.expires_at
