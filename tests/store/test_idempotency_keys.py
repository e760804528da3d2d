"""The idempotency-key half of the store contract, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from sandboxd.domain import IdempotentCall
from sandboxd.store.base import KeysExhausted, Store

pytestmark = pytest.mark.anyio
T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def call(key: str = "k", project: str = "prj_a", fingerprint: str = "f1") -> IdempotentCall:
    return IdempotentCall(project, key, fingerprint, "POST", "/api/v1/sandboxes", T0)


async def test_one_claim_per_project_and_key(store: Store) -> None:
    assert await store.claim_idempotent(call()) is None
    held = await store.claim_idempotent(call(fingerprint="f2"))
    assert held is not None and held.fingerprint == "f1" and not held.done
    assert await store.claim_idempotent(call(project="prj_b")) is None  # another project's own

    await store.finish_idempotent("prj_a", "k", 201, (("location", "/x"),), b"\x00body", T0 + timedelta(1))
    done = await store.get_idempotent("prj_a", "k")
    headers = (("location", "/x"),)
    assert done == IdempotentCall(
        "prj_a", "k", "f1", "POST", "/api/v1/sandboxes", T0, True, 201, headers, b"\x00body", T0 + timedelta(1)
    )
    await store.release_idempotent("prj_a", "k")  # a done call is not released
    assert await store.get_idempotent("prj_a", "k") == done


async def test_racing_claims_have_one_winner(store: Store) -> None:
    results: list[IdempotentCall | None] = []

    async def claim() -> None:
        results.append(await store.claim_idempotent(call("race")))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(claim)
    assert results.count(None) == 1


async def test_release_and_purge(store: Store) -> None:
    for key in ("running", "done", "later"):
        assert await store.claim_idempotent(call(key)) is None
    await store.finish_idempotent("prj_a", "done", 200, (), None, T0)
    await store.finish_idempotent("prj_a", "later", 200, (), b"{}", T0 + timedelta(hours=1))
    assert await store.purge_idempotent(T0) == 1  # only done ones past their retention
    assert await store.get_idempotent("prj_a", "done") is None
    assert await store.release_unfinished_idempotent("srv_me", T0 - timedelta(days=1)) == 1  # unrecorded: released
    assert await store.get_idempotent("prj_a", "running") is None
    later = await store.get_idempotent("prj_a", "later")
    assert later is not None and later.body == b"{}"


async def test_a_restart_releases_its_own_claims_only(store: Store) -> None:
    """Servers sharing a store: one's restart must not free the keys another is running."""
    assert await store.claim_idempotent(replace(call("mine"), owner="srv_me")) is None
    assert await store.claim_idempotent(replace(call("theirs"), owner="srv_other")) is None
    old = replace(call("abandoned"), owner="srv_gone", created_at=T0 - timedelta(days=2))
    assert await store.claim_idempotent(old) is None
    assert await store.release_unfinished_idempotent("srv_me", T0 - timedelta(days=1)) == 2
    assert await store.get_idempotent("prj_a", "mine") is None
    assert await store.get_idempotent("prj_a", "abandoned") is None
    theirs = await store.get_idempotent("prj_a", "theirs")
    assert theirs is not None and theirs.owner == "srv_other" and not theirs.done


async def test_usage_counts_a_projects_keys_and_kept_bytes(store: Store) -> None:
    for project in ("prj_a:key_1", "prj_a:key_2", "prj_ab:key_1", "prj_a%:key_1"):
        assert await store.claim_idempotent(call("k", project)) is None
    await store.finish_idempotent("prj_a:key_1", "k", 200, (), b"x" * 100, T0)
    await store.finish_idempotent("prj_ab:key_1", "k", 200, (), b"y" * 7, T0)
    assert await store.idempotent_usage("prj_a") == (2, 100)  # not prj_ab's, nor prj_a%'s
    assert await store.idempotent_usage("prj_ab") == (1, 7)


async def test_the_key_cap_is_exact_under_racing_claims(store: Store) -> None:
    """Many new keys claimed at once: exactly the cap is inserted, the rest refused with nothing
    written; a key already held is still found at the cap, and the project's API keys count too."""
    outcomes: list[str] = []
    claimed: list[IdempotentCall] = []

    async def claim(key: str, project: str) -> None:
        try:
            held = await store.claim_idempotent(call(key, project), "prj_a", 3)
            outcomes.append("claimed" if held is None else "held")
            if held is None:
                claimed.append(call(key, project))
        except KeysExhausted:
            outcomes.append("refused")

    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(claim, f"k{i}", "prj_a" if i % 2 else "prj_a:key_1")
    assert sorted(outcomes) == ["claimed"] * 3 + ["refused"] * 9
    assert await store.idempotent_usage("prj_a") == (3, 0)
    mine = claimed[0]
    again = await store.claim_idempotent(call(mine.key, mine.project_id, "other"), "prj_a", 3)
    assert again is not None and again.fingerprint == "f1"  # held: found, not refused
    assert await store.claim_idempotent(call("k", "prj_b"), "prj_b", 3) is None  # another project's own count
