"""Hibernate's memory kind for the local runtime: `runc checkpoint` saves a sandbox's processes
(CRIU underneath) into ``checkpoints/<id>`` under the data dir; `runc restore` brings them back.

Not proven on these machines (Debian's CRIU 3.17 fails `criu check` on their kernels, so the
server never offers it there); the choices, kept minimal so that whatever CRIU cannot save cleanly
fails the checkpoint and leaves the sandbox running:

- no --tcp-established, no --ext-unix-sk, no --file-locks, no --shell-job: an established TCP
  connection, a unix socket connected to a process outside the sandbox (a command or file
  transfer in flight through the agent), a held file lock or a terminal makes CRIU refuse the
  dump. The caller gets the error; nothing was stopped.
- the agent's stdio crosses from the host: fd 0 is a listening unix socket bound at
  ``sandboxes/<id>/agent.sock`` (a host path the container's mount namespace cannot see), fds 1
  and 2 one open file of the named FIFO ``sandboxes/<id>/log.fifo`` (host-side too). CRIU would
  refuse to dump a file it cannot resolve in the dumped mount namespace, and at restore must not
  reopen the old ones (the socket's path is bound anew at each boot, the FIFO's reader is the new
  server's). runc's restore swaps in its own stdio (--inherit-fd) only where they were anonymous
  pipes (descriptors.json "pipe:[...]"), which ours are not. So each runc sandbox's config.json
  names a CRIU config file (the ``org.criu.config`` annotation, read by runc at both checkpoint and
  restore; ``criu.conf`` in its image directory), written just before each (criu_config()):
    dump:    external file[<mnt_id>:<inode>]     the FIFO, "an opened file that cannot be resolved
                                                 from the current mount namespace"
    restore: inherit-fd fd[0]:socket[<inode>]     runc's stdin, which _boot makes the new listener
             inherit-fd fd[1]:file[<mnt_id>:<inode>], and fd[2] the same: runc's stdout, the new
                                                 FIFO writer (runc gives criu swrk its own stdio)
  the identities read from the init's /proc/<pid>/fd and fdinfo at the checkpoint and kept in the
  image (stdio.json). The listening socket is not declared external at the dump: CRIU has no
  external kind for a listening socket and dumps it by its name (SIOCUNIXFILE gives it the mount);
  inherit-fd then takes it over at restore before CRIU would bind the name. Unproven (CRIU does not
  run here): if a CRIU refuses the socket, the checkpoint fails cleanly (tests/
  test_checkpoint_failure.py proves that path), and the next step is anonymous stdio for the agent
  (a socketpair the server keeps the other end of, passed as "pipe"-like inherited fds).
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

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from sandboxd.runtimes import criu

CHECKPOINT_CLASS = "runc"  # the only class whose checkpoint and restore are driven here
CHECKPOINTS_DIR = "checkpoints"
CRIU_CONFIG = "criu.conf"  # in the image directory, named by the org.criu.config annotation
STDIO = "stdio.json"  # the agent's stdio identities at the dump, for the restore's inherit-fd
ANNOTATION = "org.criu.config"


def stdio_of(pid: int, socket_path: Path, proc: Path = Path("/proc")) -> dict[str, Any]:
    """The identities CRIU knows the agent's host-facing files by: its listening socket's inode
    and the log FIFO's mount id and inode. The agent moves the socket it got as stdin to a
    descriptor of its own and makes fd 0 /dev/null (agent/main.go), so the socket is found by its
    bound path in the host's socket table (the server made it, in the host's network namespace)
    and must be one the init holds; the FIFO stays its fd 1 (2 and the agent's log fd share it)."""
    inode = _listening_inode(socket_path, proc)
    if f"socket:[{inode}]" not in _held(proc / str(pid) / "fd"):
        raise ValueError(f"the sandbox's init does not hold its agent socket {socket_path}")
    fdinfo = (proc / str(pid) / "fdinfo" / "1").read_text()
    mnt_id = next(int(line.split()[1]) for line in fdinfo.splitlines() if line.startswith("mnt_id:"))
    return {"socket": inode, "mnt_id": mnt_id, "inode": os.stat(proc / str(pid) / "fd" / "1").st_ino}


def _held(fds: Path) -> set[str]:
    """What a process's descriptors point at. It may close one between the listing and the
    readlink (a process mid-exec, or a hostile init doing it on purpose): such a one is skipped."""
    held = set()
    for fd in fds.iterdir():
        with contextlib.suppress(FileNotFoundError):
            held.add(os.readlink(fd))
    return held


def _listening_inode(socket_path: Path, proc: Path) -> int:
    # /proc/net/unix: Num RefCount Protocol Flags Type St Inode [Path]; flag 0x10000 = listening.
    for line in (proc / "self" / "net" / "unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == str(socket_path) and int(fields[3], 16) & 0x10000:
            return int(fields[6])
    raise ValueError(f"no listening socket bound at {socket_path}")


def criu_config(stdio: dict[str, Any], *, restore: bool) -> str:
    """The CRIU config file's lines for a dump or a restore of a sandbox whose init had stdio."""
    fifo = f"file[{int(stdio['mnt_id'])}:{int(stdio['inode'])}]"
    if not restore:
        return f"external {fifo}\n"
    return f"inherit-fd fd[0]:socket[{int(stdio['socket'])}]\ninherit-fd fd[1]:{fifo}\ninherit-fd fd[2]:{fifo}\n"


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

    def write_config(self, sandbox_id: str, stdio: dict[str, Any] | None) -> None:
        """Before a dump (stdio given: kept for the restore) or a restore (read back): the CRIU
        config file runc hands CRIU (module docstring)."""
        image = self.path(sandbox_id)
        if stdio is not None:
            (image / STDIO).write_text(json.dumps(stdio))
            (image / CRIU_CONFIG).write_text(criu_config(stdio, restore=False))
        else:
            saved = json.loads((image / STDIO).read_text())
            (image / CRIU_CONFIG).write_text(criu_config(saved, restore=True))

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
