"""Shared by the Vercel session tests: a native sandbox as a Vercel session, and the official SDK's
session handle on it.

A session is a native sandbox labelled as a Vercel sandbox's (`vercel.sandbox=<name>`, what the
facade's create sets), made here with the native SDK, and the Vercel SDK's own session class
(`SandboxRuntimeSession`, what its Sandbox hands out as `.session`) is built on its id: every
command and fs call then goes through the SDK's own client code, unchanged, to the facade."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
from vercel.sandbox import SandboxClient
from vercel.sandbox._internal.async_runtime import SandboxRuntimeSession
from vercel.sandbox._internal.options import SandboxCredentials, SandboxServiceOptions
from vercel.sandbox._internal.state import SandboxRuntimeSessionState
from vercel.sandbox._internal.sync_runtime import SyncSandboxRuntimeSession
from vercel.sandbox.sync import SandboxServiceOptions as SyncSandboxServiceOptions
from vercel.sandbox.sync import SyncSandboxClient

from tests.conftest import Server

TEAM = "org_default"  # the server key's organization: the facade refuses any other


def labels(name: str) -> dict[str, str]:
    """The native labels that make a sandbox the session of the Vercel sandbox `name`."""
    return {"vercel.sandbox": name}


def options(server: Server, key: str | None = None) -> SandboxServiceOptions:
    async def credentials() -> SandboxCredentials:
        return SandboxCredentials(token=key or server.key, team_id=TEAM, project_id="prj_test")

    return SandboxServiceOptions(base_url=f"{server.url}/vercel", credentials_factory=credentials)


@asynccontextmanager
async def vercel_session(server: Server, session_id: str, cwd: str = "/") -> AsyncIterator[SandboxRuntimeSession]:
    client = SandboxClient.create(options=options(server))
    try:
        state = SandboxRuntimeSessionState(id=session_id, cwd=cwd)
        yield SandboxRuntimeSession(payload=state, service=client._service)
    finally:
        await client.aclose()


@contextmanager
def sync_vercel_session(server: Server, session_id: str, cwd: str = "/") -> Iterator[SyncSandboxRuntimeSession]:
    """The sync SDK's session handle (not entered as a context manager: that would stop the session)."""

    def credentials() -> SandboxCredentials:
        return SandboxCredentials(token=server.key, team_id=TEAM, project_id="prj_test")

    client = SyncSandboxClient.create(
        options=SyncSandboxServiceOptions(base_url=f"{server.url}/vercel", credentials_factory=credentials)
    )
    try:
        state = SandboxRuntimeSessionState(id=session_id, cwd=cwd)
        yield SyncSandboxRuntimeSession(payload=state, service=client._service)
    finally:
        client.close()


def raw(server: Server, key: str | None = None, **kwargs: Any) -> httpx.Client:
    """httpx as the SDK sends it: Bearer key, teamId on every call."""
    headers = {"Authorization": f"Bearer {key or server.key}"} if key != "" else {}
    return httpx.Client(
        base_url=f"{server.url}/vercel/v2/sandboxes/sessions",
        headers=headers,
        params={"teamId": TEAM},
        timeout=60,
        **kwargs,
    )


def native_exec(server: Server, sandbox_id: str, command: str) -> dict[str, Any]:
    with server.client() as http:
        r = http.post(f"/api/v1/sandboxes/{sandbox_id}/commands", json={"command": command})
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result
