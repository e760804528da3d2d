"""The tenancy half of the store contract (both backends, as test_contract.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from sandboxd.domain import DEFAULT_ORG, DEFAULT_PROJECT, ApiKey, Organization, Project, Scope, hash_secret, new_id
from sandboxd.store.base import DuplicateKey, Store
from tests.store.test_contract import OTHER, T0

pytestmark = pytest.mark.anyio


async def test_default_tenant_is_idempotent(store: Store) -> None:
    await store.ensure_default_tenant()
    await store.ensure_default_tenant()
    org = await store.get_org(DEFAULT_ORG)
    project = await store.get_project(DEFAULT_PROJECT)
    assert org is not None and org.name == "default"
    assert project is not None and (project.org_id, project.name) == (DEFAULT_ORG, "default")
    assert [o.id for o in await store.find_orgs()] == [DEFAULT_ORG]
    assert await store.get_project_by_name(DEFAULT_ORG, "default") == project


async def test_orgs_and_projects(store: Store) -> None:
    org = await store.create_org(Organization(id=new_id("org_"), name="acme", created_at=T0))
    with pytest.raises(DuplicateKey) as raised:
        await store.create_org(Organization(id=new_id("org_"), name="acme", created_at=T0))
    assert raised.value.field == "name"
    with pytest.raises(DuplicateKey) as raised:
        await store.create_org(Organization(id=org.id, name="other", created_at=T0))
    assert raised.value.field == "id"
    assert await store.get_org(org.id) == org

    web = await store.create_project(Project(id=new_id("prj_"), org_id=org.id, name="web", created_at=T0))
    ml = await store.create_project(Project(id=new_id("prj_"), org_id=org.id, name="ml", created_at=T0))
    with pytest.raises(DuplicateKey) as raised:
        await store.create_project(Project(id=new_id("prj_"), org_id=org.id, name="web", created_at=T0))
    assert raised.value.field == "name"
    # Another organization may use the name.
    await store.create_project(Project(id=new_id("prj_"), org_id=DEFAULT_ORG, name="web", created_at=T0))
    assert await store.get_project_by_name(org.id, "web") == web
    assert await store.get_project_by_name(org.id, "nope") is None
    assert await store.find_projects(org.id) == sorted([web, ml], key=lambda p: p.id)

    assert await store.delete_project(ml.id) is True
    assert await store.delete_project(ml.id) is False
    assert await store.find_projects(org.id) == [web]
    key = await store.create_key(api_key(org.id, web.id))
    assert await store.delete_org(org.id) is True
    assert (await store.get_org(org.id), await store.get_project(web.id), await store.get_key(key.id)) == (
        None,
        None,
        None,
    )
    assert await store.get_project_by_name(DEFAULT_ORG, "web") is not None


def api_key(org_id: str, project_id: str | None, scopes: list[Scope] | None = None, **fields: Any) -> ApiKey:
    return ApiKey(
        id=new_id("key_"),
        name=fields.pop("name", "ci"),
        org_id=org_id,
        project_id=project_id,
        scopes=scopes or [Scope.READ, Scope.WRITE],
        secret_hash=hash_secret(new_id("secret_")),
        created_at=T0,
        **fields,
    )


async def test_keys(store: Store) -> None:
    other = await store.create_project(Project(id=OTHER, org_id=DEFAULT_ORG, name="other", created_at=T0))
    admin = await store.create_key(api_key(DEFAULT_ORG, None, [Scope.ADMIN], expires_at=T0 + timedelta(days=1)))
    reader = await store.create_key(api_key(DEFAULT_ORG, DEFAULT_PROJECT, [Scope.READ]))
    theirs = await store.create_key(api_key(DEFAULT_ORG, other.id))
    with pytest.raises(DuplicateKey) as raised:
        await store.create_key(api_key(DEFAULT_ORG, None).model_copy(update={"secret_hash": reader.secret_hash}))
    assert raised.value.field == "secret_hash"
    with pytest.raises(DuplicateKey):
        await store.create_key(api_key(DEFAULT_ORG, None).model_copy(update={"id": admin.id}))

    assert await store.get_key(admin.id) == admin
    assert await store.get_key_by_hash(reader.secret_hash) == reader
    assert await store.get_key_by_hash(hash_secret("guess")) is None
    assert {k.id for k in await store.find_keys(DEFAULT_ORG)} == {admin.id, reader.id, theirs.id}
    assert await store.find_keys(DEFAULT_ORG, DEFAULT_PROJECT) == [reader]
    assert await store.find_keys("org_nope") == []

    await store.touch_key(reader.id, T0 + timedelta(minutes=1))
    touched = await store.get_key(reader.id)
    assert touched is not None and touched.last_used_at == T0 + timedelta(minutes=1)

    revoked = await store.revoke_key(reader.id, T0 + timedelta(minutes=2))
    assert revoked is not None and revoked.revoked_at == T0 + timedelta(minutes=2)
    again = await store.revoke_key(reader.id, T0 + timedelta(minutes=9))
    assert again is not None and again.revoked_at == T0 + timedelta(minutes=2)  # the first time stays
    assert await store.revoke_key("key_missing", T0) is None
    assert await store.delete_project(other.id) is True
    assert await store.get_key(theirs.id) is None
    assert await store.get_key(admin.id) == admin
