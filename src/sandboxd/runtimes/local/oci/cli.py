"""The OCI runtime binary of a runtime class (runc, crun; runsc next), driven by its command line.

Each class keeps its containers under a state root of its own: two binaries never read each other's
state files. The class a sandbox was created with is written in its record, so it is stopped and
removed by the same binary however the server is configured when that happens.

crun 1.8 refuses to create containers on a hybrid cgroup host (v1 controllers, and cgroup v2 mounted
beside them at /sys/fs/cgroup/unified with a controller of its own). Its create runs in a mount
namespace of its own where that mount is not there: crun then sees a v1 host and places the sandbox
in the v1 controllers' groups, named as runc names them. Only create reads the layout; the other
subcommands follow the state create wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes.local.oci import checkpoints
from sandboxd.runtimes.local.oci.mounts import decode

CGROUP_ROOT = Path("/sys/fs/cgroup")
KNOWN_CLASSES = ("runc", "crun", "runsc")  # classes found on PATH by their own name
RECORD_KEY = "oci_runtime"  # the class's name in a sandbox's runtime record


class OciCli:
    """One runtime class: its binary and its state root (`--root`)."""

    def __init__(
        self, runtime_class: str, binary: str, state_root: Path, create_wrapper: Sequence[str] | None = ()
    ) -> None:
        self.runtime_class = runtime_class
        self.binary = binary
        self.state_root = state_root
        # What create runs the binary through; None: this class cannot create here (it can still
        # stop and remove what it made).
        self.create_wrapper = None if create_wrapper is None else list(create_wrapper)
        # crun applies config.json's rlimits to itself before it enters the sandbox's namespaces;
        # runc applies them from outside, which needs a capability root may lack (config.py).
        self.own_rlimits = runtime_class == "crun"

    async def run(
        self,
        *args: str,
        stdin: int | None = None,
        stdout: int | None = None,
        check: bool = True,
        prefix: Sequence[str] = (),
        on_failure: Callable[[], str] | None = None,
        kill_on_cancel: bool = False,
    ) -> str:
        """Runs one subcommand; its stdout, or "" if it failed and check is off. With stdout given
        (a create: the container's output goes there, its errors too), on_failure says what failed.
        kill_on_cancel: a cancelled caller kills it (and waits) rather than leave it running."""
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            self.binary,
            "--root",
            str(self.state_root),
            *args,
            stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=stdout if stdout is not None else asyncio.subprocess.PIPE,
            stderr=stdout if stdout is not None else asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            if kill_on_cancel and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.shield(proc.wait())
            raise
        if proc.returncode != 0:
            if check:
                message = on_failure() if on_failure is not None else (err or b"").decode().strip()
                raise RuntimeFailure(f"{self.runtime_class} {args[0]} failed: {message}")
            return ""
        return (out or b"").decode()

    async def create(
        self,
        container_id: str,
        bundle: Path,
        pid_file: Path,
        *,
        stdin: int,
        stdout: int,
        prefix: Sequence[str] = (),
        on_failure: Callable[[], str] | None = None,
    ) -> None:
        """Creates the container (its init waits for start). No session keyring: each would be a key
        of the sandboxes' shared root uid, and the kernel allows a uid 200 (kernel.keys.maxkeys) on
        the whole host; the keyring calls are refused inside anyway."""
        if self.create_wrapper is None:
            raise RuntimeFailure(f"{self.runtime_class} cannot create containers on this hybrid host: {NO_HIDING}")
        await self.run(
            "create",
            "--no-new-keyring",
            "--bundle",
            str(bundle),
            "--pid-file",
            str(pid_file),
            container_id,
            stdin=stdin,
            stdout=stdout,
            prefix=[*prefix, *self.create_wrapper],
            on_failure=on_failure,
        )

    async def checkpoint(self, container_id: str, image: Path) -> None:
        """Saves the container's processes into image and ends it (oci/checkpoints.py); on
        failure it runs on and RuntimeFailure says why. Cancelled, runc is killed: left on its
        own it would go on dumping (the sandbox frozen) after its caller thawed it."""
        await self.run(*checkpoints.checkpoint_args(container_id, image), kill_on_cancel=True)

    async def restore(
        self,
        container_id: str,
        image: Path,
        bundle: Path,
        pid_file: Path,
        *,
        stdin: int,
        stdout: int,
        on_failure: Callable[[], str] | None = None,
    ) -> None:
        """Restores a checkpointed container, detached; stdin and stdout take the places of its
        saved stdio (runc passes them to CRIU as inherited fds)."""
        args = checkpoints.restore_args(container_id, image, bundle, pid_file)
        await self.run(*args, stdin=stdin, stdout=stdout, on_failure=on_failure)

    async def start(self, container_id: str) -> None:
        await self.run("start", container_id)

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """The container's state document, None if this class knows no such container."""
        out = await self.run("state", container_id, check=False)
        if not out:
            return None
        found = json.loads(out)
        return found if isinstance(found, dict) else None

    async def kill(self, container_id: str, signal: str = "KILL") -> None:
        await self.run("kill", container_id, signal, check=False)

    async def delete(self, container_id: str) -> None:
        await self.run("delete", "--force", container_id, check=False)

    async def pause(self, container_id: str) -> None:
        """Freezes every process of the container (its cgroup's freezer)."""
        await self.run("pause", container_id)

    async def resume(self, container_id: str) -> None:
        await self.run("resume", container_id)

    async def list(self) -> list[str]:
        """The ids of the containers under this class's state root."""
        if not self.state_root.exists():
            return []
        listing = await self.run("list", "--format", "json", check=False)
        return [str(c["id"]) for c in json.loads(listing or "null") or []]


class OciClasses:
    """The runtime classes this server can drive, and which one new sandboxes get."""

    def __init__(self, data_dir: Path, default: str, extra: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.binaries = {name: path for name in KNOWN_CLASSES if (path := shutil.which(name))}
        self.binaries.update(extra or {})
        self.hidden_mounts = hybrid_cgroup2_mounts()
        self.crun_wrapper: list[str] | None = hide_mounts_wrapper(self.hidden_mounts) if self.hidden_mounts else []
        self.default = choose_class(default, self.binaries, crun_usable=self.crun_wrapper is not None)
        self._clis: dict[str, OciCli] = {}
        # Records from before classes were recorded: the binary `auto` chose then (crun on cgroup v2
        # only hosts, else runc), or the configured one, in the state root that every binary used then.
        legacy = choose_class(default, self.binaries, prefer_crun=False)
        self.legacy = OciCli(legacy, self.binaries[legacy], data_dir / "runc")

    def state_root(self, runtime_class: str) -> Path:
        # runc keeps the root it always had, so runc records of older servers are its own.
        return self.data_dir / "runc" if runtime_class == "runc" else self.data_dir / "oci" / runtime_class

    def get(self, runtime_class: str) -> OciCli:
        cli = self._clis.get(runtime_class)
        if cli is None:
            binary = self.binaries.get(runtime_class)
            if binary is None:
                raise RuntimeFailure(f"OCI runtime class {runtime_class!r} is not available on this server")
            wrapper = self.crun_wrapper if runtime_class == "crun" else []
            cli = OciCli(runtime_class, binary, self.state_root(runtime_class), wrapper)
            self._clis[runtime_class] = cli
        return cli

    def of(self, record: dict[str, Any]) -> OciCli:
        """The class a sandbox was created with."""
        runtime_class = record.get(RECORD_KEY)
        return self.get(runtime_class) if isinstance(runtime_class, str) else self.legacy

    def all(self) -> list[OciCli]:
        """Every class that may hold containers of this server's (the legacy root included)."""
        clis = [self.get(name) for name in sorted(self.binaries)]
        if all(cli.state_root != self.legacy.state_root for cli in clis):
            clis.append(self.legacy)
        return clis

    def state_roots(self) -> list[Path]:
        return [self.data_dir / "runc", self.data_dir / "oci"]


def choose_class(
    preference: str, binaries: dict[str, str], *, crun_usable: bool = True, prefer_crun: bool = True
) -> str:
    """auto: crun where it can run (it creates and starts a container in about two thirds of runc's
    time), else runc. prefer_crun=False is the rule of servers before crun ran on hybrid hosts: crun
    only where cgroup v2 is the only hierarchy."""
    if preference != "auto":
        if preference not in binaries:
            raise RuntimeFailure(f"OCI runtime {preference!r} is not installed")
        if preference == "crun" and not crun_usable:
            raise RuntimeFailure(f"crun cannot create containers on this hybrid host: {NO_HIDING}")
        return preference
    unified_only = (CGROUP_ROOT / "cgroup.controllers").exists()
    crun_first = crun_usable and (prefer_crun or unified_only)
    for candidate in ["crun", "runc"] if crun_first else ["runc", "crun"]:
        if candidate in binaries and (candidate != "crun" or crun_usable):
            return candidate
    raise RuntimeFailure("neither runc nor crun is installed")


NO_HIDING = "unshare, sh or umount is missing"


def hybrid_cgroup2_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """The cgroup v2 mounts under /sys/fs/cgroup when /sys/fs/cgroup is not itself the unified
    hierarchy (a hybrid host; none on a v2-only or a v1-only host)."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        separator = fields.index("-") if "-" in fields else -1
        if separator < 0 or len(fields) <= separator + 1:
            continue
        point = decode(fields[4].encode())
        if fields[separator + 1] == "cgroup2" and point.startswith(f"{CGROUP_ROOT}/"):
            found.append(point)
    return found


def hide_mounts_wrapper(points: list[str]) -> list[str] | None:
    """The command that runs what follows it in a new mount namespace without `points`: private
    first (unshare's default propagation), so that the unmount never reaches the host's
    namespace. None if a tool is missing."""
    unshare, sh, umount = (shutil.which(tool) for tool in ("unshare", "sh", "umount"))
    if unshare is None or sh is None or umount is None:
        return None
    script = f'{shlex.quote(umount)} -- {" ".join(map(shlex.quote, points))} && exec "$@"'
    return [unshare, "--mount", "--propagation", "private", "--", sh, "-c", script, "sh"]
