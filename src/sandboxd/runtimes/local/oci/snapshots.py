"""Snapshots of sandboxes' writable layers: a read-only btrfs snapshot ``scratch/<snp_id>`` of the
sandbox's subvolume, and beside it in ``snapshots/<snp_id>/image`` the image marker it is stacked
on (the image and its extra layers), which keeps that image and its layers from being deleted or
collected while the snapshot exists (rootfs.images_in_use reads these markers too).

A snapshot's content is the sandbox's output: hostile. Nothing here reads or writes inside it on
the host; it is made, copied and removed by subvolume ioctls only (scratch.py). The marker is the
server's, copied from the sandbox's home (written there by create).

The marker is written before the subvolume and removed after it: whatever a killed server leaves,
an image in use is never unmarked. ``ids`` names both halves, so the startup sweep finds either.

Disk limits across copies: under simple quotas (scratch.py) a writable copy's qgroup is charged
only what the copy itself writes, not the extents it shares with its source, so its limit alone
would let a chain of forks each hold a fresh disk_mb. Beside the marker the snapshot records
``inherited``: the bytes of its content no qgroup of a copy will charge (the source sandbox's own
qgroup plus what that sandbox itself inherited, an upper bound: a deleted inherited file still
counts). A copy's qgroup limit is its disk_mb less that, and the copy records it in its home for
its own snapshots. Full qgroups charge a copy all it references: nothing is inherited there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from sandboxd.errors import InvalidRequest
from sandboxd.runtimes.local.oci import rootfs
from sandboxd.runtimes.local.oci.scratch import SNAPSHOT_NAME, ScratchVolume

MARKERS = "snapshots"  # <data_dir>/snapshots/<snp_id>/image
INHERITED = rootfs.INHERITED  # bytes a copy's qgroup does not charge: in a snapshot's and a sandbox's home
MIN_FREE_MB = 1  # what a copy must be able to write at least (the files its start puts in it)
# Tests only (tests/test_snapshots.py kills the server here): "marker" or "subvolume" names the
# step after which take() writes <data_dir>/snapshot-held and waits, for the test's kill -9.
HOLD = "SANDBOXD_TEST_SNAPSHOT_HOLD"


class SnapshotFiles:
    def __init__(self, data_dir: Path, scratch: ScratchVolume) -> None:
        self.root = data_dir / MARKERS
        self.scratch = scratch

    def take(self, sandbox_home: Path, sandbox_id: str, snapshot_id: str) -> dict[str, Any]:
        """Snapshots the sandbox's writable layer (the caller has frozen or stopped it); returns
        its marker {"image", "layers": all of them, the image's first}."""
        marker = rootfs.read_marker(sandbox_home)
        home = self.root / snapshot_id
        self.root.mkdir(mode=0o700, exist_ok=True)
        home.mkdir(mode=0o700)
        try:
            (home / rootfs.MARKER).write_text(json.dumps(marker))
            self._hold("marker")
            self.scratch.snapshot(sandbox_id, snapshot_id, None)
            inherited = 0
            if self.scratch.simple_quotas():  # the snapshot ioctl committed: the count is current
                inherited = read_inherited(sandbox_home) + self.scratch.used_bytes(sandbox_id)
            (home / INHERITED).write_text(str(inherited))
            self._hold("subvolume")
        except BaseException:
            self.remove(snapshot_id)
            raise
        return marker

    def _hold(self, step: str) -> None:
        if os.environ.get(HOLD) == step:
            (self.root.parent / "snapshot-held").touch()
            time.sleep(60)

    def restore(self, snapshot_id: str, sandbox_id: str, sandbox_home: Path, limit_mb: int) -> Path:
        """A writable copy of the snapshot as the sandbox's subvolume, holding at most limit_mb
        in all: what it inherits counts. A 400 if the copy alone leaves no room."""
        inherited = read_inherited(self.root / snapshot_id)
        room = limit_mb - -(-inherited >> 20)  # whole MiB, rounded against the sandbox
        if room < MIN_FREE_MB:
            raise InvalidRequest(
                "disk_mb",
                f"snapshot {snapshot_id} already holds {-(-inherited >> 20)} MB: a sandbox made from it "
                f"needs a disk_mb above that (it has {limit_mb})",
            )
        try:
            volume = self.scratch.snapshot(snapshot_id, sandbox_id, room)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise InvalidRequest("source", f"snapshot {snapshot_id} no longer exists") from None
            raise
        (sandbox_home / INHERITED).write_text(str(inherited))
        return volume

    def remove(self, snapshot_id: str) -> None:
        if not SNAPSHOT_NAME.match(snapshot_id):
            return
        self.scratch.remove(snapshot_id)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.root / snapshot_id)

    def ids(self) -> set[str]:
        """Snapshots with a subvolume or a marker here."""
        try:
            marked = {name for name in os.listdir(self.root) if SNAPSHOT_NAME.match(name)}
        except FileNotFoundError:
            marked = set()
        return marked | self.scratch.snapshot_ids()


def read_inherited(home: Path) -> int:
    """The bytes recorded in home (a snapshot's or a sandbox's; server-written); 0 if none."""
    try:
        return int((home / INHERITED).read_text())
    except FileNotFoundError:
        return 0
