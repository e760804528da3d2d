"""What a facade caller, or a sandbox's own output, can make the server hold in memory: bounded.
(Found by the attack pass on the facades; each test fails without its bound.)"""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest

from sandboxd.api.facades.opensandbox.execd_files import MAX_REPLACE
from sandboxd.api.facades.vercel.interactive import MAX_SPENT, Spent
from tests.fast.conftest import SERVER_KEY, Api

pytestmark = pytest.mark.anyio
OS = "OPEN-SANDBOX-API-KEY"


async def _sandbox(api: Api) -> tuple[str, dict[str, str]]:
    r = await api.client.post("/api/v1/sandboxes", json={"image": "debian"})
    assert r.status_code in (200, 201, 202), r.text
    sid = r.json()["id"]
    r = await api.client.get(f"/opensandbox/v1/sandboxes/{sid}/endpoints/44772", headers={OS: SERVER_KEY})
    assert r.status_code == 200, r.text
    return sid, r.json()["headers"]


async def test_replace_cannot_grow_a_file_past_its_bound(api: Api) -> None:
    """A 1-byte file and 40 doublings (a -> aa) would be 1 TiB, from a body of a KiB: the growth
    of each step is known before its text is built, refused past MAX_REPLACE (the steps up to it
    are held: at most about twice that), and the file is left as it was."""
    sid, token = await _sandbox(api)
    base = f"/opensandbox/sandboxes/{sid}/proxy/44772"
    api.runtime.sandboxes[sid].files["/tmp/a"] = b"a"
    tracemalloc.start()
    r = await api.client.post(f"{base}/files/replace", json={"/tmp/a": [{"old": "a", "new": "aa"}] * 40}, headers=token)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert r.status_code == 400 and "larger than" in r.json()["message"], r.text
    assert peak < 3 * MAX_REPLACE, peak
    assert api.runtime.sandboxes[sid].files["/tmp/a"] == b"a"
    # Just inside: a few doublings are fine.
    r = await api.client.post(f"{base}/files/replace", json={"/tmp/a": [{"old": "a", "new": "aa"}] * 4}, headers=token)
    assert r.status_code == 200 and api.runtime.sandboxes[sid].files["/tmp/a"] == b"a" * 16, r.text
    # Past the count of pairs one file may be given.
    r = await api.client.post(f"{base}/files/replace", json={"/tmp/a": [{"old": "b", "new": "c"}] * 65}, headers=token)
    assert r.status_code == 400, r.text


async def test_command_logs_do_not_multiply_the_sandboxs_output(api: Api) -> None:
    """2 MiB of short lines (the sandbox chooses its output) read from past its end: the server
    holds about the output once, not a Python string per line (that was over 20x)."""
    sid, token = await _sandbox(api)
    base = f"/opensandbox/sandboxes/{sid}/proxy/44772"
    r = await api.client.post(f"{base}/command", json={"command": "x", "background": True}, headers=token)
    assert r.status_code == 200, r.text
    cid = json.loads(r.text.split("\n\n")[0])["text"]
    size = 2 * 1024 * 1024
    api.runtime.sandboxes[sid].procs[cid].output = b"a\n" * (size // 2)
    tracemalloc.start()
    r = await api.client.get(f"{base}/command/{cid}/logs", params={"cursor": size}, headers=token)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert r.status_code == 200 and r.text == "", r.text
    assert r.headers["EXECD-COMMANDS-TAIL-CURSOR"] == str(size)  # the cursor asked, past the end
    assert peak < 5 * size, peak
    # The lines after a cursor, counted on b"\n" only (a \r is no line break).
    api.runtime.sandboxes[sid].procs[cid].output = b"one\ntwo\rstill two\nthree"
    r = await api.client.get(f"{base}/command/{cid}/logs", params={"cursor": 1}, headers=token)
    assert r.text.startswith("two\rstill two\n"), r.text


async def test_a_facade_caller_without_a_key_cannot_make_the_server_parse_megabytes(api: Api) -> None:
    """FastAPI parses a body before a route's key check runs: facade bodies are capped small, so an
    anonymous 8 MiB JSON is refused (413) before it is read, let alone parsed."""
    body = b"[" + b"0," * (4 * 1024 * 1024) + b"0]"
    async with api.anonymous() as anon:
        tracemalloc.start()
        r = await anon.post("/opensandbox/v1/sandboxes", content=body, headers={"content-type": "application/json"})
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert r.status_code == 413, r.text
        assert set(r.json()) == {"code", "message"}  # in OpenSandbox's body
        assert peak < 2 * len(body), peak
        r = await anon.post("/vercel/v3/sandboxes?teamId=t", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text


def test_spent_pty_tokens_are_kept_per_session() -> None:
    """One session's callers spending tokens as fast as they can fill only that session's table:
    another session's first token still opens."""
    spent = Spent()
    expires = int(time.time()) + 600
    for i in range(MAX_SPENT):
        assert spent.take("sbx_noisy", f"{expires}.{i}")
    assert not spent.take("sbx_noisy", f"{expires}.more")  # that session waits for its tokens to expire
    assert not spent.take("sbx_noisy", f"{expires}.0")  # a spent token stays spent
    assert spent.take("sbx_other", f"{expires}.0")
