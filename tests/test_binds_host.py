"""Bind staging against real mounts (root, no sandbox): the data dir reached through a mount below
an allowed root, roots that hold the data dir, the staging mount's propagation and flags, and the
mount table's escapes (oci/binds.py, oci/mounts.py)."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.errors import InvalidRequest
from sandboxd.runtimes.local.oci import binds, mounts, scratch

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
MS_BIND, MS_SHARED = 4096, 1 << 20


def _mount(source: str, target: Path, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _libc.mount(source.encode(), str(target).encode(), fstype and fstype.encode(), flags, data and data.encode()):
        raise OSError(ctypes.get_errno(), f"mount {target}")


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of the test's own, shared (as / is on a systemd host), every mount below it removed after."""
    _mount("sbxd-test", tmp_path, "tmpfs", 0, "size=16m")
    _mount("", tmp_path, None, MS_SHARED)
    try:
        yield tmp_path
    finally:
        for point in mounts.mounts_under(tmp_path):
            mounts.unmount(point)
        mounts.unmount(tmp_path)


def _mountinfo(target: Path) -> tuple[str, str]:
    """(per-mount options, optional fields) of target's line in /proc/self/mountinfo."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[4] == str(target):
            optional = " ".join(fields[6 : fields.index("-")])
            return fields[5], optional
    raise AssertionError(f"{target} is not mounted")


def test_the_data_dir_mounted_below_an_allowed_root_is_refused(base: Path) -> None:
    allowed, data = base / "allowed", base / "data"
    (allowed / "x").mkdir(parents=True)
    (data / "sandboxes").mkdir(parents=True)
    _mount(str(data), allowed / "x", None, MS_BIND)  # by another path: a string compare misses it
    with pytest.raises(InvalidRequest, match="crosses a mount point below"):
        binds.check([allowed], f"{allowed}/x/sandboxes", "volumes[0].host_path", (data,))
    with pytest.raises(InvalidRequest, match="server's own data"):  # the mount itself allowed: by inode
        binds.check([allowed / "x"], f"{allowed}/x/sandboxes", "volumes[0].host_path", (data,))


def test_roots_that_are_or_hold_or_lie_in_the_data_dir_are_refused_at_start(base: Path) -> None:
    data, elsewhere, alias = base / "srv" / "data", base / "other", base / "alias"
    (data / "sandboxes").mkdir(parents=True)
    elsewhere.mkdir()
    alias.mkdir()
    _mount(str(data), alias, None, MS_BIND)
    binds.check_roots([elsewhere], (data,))
    for root, words in (
        (Path("/"), "bind_allow: / would"),
        (base / "srv", "holds or lies in"),
        (data / "sandboxes", "holds or lies in"),
        (alias, "holds or lies in"),  # the data dir under another name
        (Path("relative"), "not an absolute path"),
    ):
        with pytest.raises(ValueError, match=words):
            binds.check_roots([elsewhere, root], (data,))


def test_staging_is_private_nosuid_nodev_and_keeps_the_sources_flags(base: Path) -> None:
    allowed = base / "allowed"
    allowed.mkdir()
    _mount("src", allowed, "tmpfs", 8 | 1024, "size=1m")  # noexec, noatime: the source's own
    (allowed / "d").mkdir()
    home = base / "home"
    home.mkdir()
    for i, read_only in enumerate((False, True)):
        target = home / "binds" / str(i)
        binds.stage([allowed], f"{allowed}/d", "f", target, read_only)
        options, optional = _mountinfo(target)
        flags = set(options.split(","))
        assert {"nosuid", "nodev", "noexec", "noatime", "ro" if read_only else "rw"} <= flags, options
        assert "shared:" not in optional, optional  # under a shared parent, it would propagate


def test_mount_points_with_escaped_characters_are_found(base: Path) -> None:
    odd = base / "a b\tc\nd\\e"
    odd.mkdir()
    _mount("odd", odd, "tmpfs", 0, "size=1m")
    assert mounts.mounts_under(base) == [odd]
    assert mounts.is_mount_point(odd) and scratch.is_mount_point(odd)
    mounts.unmount(odd)
    assert mounts.mounts_under(base) == []
