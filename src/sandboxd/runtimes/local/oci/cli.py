"""The OCI runtime binary of a runtime class (runc, crun; runsc next), driven by its command line.

Each class keeps its containers under a state root of its own: two binaries never read each other's
state files. The class a sandbox was created with is written in its record, so it is stopped and
removed by the same binary however the server is configured when that happens.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sandboxd.errors import RuntimeFailure

CGROUP_ROOT = Path("/sys/fs/cgroup")
KNOWN_CLASSES = ("runc", "crun", "runsc")  # classes found on PATH by their own name
RECORD_KEY = "oci_runtime"  # the class's name in a sandbox's runtime record


class OciCli:
    """One runtime class: its binary and its state root (`--root`)."""

    def __init__(self, runtime_class: str, binary: str, state_root: Path) -> None:
        self.runtime_class = runtime_class
        self.binary = binary
        self.state_root = state_root

    async def run(
        self,
        *args: str,
        stdin: int | None = None,
        stdout: int | None = None,
        check: bool = True,
        prefix: Sequence[str] = (),
        on_failure: Callable[[], str] | None = None,
    ) -> str:
        """Runs one subcommand; its stdout, or "" if it failed and check is off. With stdout given
        (a create: the container's output goes there, its errors too), on_failure says what failed."""
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
        out, err = await proc.communicate()
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
            prefix=prefix,
            on_failure=on_failure,
        )

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
        self.default = choose_class(default, self.binaries)
        self._clis: dict[str, OciCli] = {}
        # Records from before classes were recorded: the configured binary, in the state root that
        # every binary used then.
        self.legacy = OciCli(self.default, self.binaries[self.default], data_dir / "runc")

    def state_root(self, runtime_class: str) -> Path:
        # runc keeps the root it always had, so runc records of older servers are its own.
        return self.data_dir / "runc" if runtime_class == "runc" else self.data_dir / "oci" / runtime_class

    def get(self, runtime_class: str) -> OciCli:
        cli = self._clis.get(runtime_class)
        if cli is None:
            binary = self.binaries.get(runtime_class)
            if binary is None:
                raise RuntimeFailure(f"OCI runtime class {runtime_class!r} is not available on this server")
            cli = self._clis[runtime_class] = OciCli(runtime_class, binary, self.state_root(runtime_class))
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


def choose_class(preference: str, binaries: dict[str, str]) -> str:
    """crun where cgroup v2 is the only hierarchy (crun 1.8 refuses hybrid hosts), else runc."""
    if preference != "auto":
        if preference not in binaries:
            raise RuntimeFailure(f"OCI runtime {preference!r} is not installed")
        return preference
    unified_only = (CGROUP_ROOT / "cgroup.controllers").exists()
    for candidate in ["crun", "runc"] if unified_only else ["runc", "crun"]:
        if candidate in binaries:
            return candidate
    raise RuntimeFailure("neither runc nor crun is installed")
