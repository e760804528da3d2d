"""The HTTP client every SDK object shares: base URL, key and project from the arguments or
the environment, and the server's error body turned into a SandboxError.
Generated into ../_sync by scripts/unasync.py."""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import quote

import httpx

from sandboxd_sdk._async._session import Session
from sandboxd_sdk._errors import SandboxdConnectionError, SandboxError, raise_for_status, without_password
from sandboxd_sdk._pool import shared_async_client

DEFAULT_URL = "http://127.0.0.1:8080"
PROJECT_HEADER = "X-Sandboxd-Project"
API_PREFIX = "/api/v1"


def base_url(url: str | None) -> str:
    """The server's base URL from url= or SANDBOXD_URL, as a person may write it: the API's own
    path (http://host:8080/api/v1, as in the API reference) is understood and dropped, as the SDK
    adds it. A URL without a scheme is taken as http:// only for this machine (127.0.0.1:8080):
    to another host the API key would cross the network in clear, so the choice is the user's."""
    given = (url or os.environ.get("SANDBOXD_URL") or DEFAULT_URL).strip()
    shown = without_password(given)  # what a message may repeat of it
    found = given
    schemeless = "://" not in found
    if schemeless:
        found = f"http://{found}"
    try:
        parsed = httpx.URL(found)
    except httpx.InvalidURL as exc:
        message = f"the server URL {shown!r} is not valid: {exc} (SANDBOXD_URL)"
        raise SandboxdConnectionError("BAD_URL", message, shown) from None
    # Judged on the host the request would go to, as httpx parses it: "127.0.0.1:80@elsewhere" is
    # a request to elsewhere, "127.0.0.1.elsewhere" a DNS name.
    if schemeless and (parsed.userinfo or not _loopback(parsed.host)):
        raise SandboxdConnectionError(
            "BAD_URL",
            f"the server URL {shown!r} has no scheme: write https://{shown}, or http://{shown} for a server"
            " without TLS (the API key then crosses the network in clear) (SANDBOXD_URL)",
            shown,
        )
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise SandboxdConnectionError(
            "BAD_URL", f"the server URL {shown!r} is not an http:// or https:// URL (SANDBOXD_URL)", shown
        )
    found = found.rstrip("/")
    if found.endswith(API_PREFIX):
        found = found[: -len(API_PREFIX)]
    return found


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[httpx.AsyncClient, bool]:
    """The client for this configuration, and whether the caller owns it (must close it). Over
    TCP it is the one shared by every object of the same configuration (_pool.py), which the
    caller does not close; with a transport of the caller's (tests hand in
    httpx.ASGITransport(app)) it is a new one of the caller's."""
    config = (base_url(url), api_key(key), project(project_ref), timeout)
    if transport is None:
        return shared_async_client(config, PROJECT_HEADER), False
    headers = {"Authorization": f"Bearer {config[1]}"}
    if config[2] is not None:
        headers[PROJECT_HEADER] = config[2]
    return Session(base_url=config[0], headers=headers, timeout=timeout, transport=transport), True


async def _check(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        await response.aread()
        raise_for_status(response)
    return response


def segment(value: str) -> str:
    """One path segment (an id, a name): a caller's "../x" or "?" stays inside it."""
    return quote(value, safe="")
