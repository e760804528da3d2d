"""The HTTP client every SDK object shares: base URL, key and project from the arguments or
the environment, and the server's error body turned into a SandboxError.
GENERATED from ../_async by scripts/unasync.py: do not edit."""

from __future__ import annotations

import os
from urllib.parse import quote

import httpx

from sandboxd_sdk._errors import SandboxError, raise_for_status
from sandboxd_sdk._pool import shared_client

DEFAULT_URL = "http://127.0.0.1:8080"
PROJECT_HEADER = "X-Sandboxd-Project"


def base_url(url: str | None) -> str:
    return url or os.environ.get("SANDBOXD_URL", DEFAULT_URL)


def api_key(key: str | None) -> str:
    found = key or os.environ.get("SANDBOXD_API_KEY")
    if not found:
        raise SandboxError("UNAUTHORIZED", "no API key: pass api_key= or set SANDBOXD_API_KEY")
    return found


def project(name: str | None) -> str | None:
    """The project to work in (its id or name) for a key that is not bound to one: the server's
    key or an organization's. None: the organization's ``default`` project."""
    return name or os.environ.get("SANDBOXD_PROJECT") or None


def _client(
    url: str | None,
    key: str | None,
    timeout: float,
    project_ref: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> tuple[httpx.Client, bool]:
    """The client for this configuration, and whether the caller owns it (must close it). Over
    TCP it is the one shared by every object of the same configuration (_pool.py), which the
    caller does not close; with a transport of the caller's (tests hand in
    httpx.ASGITransport(app)) it is a new one of the caller's."""
    config = (base_url(url), api_key(key), project(project_ref), timeout)
    if transport is None:
        return shared_client(config, PROJECT_HEADER), False
    headers = {"Authorization": f"Bearer {config[1]}"}
    if config[2] is not None:
        headers[PROJECT_HEADER] = config[2]
    return httpx.Client(base_url=config[0], headers=headers, timeout=timeout, transport=transport), True


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        response.read()
        raise_for_status(response)
    return response


def segment(value: str) -> str:
    """One path segment (an id, a name): a caller's "../x" or "?" stays inside it."""
    return quote(value, safe="")
