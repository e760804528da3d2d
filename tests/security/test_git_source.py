"""An API caller is not the host: a source's URL or revision must never reach git's command line as
an option (`--pathspec-from-file=/etc/shadow` made the server's git, as root, read that file and the
400 quoted it), and no error repeats what git printed."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from sandboxd.errors import InvalidRequest
from sandboxd.runtimes.outbound import Fetch, OutboundRules
from sandboxd.services.sources import GitSource, git_archive
from tests.conftest import Server
from tests.test_sources import git_server  # noqa: F401 - the fixture: a git daemon on loopback


@pytest.fixture
def secret(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A host file only root can read, holding a marker that must never come back."""
    marker = f"HOST-SECRET-{uuid.uuid4().hex}"
    path = tmp_path / "shadow"
    path.write_text(f"{marker}\nroot:$6$hash:19000:0:99999:7:::\n")
    path.chmod(0o600)
    yield path, marker


def hostile_revisions(secret: Path) -> list[str]:
    return [
        f"--pathspec-from-file={secret}",
        f"--pathspec-from-file {secret}",
        f"-ccore.hooksPath={secret.parent}",
        f"-c core.pager=cat {secret}",
        f"--output={secret.parent / 'written'}",
        f"HEAD:{secret}",
        "main\n--pathspec-from-file=/etc/shadow",
    ]


def hostile_urls(secret: Path, git_url: str) -> list[str]:
    return [
        f"--upload-pack=cat {secret}",
        f"{git_url}/project --upload-pack=cat {secret}",
        f"ext::sh -c cat% {secret}",
        f"file://{secret.parent}",
        f"-u cat {secret}",
        "ssh://git@127.0.0.1/project",
    ]


def test_hostile_revisions_and_urls_are_refused_naming_the_field(
    server: Server,
    git_server: str,  # noqa: F811
    secret: tuple[Path, str],
) -> None:
    path, marker = secret
    revisions = [*hostile_revisions(path), f"main@{{{path}}}"]
    cases = [("revision", {"url": f"{git_server}/project", "revision": rev}) for rev in revisions]
    cases += [("url", {"url": url}) for url in hostile_urls(path, git_server)]
    with server.client() as http:
        for field, source in cases:
            r = http.post("/api/v1/sandboxes", json={"source": {"type": "git", **source}, "metadata": {"t": "gitevil"}})
            assert r.status_code == 400, (source, r.text)
            body = r.json()
            assert body["field"].startswith("source") and body["field"].endswith(field), (source, body)
            assert marker not in r.text
        assert http.get("/api/v1/sandboxes", params={"label": "t=gitevil"}).json()["items"] == []
    assert not (path.parent / "written").exists()
    assert marker not in server.log.read_text()


def test_git_output_is_never_echoed(server: Server, git_server: str) -> None:  # noqa: F811
    with server.client() as http:
        r = http.post(
            "/api/v1/sandboxes", json={"source": {"type": "git", "url": f"{git_server}/project", "revision": "nope"}}
        )
    assert r.status_code == 400 and r.json()["field"] == "source", r.text
    # A fixed message, nothing of git's own words.
    assert r.json()["message"] == "git checkout of nope failed: no such branch, tag or commit"


def test_a_revision_that_skips_validation_is_still_no_option(git_server: str, secret: tuple[Path, str]) -> None:  # noqa: F811
    """Past the request's validation (a future caller that builds GitSource itself), git still reads
    the revision only as a revision and the error quotes nothing it read."""
    path, marker = secret

    async def fetch(revision: str) -> None:
        source = GitSource.model_construct(type="git", url=f"{git_server}/project", revision=revision, depth=None)
        loopback = Fetch(OutboundRules(allow=(IPv4Network("127.0.0.0/8"),)), "source.url")
        async for _ in git_archive(source, loopback):
            pass

    for revision in hostile_revisions(path):
        with pytest.raises(InvalidRequest) as err:
            asyncio.run(fetch(revision))
        assert err.value.field == "source" and marker not in err.value.message, err.value.message
    assert not (path.parent / "written").exists()


def test_a_commit_id_with_depth_still_checks_it_out(server: Server, git_server: str) -> None:  # noqa: F811
    """Depth is ignored with a commit id (a shallow clone takes branches and tags only)."""
    listed = subprocess.run(
        ["git", "ls-remote", f"{git_server}/project", "refs/tags/v1"], capture_output=True, text=True
    )
    commit = listed.stdout.split()[0]
    source = {"type": "git", "url": f"{git_server}/project", "revision": commit, "depth": 1}
    with server.create(cwd="/work", source=source) as sb:
        assert sb.files.read("/work/README") == b"version one\n"


def test_a_repository_past_the_size_cap_is_refused(git_server: str) -> None:  # noqa: F811
    """The caller picks the repository and the server tars it in memory: it is capped like a tarball."""
    source = GitSource(type="git", url=f"{git_server}/project")
    loopback = Fetch(OutboundRules(allow=(IPv4Network("127.0.0.0/8"),)), "source.url")

    async def fetch(limit: int) -> int:
        return sum([len(chunk) async for chunk in git_archive(source, loopback, limit=limit)])

    assert asyncio.run(fetch(1 << 30)) > 0
    with pytest.raises(InvalidRequest, match="checks out to more than 10 bytes") as err:
        asyncio.run(fetch(10))
    assert err.value.field == "source"
