"""A create sent again after the connection broke, under one Idempotency-Key: the server gives a
retry the first call's answer (waiting for it if it still runs), so a retried create never makes a
second sandbox. If the server died during the first call, its restart failed the half-made sandbox
(kept in the list as failed, reason server_restarted) and the retry makes the one sandbox.
Generated into ../_sync by scripts/unasync.py."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx

from sandboxd_sdk._async._http import _check
from sandboxd_sdk._errors import SandboxError

HEADER = "Idempotency-Key"
# Waits before each retry: about 30 s in all, what a server may take to restart (its startup sweep
# takes down what a killed create left, measured at 16 s when processes ran in it).
DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
# The first failure must be one where the request may have reached the server (not a timeout: the
# message says to give it longer); after it, the server may be restarting: refusals are waited out.
FIRST = {"CONNECTION_LOST"}
LATER = {"CONNECTION_LOST", "UNREACHABLE"}


def new_key() -> str:
    return "sdk-" + secrets.token_hex(16)


async def post_idempotent(
    http: httpx.AsyncClient, path: str, key: str | None, retries: int, **kwargs: Any
) -> httpx.Response:
    """POST with the key; sent again up to ``retries`` times when the connection broke. Without a
    key it is sent once: a retry could do the work twice."""
    headers = {**kwargs.pop("headers", {}), **({HEADER: key} if key else {})}
    retries = retries if key else 0
    attempt = 0
    while True:
        try:
            return await _check(await http.post(path, headers=headers, **kwargs))
        except SandboxError as exc:
            retryable = FIRST if attempt == 0 else LATER
            if attempt >= min(retries, len(DELAYS)) or exc.code not in retryable:
                raise
            await asyncio.sleep(DELAYS[attempt])
            attempt += 1
