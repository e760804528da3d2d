"""A bounded walk of a directory tree inside a sandbox, by the file service's paged listing: for
execd's recursive list (depth > 1) and its search, which the native API has not. The tree is the
sandbox's and may be anything: depth, entries seen and pages asked are all capped, and symlinks are
listed, never followed."""

from __future__ import annotations

import fnmatch

from sandboxd.domain import FileInfo, Sandbox
from sandboxd.errors import InvalidRequest
from sandboxd.services.files import FileService

MAX_DEPTH = 32
MAX_ENTRIES = 100_000  # entries looked at in one walk
PAGE = 10_000


async def walk(
    service: FileService, sandbox: Sandbox, root: str, depth: int, pattern: str | None = None
) -> list[FileInfo]:
    """Entries under root down to depth levels (1: its own entries), those whose name matches
    pattern if one is given, breadth first, each directory's entries by name."""
    found: list[FileInfo] = []
    seen = 0
    level = [root]
    for _ in range(depth):
        below: list[str] = []
        for directory in level:
            after: str | None = None
            while True:
                page = await service.list_dir(sandbox.project_id, sandbox.id, directory, PAGE, after)
                seen += len(page)
                if seen > MAX_ENTRIES:
                    raise InvalidRequest("path", f"more than {MAX_ENTRIES} entries under {root}: narrow the path")
                for entry in page:
                    if pattern is None or fnmatch.fnmatchcase(entry.name, pattern):
                        found.append(entry)
                    if entry.type == "dir":
                        below.append(entry.path)
                if len(page) < PAGE:
                    break
                after = page[-1].name
        level = below
        if not level:
            break
    return found
