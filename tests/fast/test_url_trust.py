"""SANDBOXD_URL as a person may mistype it, against what the SDK promises: a URL without a scheme is
taken as plain http:// only when it reaches this machine (elsewhere the API key would cross the
network in clear), and the SDK's errors never repeat a password written into the URL (messages end up
in logs, CI output and bug reports)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sandboxd_sdk import Client, SandboxdConnectionError

from tests.conftest import free_port


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:80@evil.example",  # userinfo "127.0.0.1:80", host evil.example
        "localhost:8080@evil.example:8080",
        "[::1]@evil.example",
        "127.0.0.1.evil.example:8080",  # a DNS name that starts like a loopback address
        "localhost.evil.example:8080",
    ],
)
def test_a_url_without_scheme_to_another_host_is_refused(url: str) -> None:
    with pytest.raises(SandboxdConnectionError) as err:
        Client(url=url, api_key="the-key").sandboxes()
    assert err.value.code == "BAD_URL", str(err.value)
    assert "has no scheme" in str(err.value) or "not valid" in str(err.value), str(err.value)


@pytest.mark.parametrize("url", ["127.0.0.1:{port}", "localhost:{port}", "127.0.0.2:{port}"])
def test_a_url_without_scheme_to_this_machine_still_works(url: str) -> None:
    # Nothing listens there: the error says the connection was refused, which proves the URL was taken.
    port = free_port()
    with pytest.raises(SandboxdConnectionError) as err:
        Client(url=url.format(port=port), api_key="the-key").sandboxes()
    assert err.value.code == "UNREACHABLE" and "connection refused" in str(err.value), str(err.value)


def test_a_password_in_the_url_is_not_repeated_in_errors() -> None:
    port = free_port()
    url = f"http://alice:hunter2-secret@127.0.0.1:{port}"
    with pytest.raises(SandboxdConnectionError) as err:
        Client(url=url, api_key="the-key").sandboxes()
    assert "hunter2-secret" not in str(err.value) and "hunter2-secret" not in err.value.url, str(err.value)
    assert f"127.0.0.1:{port}" in str(err.value)
    # and the CLI's line, which a user pastes into a bug report
    env = {**os.environ, "SANDBOXD_API_KEY": "the-key", "SANDBOXD_URL": url}
    result = subprocess.run(
        [sys.executable, "-m", "sandboxd_sdk.cli.main", "ls"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "connection refused" in result.stderr, result.stderr
    assert "hunter2-secret" not in result.stderr, result.stderr
    # written without a scheme, a non-loopback URL's error does not repeat it either
    with pytest.raises(SandboxdConnectionError) as bad:
        Client(url="alice:hunter2-secret@sandboxd.example:8080", api_key="the-key").sandboxes()
    assert "hunter2-secret" not in str(bad.value), str(bad.value)
