"""The store's in-memory cache (store/cache.py) promises its callers copies: "changing one changes
nothing here". A caller that changes a nested field of a record it read (a sandbox's spec, its
runtime record, a key's scopes) must not change what the next request reads from memory, which
would no longer be what the database holds."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from sandboxd.domain import ApiKey, Scope
from sandboxd.store.sql import open_store

pytestmark = pytest.mark.anyio


async def test_changing_a_read_key_changes_nothing_cached(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/db.sqlite")
    try:
        await store.ensure_default_tenant()
        key = ApiKey(
            id="key_01",
            name="k",
            org_id="org_default",
            project_id=None,
            scopes=[Scope.READ],
            secret_hash="x",
            created_at=datetime.now(UTC),
        )
        await store.create_key(key)
        first = await store.get_key("key_01")  # read from the database, kept
        assert first is not None
        first.scopes.append(Scope.ADMIN)  # a caller's own copy, it was told
        again = await store.get_key("key_01")  # from memory
        assert again is not None and again.scopes == [Scope.READ]
    finally:
        await store.close()
