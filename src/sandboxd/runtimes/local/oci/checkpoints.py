"""Hibernate's memory kind for the local runtime: `runc checkpoint` saves a sandbox's processes
(CRIU underneath) into ``checkpoints/<id>`` under the data dir; `runc restore` brings them back.

Not proven on these machines (Debian's CRIU 3.17 fails `criu check` on their kernels, so the
server never offers it there); the choices, kept minimal so that whatever CRIU cannot save cleanly
fails the checkpoint and leaves the sandbox running:

- no --tcp-established, no --ext-unix-sk, no --file-locks, no --shell-job: an established TCP
  connection, a unix socket connected to a process outside the sandbox (a command or file
  transfer in flight through the agent), a held file lock or a terminal makes CRIU refuse the
  dump. The caller gets the error; nothing was stopped.
- the agent's host-facing socket and the log FIFO are the container's stdio (fd 0 a listening
  unix socket bound on the host, fds 1 and 2 a named FIFO): no --ext-unix-sk or --external for
  them. runc's restore hands its own stdio to CRIU in place of the saved ones (--inherit-fd) only
  where they were anonymous pipes (runc's descriptors.json, "pipe:[...]"); ours are not, so CRIU
  must save and reopen them itself, which is the first thing to prove on a host where `criu
  check` passes. If it refuses, the checkpoint fails cleanly; the fix then is a CRIU config file
  for the sandbox (runc reads one named by the `org.criu.config` annotation) with `external` on
  the dump and `inherit-fd` on the restore, or anonymous stdio for the agent.
- --empty-ns network: the network namespace is not saved. The restore makes an empty one (no
  interface but a down loopback: nothing can leave it) and the server wires it as a boot does,
  with a new address and the sandbox's egress policy. Connections were refused at the dump.
- the user namespace is a fresh one of the sandbox's own owner (userns.py), named by path in
  config.json as at boot (written again before the restore): runc has CRIU join it (its join-ns,
  which CRIU itself calls not fully tested for user namespaces). The network and pid namespaces
  have no path in config.json, so runc marks none of them external.
- only the runc class: crun's checkpoint has its own options (and its create its own wrapper on
  hybrid hosts), not handled here.

The image is kept while the sandbox is hibernated (a stop or a restart's reconcile leaves it), and
removed once the restore succeeded, and by the delete and the startup sweep (``ids``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from sandboxd.runtimes import criu

CHECKPOINT_CLASS = "runc"  # the only class whose checkpoint and restore are driven here
CHECKPOINTS_DIR = "checkpoints"


async def unavailable(default_class: str) -> str | None:
    """None when new sandboxes of this server can be checkpointed; otherwise why not. The host's
    answer (`criu check`) first: where CRIU fails, that is the reason."""
    reason = await criu.unavailable()
    if reason is not None:
        return reason
    if default_class != CHECKPOINT_CLASS:
        return f"sandboxes run on {default_class}: only {CHECKPOINT_CLASS} sandboxes are checkpointed"
    return None


def checkpoint_args(container_id: str, image: Path) -> list[str]:
    """`runc checkpoint`'s arguments (after --root): the container ends once saved."""
    return [
        "checkpoint",
        "--image-path",
        str(image),
        "--work-path",
        str(image / "work"),
        "--empty-ns",
        "network",
        container_id,
    ]


def restore_args(container_id: str, image: Path, bundle: Path, pid_file: Path) -> list[str]:
    """`runc restore`'s arguments (after --root): detached, its init's pid written as create's."""
    return [
        "restore",
        "--detach",
        "--image-path",
        str(image),
        "--work-path",
        str(image / "work"),
        "--empty-ns",
        "network",
        "--bundle",
        str(bundle),
        "--pid-file",
        str(pid_file),
        container_id,
    ]


class CheckpointImages:
    """The saved images, one directory per sandbox id under ``<data_dir>/checkpoints``."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / CHECKPOINTS_DIR

    def path(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    def fresh(self, sandbox_id: str) -> Path:
        """An empty image directory (a leftover of a failed try removed first). Root only: a
        process image holds the sandbox's memory, its secrets included."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        image = self.path(sandbox_id)
        self.remove(sandbox_id)
        image.mkdir(mode=0o700)
        (image / "work").mkdir(mode=0o700)
        return image

    def exists(self, sandbox_id: str) -> bool:
        return (self.path(sandbox_id) / "inventory.img").is_file()  # the index every CRIU dump writes

    def remove(self, sandbox_id: str) -> None:
        image = self.path(sandbox_id)
        if image.is_dir() and not image.is_symlink():
            shutil.rmtree(image)
        else:
            image.unlink(missing_ok=True)

    def ids(self) -> set[str]:
        return {p.name for p in self.root.iterdir()} if self.root.is_dir() else set()
