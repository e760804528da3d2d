"""Files inside a sandbox, read and written by its agent: paths resolve against the sandbox's own
root in its own mount namespace, so '..' tricks and planted symlinks cannot reach the host."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sandboxd.agent import AgentPort
from sandboxd.domain import FileInfo
from sandboxd.errors import InvalidRequest
from sandboxd.services.lifecycle import SandboxService
from sandboxd.services.requests import check_sandbox_path


def sandbox_path(path: str, field: str = "path") -> str:
    try:
        return check_sandbox_path(path)
    except ValueError as exc:
        raise InvalidRequest(field, f"{field} {exc}") from None


class FileService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.sandboxes = sandboxes

    async def _agent(self, project_id: str | None, sandbox_id: str) -> AgentPort:
        return (await self.sandboxes.agent(project_id, sandbox_id))[1]

    async def read(self, project_id: str | None, sandbox_id: str, path: str) -> tuple[int | None, AsyncIterator[bytes]]:
        """The file's size (None for files whose size says nothing, as in /proc) and an iterator
        over its content; errors surface before the first byte."""
        return await (await self._agent(project_id, sandbox_id)).read(sandbox_path(path))

    async def write(
        self,
        project_id: str | None,
        sandbox_id: str,
        path: str,
        body: AsyncIterator[bytes],
        mode: int,
        parents: bool = True,
    ) -> FileInfo:
        return await (await self._agent(project_id, sandbox_id)).write(sandbox_path(path), body, mode, parents)

    async def stat(self, project_id: str | None, sandbox_id: str, path: str) -> FileInfo:
        return await (await self._agent(project_id, sandbox_id)).stat(sandbox_path(path))

    async def list_dir(
        self, project_id: str | None, sandbox_id: str, path: str, limit: int, after: str | None = None
    ) -> list[FileInfo]:
        """A page of a directory's entries, sorted by name: at most limit, after the name given."""
        return await (await self._agent(project_id, sandbox_id)).list_dir(sandbox_path(path), limit, after)

    async def mkdir(self, project_id: str | None, sandbox_id: str, path: str, mode: int = 0o755) -> FileInfo:
        return await (await self._agent(project_id, sandbox_id)).mkdir(sandbox_path(path), mode)

    async def remove(self, project_id: str | None, sandbox_id: str, path: str, recursive: bool = False) -> str:
        """Removes the file (or with recursive, the tree); returns the path removed."""
        checked = sandbox_path(path)
        await (await self._agent(project_id, sandbox_id)).remove(checked, recursive)
        return checked

    async def move(self, project_id: str | None, sandbox_id: str, source: str, destination: str) -> FileInfo:
        src, dst = sandbox_path(source, "source"), sandbox_path(destination, "destination")
        return await (await self._agent(project_id, sandbox_id)).move(src, dst)

    async def download_tar(self, project_id: str | None, sandbox_id: str, path: str) -> AsyncIterator[bytes]:
        return await (await self._agent(project_id, sandbox_id)).tar_get(sandbox_path(path))

    async def upload_tar(
        self, project_id: str | None, sandbox_id: str, path: str, body: AsyncIterator[bytes]
    ) -> FileInfo:
        return await (await self._agent(project_id, sandbox_id)).tar_put(sandbox_path(path), body)
