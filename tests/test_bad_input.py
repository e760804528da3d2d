"""Bad images get a 4xx naming the field, and nothing on the host is touched: the real runtime's own
checks. The API's input checks (fields, commands, files, unknown sandboxes) are in the fast tier,
tests/fast/test_validation.py."""

from __future__ import annotations

import pytest

from tests.conftest import Server


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        ({"image": "no-such-image"}, 400, "image", "not available"),
        ({"image": "../../etc"}, 400, "image", "invalid repository name"),
    ],
)
def test_create_rejects_bad_images(
    server: Server, body: dict[str, object], status: int, field: str, words: str
) -> None:
    sandbox_dirs = server.data_dir / "sandboxes"
    dirs_before = set(sandbox_dirs.iterdir()) if sandbox_dirs.exists() else set()
    with server.client() as http:
        before = len(http.get("/api/v1/sandboxes", params={"limit": 1000}).json()["items"])
        r = http.post("/api/v1/sandboxes", json=body)
        assert r.status_code == status, r.text
        err = r.json()
        assert err["field"] == field and words in err["message"], err
        assert err["request_id"] == r.headers["X-Request-ID"]
        # Nothing was made: no record, no sandbox directory.
        assert len(http.get("/api/v1/sandboxes", params={"limit": 1000}).json()["items"]) == before
    made = (set(sandbox_dirs.iterdir()) if sandbox_dirs.exists() else set()) - dirs_before
    assert not made, made
