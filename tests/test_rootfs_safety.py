"""The host writes a few files into each sandbox's root before it starts: a hostile image must not be
able to point those writes at the host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxd.errors import InvalidRequest
from sandboxd.runtimes.local.oci.rootfs import write_etc_files


def test_symlinked_etc_is_refused(tmp_path: Path) -> None:
    host_dir = tmp_path / "host-etc"
    host_dir.mkdir()
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "etc").symlink_to(host_dir)
    with pytest.raises(InvalidRequest) as err:
        write_etc_files(rootfs, {"hosts": "x"}, 1_000_000)
    assert err.value.field == "image"
    assert list(host_dir.iterdir()) == []


def test_symlinked_file_is_replaced_not_followed(tmp_path: Path) -> None:
    host_file = tmp_path / "host-hosts"
    host_file.write_text("host content")
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hosts").symlink_to(host_file)
    write_etc_files(rootfs, {"hosts": "sandbox content"}, 1_000_000)
    assert host_file.read_text() == "host content"
    written = rootfs / "etc" / "hosts"
    assert not written.is_symlink() and written.read_text() == "sandbox content"
    assert os.stat(written).st_uid == 1_000_000
