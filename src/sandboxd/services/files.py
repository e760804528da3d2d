"""Files inside a sandbox, read and written by its agent: paths resolve against the sandbox's own
root in its own mount namespace, so '..' tricks and planted symlinks cannot reach the host."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sandboxd.errors import InvalidRequest
from sandboxd.runtimes.agent_client import Agent
from sandboxd.services.requests import check_sandbox_path
from sandboxd.services.lifecycle import SandboxService


def sandbox_path(path: str, field: str = "path") -> str:
    try:
        return check_sandbox_path(path)
    except ValueError as exc:
        raise InvalidRequest(field, f"{field} {exc}") from None


class FileService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.sandboxes = sandboxes

    def _agent(self, sandbox_id: str) -> Agent:
        return self.sandboxes.agent(sandbox_id)[1]

    async def read(self, sandbox_id: str, path: str) -> tuple[int | None, AsyncIterator[bytes]]:
        """The file's size (None for files whose size says nothing, as in /proc) and an iterator
        over its content; errors surface before the first byte."""
        info, chunks = await self._download(sandbox_id, "read", path)
        return info["size"], chunks

    async def _download(self, sandbox_id: str, op: str, path: str) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
        conn, info = await self._agent(sandbox_id).open(op, path=sandbox_path(path))

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in conn.data():
                    yield chunk
            finally:
                await conn.close()

        return dict(info), chunks()

    async def write(
        self, sandbox_id: str, path: str, body: AsyncIterator[bytes], mode: int, parents: bool = True
    ) -> dict[str, Any]:
        return await self._upload(sandbox_id, body, "write", path=sandbox_path(path), mode=mode, parents=parents)

    async def _upload(self, sandbox_id: str, body: AsyncIterator[bytes], op: str, **args: Any) -> dict[str, Any]:
        return dict(await self._agent(sandbox_id).upload(body, op, **args))

    async def call(self, sandbox_id: str, op: str, **paths: Any) -> Any:
        checked = {k: sandbox_path(v, k) if k in ("path", "source", "destination") else v for k, v in paths.items()}
        return await self._agent(sandbox_id).call(op, **checked)

    async def download_tar(self, sandbox_id: str, path: str) -> AsyncIterator[bytes]:
        return (await self._download(sandbox_id, "tar_get", path))[1]

    async def upload_tar(self, sandbox_id: str, path: str, body: AsyncIterator[bytes]) -> dict[str, Any]:
        return await self._upload(sandbox_id, body, "tar_put", path=sandbox_path(path))
