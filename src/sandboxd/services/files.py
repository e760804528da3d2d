"""Files inside a sandbox, read and written by its agent: paths resolve against the sandbox's own
root in its own mount namespace, so '..' tricks and planted symlinks cannot reach the host."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sandboxd.errors import InvalidRequest
from sandboxd.runtimes import agent_client as proto
from sandboxd.runtimes.agent_client import Agent
from sandboxd.services.requests import check_sandbox_path
from sandboxd.services.sandboxes import SandboxService


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

    async def read(self, sandbox_id: str, path: str) -> tuple[int, AsyncIterator[bytes]]:
        """The file's size and an iterator over its content; errors surface before the first byte."""
        conn, info = await self._agent(sandbox_id).open("read", path=sandbox_path(path))

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in conn.data():
                    yield chunk
            finally:
                await conn.close()

        return int(info["size"]), chunks()

    async def write(
        self, sandbox_id: str, path: str, body: AsyncIterator[bytes], mode: int, parents: bool = True
    ) -> dict[str, Any]:
        conn = await self._agent(sandbox_id).connect()
        try:
            await conn.request("write", path=sandbox_path(path), mode=mode, parents=parents)
            async for chunk in body:
                for start in range(0, len(chunk), proto.CHUNK):
                    await conn.send(proto.DATA, chunk[start : start + proto.CHUNK])
            await conn.send(proto.END)
            return dict(await conn.reply())
        finally:
            await conn.close()

    async def call(self, sandbox_id: str, op: str, **paths: Any) -> Any:
        checked = {k: sandbox_path(v, k) if k in ("path", "source", "destination") else v for k, v in paths.items()}
        return await self._agent(sandbox_id).call(op, **checked)

    async def download_tar(self, sandbox_id: str, path: str) -> AsyncIterator[bytes]:
        conn, _ = await self._agent(sandbox_id).open("tar_get", path=sandbox_path(path))

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in conn.data():
                    yield chunk
            finally:
                await conn.close()

        return chunks()

    async def upload_tar(self, sandbox_id: str, path: str, body: AsyncIterator[bytes]) -> dict[str, Any]:
        conn = await self._agent(sandbox_id).connect()
        try:
            await conn.request("tar_put", path=sandbox_path(path))
            async for chunk in body:
                for start in range(0, len(chunk), proto.CHUNK):
                    await conn.send(proto.DATA, chunk[start : start + proto.CHUNK])
            await conn.send(proto.END)
            return dict(await conn.reply())
        finally:
            await conn.close()
