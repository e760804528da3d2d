"""The host-path check of binds on its own (oci/binds.py), against a real directory tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd.errors import InvalidRequest
from sandboxd.runtimes.local.oci import binds


def test_paths_are_resolved_beneath_the_allowed_root_and_never_into_private_dirs(tmp_path: Path) -> None:
    allowed, data = tmp_path / "allowed", tmp_path / "allowed" / "srv" / "data"
    (allowed / "ok" / "sub").mkdir(parents=True)
    data.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (allowed / "ok" / "inner").symlink_to("sub")  # stays beneath: allowed
    (allowed / "ok" / "esc").symlink_to("../../outside")
    (allowed / "abs").symlink_to("/etc")
    (allowed / "via").symlink_to("srv/data")  # beneath, but into the server's data
    roots, private = [allowed], (data,)
    for fine in ("ok", "ok/inner", "ok/sub"):
        binds.check(roots, f"{allowed}/{fine}", "f", private)
    refusals = {
        "ok/esc": "leads out of",
        "abs": "leads out of",
        "ok/missing": "does not exist",
        "srv/data": "server's own data",
        "srv": "server's own data",  # holds it
        "via": "server's own data",
    }
    for path, words in refusals.items():
        with pytest.raises(InvalidRequest) as refused:
            binds.check(roots, f"{allowed}/{path}", "volumes[0].host_path", private)
        assert refused.value.field == "volumes[0].host_path" and words in refused.value.message, path
    with pytest.raises(InvalidRequest, match="operator allows"):
        binds.check(roots, str(tmp_path / "outside"), "f", private)
    with pytest.raises(InvalidRequest, match="none are allowed"):
        binds.check([], str(allowed), "f")
    with pytest.raises(InvalidRequest, match="server's own data"):  # the root itself holds it
        binds.check(roots, str(allowed), "f", private)
