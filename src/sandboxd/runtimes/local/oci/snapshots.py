"""Snapshots of sandboxes' writable layers: a read-only btrfs snapshot ``scratch/<snp_id>`` of the
sandbox's subvolume, and beside it in ``snapshots/<snp_id>/image`` the image marker it is stacked
on (the image and its extra layers), which keeps that image and its layers from being deleted or
collected while the snapshot exists (rootfs.images_in_use reads these markers too).

A snapshot's content is the sandbox's output: hostile. Nothing here reads or writes inside it on
the host; it is made, copied and removed by subvolume ioctls only (scratch.py). The marker is the
server's, copied from the sandbox's home (written there by create).

The marker is written before the subvolume and removed after it: whatever a killed server leaves,
an image in use is never unmarked. ``ids`` names both halves, so the startup sweep finds either.
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
            self._hold("subvolume")
        except BaseException:
            self.remove(snapshot_id)
            raise
        return marker

    def _hold(self, step: str) -> None:
        if os.environ.get(HOLD) == step:
            (self.root.parent / "snapshot-held").touch()
            time.sleep(60)

    def restore(self, snapshot_id: str, sandbox_id: str, limit_mb: int) -> Path:
        """A writable copy of the snapshot as the sandbox's subvolume, limited to limit_mb."""
        try:
            return self.scratch.snapshot(snapshot_id, sandbox_id, limit_mb)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise InvalidRequest("source", f"snapshot {snapshot_id} no longer exists") from None
            raise

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
