"""Sources a sandbox starts with: a git repository or a tarball URL, unpacked into its cwd.

The server fetches them (the sandbox may have no network) and hands them to the agent as a tar
stream, so they land through the same checks as any upload: nothing outside the target directory.
Only network protocols are allowed: git's ext:: and file:// would run commands or read host files.

The caller is not the host: git runs as root here, so no string from the request reaches its
command line where it could be read as an option (a revision "--pathspec-from-file=/etc/shadow"
made git read that file). URLs and revisions starting with "-" are refused when the request is
validated, every one is passed after ``--end-of-options`` or ``--`` or glued to its option, a
revision is resolved to a commit id with ``rev-parse --verify`` before anything uses it, and an
error names what failed but never repeats git's output (which could quote a host file); that goes
to the server's log. git reads no system or global config (no url rewrites or credential helpers
of the host's root), runs no hooks and copies no templates.

Every connection is checked by runtimes/outbound.py against the sandbox's egress policy and the
server's own network position (no loopback, no host networks): the tarball's through a checked
HTTP client, redirects included; git's by resolving and checking the host first and pinning git
to that address (no redirects, no proxies, no host git config rewriting the URL).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import shutil
import stat
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
# Refnames may not hold these (git check-ref-format); a commit id has none of them either.
_NOT_IN_REVISION = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{")
_COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")

log = logging.getLogger(__name__)


def _check_url(url: str, schemes: tuple[str, ...], what: str) -> str:
    if not url.startswith(schemes):
        raise ValueError(f"must be {what} URL")
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise ValueError("must not contain spaces or control characters")
    # The host is checked as Python parses it, but git decodes percent escapes before it finds the
    # host ("git://127.0.0.1%3a6379%2fx%23@example.com/" reached loopback), and brackets or
    # backslashes are read differently by each tool: the authority holds none of them.
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if not parts.hostname or any(c in parts.netloc for c in "%[]\\"):
        raise ValueError("must name a host without percent escapes, brackets or backslashes")
    if parts.scheme == "git" and "@" in parts.netloc:
        raise ValueError("a git:// URL carries no user name")
    return url


DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418}


class GitSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["git"]
    url: str = Field(description="http(s):// or git:// repository URL.")
    revision: str | None = Field(None, description="Branch, tag or commit to check out.")
    depth: int | None = Field(None, ge=1, description="Shallow clone depth (ignored with a commit revision).")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return _check_url(url, ("http://", "https://", "git://"), "an http(s):// or git://")

    @field_validator("revision")
    @classmethod
    def _revision(cls, revision: str | None) -> str | None:
        if revision is None:
            return None
        if not revision or revision.startswith("-") or len(revision) > 255 or _NOT_IN_REVISION.search(revision):
            raise ValueError(
                "must be a branch, tag or commit id: not starting with '-', without spaces, "
                "control characters, '..', '@{' or any of ~^:?*[\\"
            )
        return revision


class TarballSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["tarball"]
    url: str = Field(description="http(s):// URL of a .tar, .tar.gz or .tgz")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return _check_url(url, ("http://", "https://"), "an http(s)://")


class SnapshotSource(BaseModel):
    """Not fetched: the sandbox's writable layer starts as a copy of the project's snapshot."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["snapshot"]
    id: str = Field(pattern=r"^snp_[0-9a-z]{26}$", description="A snapshot of the caller's project.")


Source = GitSource | TarballSource | SnapshotSource


def _git_env(home: str) -> dict[str, str]:
    """git's environment: none of the server's own GIT_* variables, no system or global config,
    network protocols only (also for submodules and redirects), never a prompt."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ALLOW_PROTOCOL": GIT_PROTOCOLS,
        "GIT_PROTOCOL_FROM_USER": "0",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
    }


# Given before every git command: no hooks and no file or ext transports, whatever a config says.
GIT = ["git", "-c", "core.hooksPath=/dev/null", "-c", "protocol.file.allow=never", "-c", "protocol.ext.allow=never"]


async def _git(what: str, *args: str, home: str, cwd: str | None = None, why: str = "") -> str:
    """Runs git; on failure an error that names what failed and nothing git printed (its output
    can quote whatever it was made to read), the detail going to the server's log only."""
    proc = await asyncio.create_subprocess_exec(
        *GIT,
        *args,
        cwd=cwd,
        env=_git_env(home),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        log.warning("%s failed (exit %s): %s", what, proc.returncode, err.decode(errors="replace").strip()[-2000:])
        raise InvalidRequest("source", f"{what} failed{why}")
    return out.decode(errors="replace")


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
    if parts.scheme == "git":  # no TLS, no name to keep: connect to the address itself
        # Built from the parsed parts only: nothing of the caller's authority reaches git.
        return urlunsplit(("git", f"{address}:{port}", parts.path, parts.query, "")), options
    if address == host:  # an address literal: curl connects to it as it is
        return url, options
    # http(s) keeps its host name for TLS and the Host header; curl connects to the address.
    return url, [*options, "-c", f"http.curloptResolve={host}:{port}:{address}"]


async def git_archive(source: GitSource, fetch: Fetch, limit: int = 1 << 30) -> AsyncIterator[bytes]:
    """The checked-out repository (with its .git) as a tar stream (size-capped like a tarball: the
    caller chose the repository, and the tar is built in the server's memory)."""
    work = tempfile.mkdtemp(prefix="sandboxd-source-")
    try:
        repo = os.path.join(work, "repo")
        url, pins = await pinned_git_url(source.url, fetch)
        clone = [*pins, "clone", "--quiet", "--no-local", "--template="]
        # A shallow clone takes a branch or tag; a commit id needs the history it is in.
        shallow = bool(source.depth) and not (source.revision and _COMMIT_ID.fullmatch(source.revision))
        if shallow:
            clone.append(f"--depth={source.depth}")
            if source.revision:
                clone.append(f"--branch={source.revision}")
        await _git(f"git clone of {source.url}", *clone, "--", url, repo, home=work)
        if source.revision and not shallow:
            what, why = f"git checkout of {source.revision}", ": no such branch, tag or commit"
            resolved = await _git(
                what,
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                f"{source.revision}^{{commit}}",
                home=work,
                cwd=repo,
                why=why,
            )
            commit = resolved.strip()
            if not _COMMIT_ID.fullmatch(commit):
                raise InvalidRequest("source", f"{what} failed{why}")
            await _git(what, "checkout", "--quiet", "--detach", commit, home=work, cwd=repo)
        if await asyncio.to_thread(_tree_bytes, repo) > limit:
            raise InvalidRequest("source", f"{source.url} checks out to more than {limit} bytes")
        buf = io.BytesIO()
        await asyncio.to_thread(_tar_dir, repo, buf)
        yield buf.getvalue()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tree_bytes(path: str) -> int:
    """The bytes of a tree's regular files (links not followed)."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


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
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
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
