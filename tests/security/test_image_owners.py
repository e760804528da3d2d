"""An image decides its files' owners, and the host maps them: no owner may land outside the sandbox
uid range, where the uids that own the sandboxes' user namespaces are (a setuid file owned by one,
run by any host user, would hold every capability over that sandbox's namespaces)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sandboxd.runtimes.local.images.layers import shift_ownership

BASE, SIZE = 1_000_000, 65536


def make(path: Path, uid: int, gid: int, mode: int) -> None:
    path.write_bytes(b"#!/bin/sh\n")
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def test_owners_past_the_range_become_nobody_without_setuid(tmp_path: Path) -> None:
    make(tmp_path / "root-suid", 0, 0, 0o4755)
    make(tmp_path / "owner-uid", BASE + SIZE + 5, BASE + SIZE + 5, 0o6755)  # a namespace owner's uid
    make(tmp_path / "high", 70_000, 100, 0o6755)  # an id the mapping does not have
    make(tmp_path / "shifted", BASE + 1000, BASE + 1000, 0o4755)  # a committed upper dir's file

    shift_ownership(tmp_path, BASE, SIZE)

    def owner(name: str) -> tuple[int, int, int]:
        st = os.lstat(tmp_path / name)
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    assert owner("root-suid") == (BASE, BASE, 0o4755)
    assert owner("owner-uid") == (BASE + 65534, BASE + 65534, 0o755)
    assert owner("high") == (BASE + 65534, BASE + 100, 0o2755)
    assert owner("shifted") == (BASE + 1000, BASE + 1000, 0o4755)
    for name in os.listdir(tmp_path):
        st = os.lstat(tmp_path / name)
        assert BASE <= st.st_uid < BASE + SIZE and BASE <= st.st_gid < BASE + SIZE, name
