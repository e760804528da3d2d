"""`sandboxd cp`: files and directories between here and a sandbox, by `docker cp`'s rules.

A directory copied to a path that exists (a directory) lands inside it under its own name
(`cp ID:/srv/dir .` makes ./dir); to a path that does not exist, it becomes that path. A source
ending in `/.` copies the directory's contents instead. A file copied to a directory lands in it
under its own name. Downloads unpack by tarsafe's rules (the sandbox's archive is hostile)."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import click

from sandboxd_sdk._errors import SandboxError
from sandboxd_sdk._models import Copied, FileEntry
from sandboxd_sdk._sync.client import Sandbox
from sandboxd_sdk.cli._common import connect, err, fail


def size(n: int) -> str:
    """Bytes for a person, in decimal units as docker prints them: 812 B, 3.4 kB, 12.0 MB."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            break
    return f"{value:.1f} {unit}"


def report(copied: Copied, target: str) -> None:
    files = f"{copied.files} file{'s' * (copied.files != 1)}"
    # A download leaves out what cannot be a file here or would link out of the copy: say so.
    left = (
        f"; left out {copied.skipped} device node(s), fifo(s) or link(s) leading outside it" if copied.skipped else ""
    )
    line = f"copied {files} ({size(copied.size)}) to {target}{left}"
    err.print(line, markup=False, highlight=False, soft_wrap=True)


def contents_only(path: str) -> bool:
    """`dir/.` (or `.`): the directory's contents, not the directory."""
    return path == "." or path.endswith(("/.", os.sep + "."))


def _remote_stat(sb: Sandbox, path: str) -> FileEntry | None:
    try:
        return sb.files.stat(path)
    except SandboxError as exc:
        if exc.code == "NOT_FOUND":  # the file; a missing sandbox still raises
            return None
        raise


def upload(source: str, sandbox_id: str, path: str) -> None:
    local = Path(source)
    if not os.path.lexists(local):
        fail(f"{source}: no such file or directory here")
    sb = connect(sandbox_id)
    try:
        found = _remote_stat(sb, path)
        if local.is_dir():
            name = "" if contents_only(source) else local.resolve().name
            if found is None:
                target = path  # made, and the directory's contents copied into it
            elif found["type"] != "dir":
                fail(f"{sandbox_id}:{path} is a file; a directory cannot be copied onto it")
            else:
                target = posixpath.join(path, name) if name else path
            copied = sb.files.upload_dir(local, target)
        else:
            if found is not None and found["type"] == "dir":
                target = posixpath.join(path, local.name)
            elif path.endswith("/"):
                fail(f"directory {sandbox_id}:{path} does not exist")
            else:
                target = path
            data = local.read_bytes()
            sb.files.write(target, data, mode=local.stat().st_mode & 0o777)
            copied = Copied(1, len(data))
    finally:
        sb.close()
    report(copied, f"{sandbox_id}:{target}")


def download(sandbox_id: str, path: str, destination: str) -> None:
    contents = contents_only(path)
    remote = posixpath.normpath(path) if path.startswith("/") else path  # the server refuses a relative one
    name = posixpath.basename(remote)  # "" for "/": its contents
    sb = connect(sandbox_id)
    try:
        if sb.files.stat(remote)["type"] == "dir":
            if os.path.isdir(destination):
                target = os.path.join(destination, name) if name and not contents else destination
            elif os.path.lexists(destination):
                fail(f"{destination} is a file; a directory cannot be copied onto it")
            else:
                target = destination  # made, and the directory's contents copied into it
            try:
                copied = sb.files.download_dir(remote, target)
            except OSError as exc:
                fail(f"could not unpack into {target}: {exc}")
        else:
            if os.path.isdir(destination):
                target = os.path.join(destination, name)
            elif destination.endswith(("/", os.sep)):
                fail(f"directory {destination} does not exist")
            else:
                target = destination
            data = sb.files.read(remote)
            try:
                Path(target).write_bytes(data)
            except OSError as exc:
                fail(f"could not write {target}: {exc.strerror or exc}")
            copied = Copied(1, len(data))
    finally:
        sb.close()
    report(copied, target)


@click.command()
@click.argument("source")
@click.argument("destination")
def cp(source: str, destination: str) -> None:
    """Copies files and directories, as docker cp does: `cp ./local ID:/path` uploads,
    `cp ID:/path ./local` downloads.

    A directory copied to an existing directory lands inside it (`cp ID:/srv/dir .` makes ./dir);
    end the source with /. to copy its contents instead (`cp ID:/srv/dir/. ./here`). Says what it
    copied on stderr."""
    if ":" in destination and not os.path.exists(destination):
        sandbox_id, path = destination.split(":", 1)
        upload(source, sandbox_id, path)
    elif ":" in source:
        sandbox_id, path = source.split(":", 1)
        download(sandbox_id, path, destination)
    else:
        fail("one side must be ID:/path")
