"""Sources a sandbox starts with: a git repository or a tarball URL, unpacked into its cwd.

The server fetches them (the sandbox may have no network) and hands them to the agent as a tar
stream, so they land through the same checks as any upload: nothing outside the target directory.
Only network protocols are allowed: git's ext:: and file:// would run commands or read host files.
Every connection is checked by runtimes/outbound.py against the sandbox's egress policy and the
server's own network position (no loopback, no host networks): the tarball's through a checked
HTTP client, redirects included; git's by resolving and checking the host first and pinning git
to that address (no redirects, no proxies, no host git config rewriting the URL).
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import AsyncIterator
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandboxd.errors import InvalidRequest
from sandboxd.runtimes import outbound
from sandboxd.runtimes.outbound import Fetch

GIT_PROTOCOLS = "http:https:git"
DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418}
# Nothing outside the command line picks where git connects: no proxy, no system or global config
# (url.<base>.insteadOf would send it to a host that was never checked).
GIT_ENV_DROP = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "GIT_PROXY_COMMAND")
GIT_ENV_PIN = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}


class GitSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["git"]
    url: str = Field(description="http(s):// or git:// repository URL.")
    revision: str | None = Field(None, description="Branch, tag or commit to check out.")
    depth: int | None = Field(None, ge=1, description="Shallow clone depth (ignored with a commit revision).")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://", "git://")):
            raise ValueError("must be an http(s):// or git:// URL")
        return url


class TarballSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["tarball"]
    url: str = Field(description="http(s):// URL of a .tar, .tar.gz or .tgz")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return url


Source = GitSource | TarballSource


async def _run(what: str, *argv: str, cwd: str | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if k not in GIT_ENV_DROP}
    env.update(GIT_ENV_PIN, GIT_ALLOW_PROTOCOL=GIT_PROTOCOLS, GIT_TERMINAL_PROMPT="0")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        tail = out.decode(errors="replace").strip().splitlines()[-3:]
        raise InvalidRequest("source", f"{what} failed: {' / '.join(tail)}")


async def pinned_git_url(url: str, fetch: Fetch) -> tuple[str, list[str]]:
    """The URL git is to fetch and the options that pin it to the checked address of its host."""
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        raise InvalidRequest(fetch.field, f"{url} has an invalid port") from None
    if not host or port is None:
        raise InvalidRequest(fetch.field, f"{url} names no host")
    address = await asyncio.to_thread(fetch.address, host, port)
    options = ["-c", "http.followRedirects=false"]  # a redirect would go where nothing was checked
    if address == host:
        return url, options
    if parts.scheme == "git":  # no TLS, no name to keep: connect to the address itself
        netloc = parts.netloc.rpartition("@")[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}{address}:{port}")), options
    # http(s) keeps its host name for TLS and the Host header; curl connects to the address.
    return url, [*options, "-c", f"http.curloptResolve={host}:{port}:{address}"]


async def git_archive(source: GitSource, fetch: Fetch) -> AsyncIterator[bytes]:
    """The checked-out repository (with its .git) as a tar stream."""
    work = tempfile.mkdtemp(prefix="sandboxd-source-")
    try:
        repo = os.path.join(work, "repo")
        url, pins = await pinned_git_url(source.url, fetch)
        clone = ["git", "-c", "protocol.file.allow=never", *pins, "clone", "--quiet"]
        if source.depth and not source.revision:
            clone += ["--depth", str(source.depth)]
        elif source.depth and source.revision:
            clone += ["--depth", str(source.depth), "--branch", source.revision]
        await _run(f"git clone of {source.url}", *clone, "--", url, repo)
        if source.revision and not source.depth:
            await _run(f"git checkout of {source.revision}", "git", "-C", repo, "checkout", "--quiet", source.revision)
        buf = io.BytesIO()
        await asyncio.to_thread(_tar_dir, repo, buf)
        yield buf.getvalue()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tar_dir(path: str, out: io.BytesIO) -> None:
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(path, arcname=".")


async def tarball_archive(source: TarballSource, fetch: Fetch, limit: int = 1 << 30) -> AsyncIterator[bytes]:
    """The tarball, decompressed if it is gzip, as a tar stream (size-capped)."""
    try:
        async with outbound.async_client(fetch, timeout=60, follow_redirects=True) as http:
            async with http.stream("GET", source.url) as response:
                if response.is_error:
                    raise InvalidRequest("source", f"download of {source.url} failed: HTTP {response.status_code}")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > limit:
                        raise InvalidRequest("source", f"{source.url} is larger than {limit} bytes")
    except httpx.HTTPError as exc:
        raise InvalidRequest("source", f"download of {source.url} failed: {exc}") from None
    raw = bytes(data)
    if raw[:2] == b"\x1f\x8b":
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflate.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise InvalidRequest("source", f"{source.url} is not a valid gzip file: {exc}") from None
        if len(raw) > limit or inflate.unconsumed_tail:
            raise InvalidRequest("source", f"{source.url} unpacks to more than {limit} bytes")
    yield raw
