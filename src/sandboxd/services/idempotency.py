"""Idempotency keys: a POST retried with its key gets the first answer, and the work is done once.

A key is claimed by one INSERT (the store settles races), scoped by the caller's project. The
claimant runs the request and records its answer; a retry meanwhile waits for that answer (bounded,
then 409 IDEMPOTENCY_IN_PROGRESS), a retry later gets it from the store, and the same key on another
request (method, path, query or body) is a 422 naming the key.

Not kept, so that a retry runs the request again: a 5xx (the work failed or half failed, and what
half a create made the server has already taken down), or a request the server died during (a
restarted server releases every key still claimed; its startup sweep fails the half-made sandbox).
Kept: every other answer, 4xx included; one larger than the cap is kept without its body, and a
retry gets 409 IDEMPOTENT_RESPONSE_NOT_KEPT rather than the work done twice."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sandboxd.config import Settings
from sandboxd.domain import IdempotentCall, utcnow
from sandboxd.errors import (
    IdempotencyInProgress,
    IdempotencyKeyReused,
    IdempotencyKeysExhausted,
    IdempotentResponseNotKept,
    InvalidRequest,
)
from sandboxd.store.base import KeysExhausted, Store

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# How often a waiting retry looks at the store besides being woken (a claimant of another process).
RECHECK_SECONDS = 1.0


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(HEADER, f"an {HEADER} is 1 to {MAX_KEY_LENGTH} characters")
    if any(not (0x20 <= ord(c) < 0x7F) for c in key):
        raise InvalidRequest(HEADER, f"an {HEADER} is printable ASCII, without control characters")
    return key


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """What makes two requests the same: JSON bodies compare by value (key order and spacing aside)."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode() if body else b""
    except (ValueError, RecursionError):
        canonical = body
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes | None  # None: passed on as it came, too large to keep


class IdempotencyService:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._done: dict[tuple[str, str], asyncio.Event] = {}  # claims of this process, by project and key
        self.server_id = ""

    async def start(self) -> None:
        """Before serving: a key this server still claims was claimed before it died in the request.
        Claims of other servers sharing the store stay theirs, unless older than the retention."""
        self.server_id = await asyncio.to_thread(_server_id, self.settings)
        before = utcnow() - timedelta(seconds=self.settings.idempotency_retention_seconds)
        await self.store.release_unfinished_idempotent(self.server_id, before)

    async def begin(
        self, project_id: str, key: str, method: str, path: str, query: str, body: bytes, scope: str | None = None
    ) -> Answer | None:
        """None: the caller holds the key, runs the request and calls finish() or release().
        Else the answer to give again (it waits for a claimant still running, bounded). ``scope``:
        the project whose key count is bounded (project_id is it, or starts with it and ':')."""
        scope = scope or project_id
        call = IdempotentCall(
            project_id=project_id,
            key=key,
            fingerprint=fingerprint(method, path, query, body),
            method=method,
            path=path,
            created_at=utcnow(),
            owner=self.server_id or None,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.idempotency_wait_seconds
        while True:
            try:  # the project's count is checked in the claim's own transaction: exact under races
                held = await self.store.claim_idempotent(call, scope, self.settings.idempotency_max_keys)
            except KeysExhausted:
                raise IdempotencyKeysExhausted(
                    self.settings.idempotency_max_keys, self.settings.idempotency_retention_seconds
                ) from None
            if held is None:
                self._done.setdefault((project_id, key), asyncio.Event())
                return None
            if held.fingerprint != call.fingerprint:
                raise IdempotencyKeyReused(key, held.method, held.path)
            if held.done:
                return _answer(held)
            left = deadline - loop.time()
            if left <= 0:
                raise IdempotencyInProgress(key)
            # Woken by this process's claimant; else (a claimant of another process, or one that
            # finished between the two reads) the store is asked again shortly.
            event = self._done.get((project_id, key))
            try:
                if event is None:
                    await asyncio.sleep(min(left, RECHECK_SECONDS / 4))
                else:
                    await asyncio.wait_for(event.wait(), min(left, RECHECK_SECONDS))
            except TimeoutError:
                pass

    async def finish(self, project_id: str, key: str, answer: Answer, scope: str | None = None) -> None:
        """Keeps the claimant's answer for retries; a 5xx releases the key instead. An answer past
        the cap, or past what its project (``scope``) may keep in all, is kept without its body."""
        if answer.status >= 500:
            await self.release(project_id, key)
            return
        body = answer.body
        kept = body if body is not None and len(body) <= self.settings.idempotency_max_response_kb * 1024 else None
        if kept:
            _, stored = await self.store.idempotent_usage(scope or project_id)
            if stored + len(kept) > self.settings.idempotency_max_stored_mb * 1024 * 1024:
                kept = None
        expires = utcnow() + timedelta(seconds=self.settings.idempotency_retention_seconds)
        try:
            await self.store.finish_idempotent(project_id, key, answer.status, answer.headers, kept, expires)
        finally:
            self._wake(project_id, key)

    async def release(self, project_id: str, key: str) -> None:
        try:
            await self.store.release_idempotent(project_id, key)
        finally:
            self._wake(project_id, key)

    def _wake(self, project_id: str, key: str) -> None:
        event = self._done.pop((project_id, key), None)
        if event is not None:
            event.set()

    async def sweep(self, now: datetime | None = None) -> int:
        """Forgets keys past their retention (the supervisor's reaper calls this)."""
        return await self.store.purge_idempotent(now or utcnow())


def _server_id(settings: Settings) -> str:
    """This server's id, the same across its restarts (kept in its data directory): the claims a
    restart releases are its own, not those of another server on a shared store."""
    path = settings.data_dir / "server_id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        made = "srv_" + secrets.token_hex(8)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(made + "\n")
        return made


def _answer(call: IdempotentCall) -> Answer:
    assert call.status is not None
    if call.body is None:
        raise IdempotentResponseNotKept(call.key, call.status)
    return Answer(call.status, call.headers, call.body)
