"""Images on a sandboxd server: list, inspect, pull (with progress), import, remove, gc.
Generated into ../_sync by scripts/unasync.py."""

from __future__ import annotations

import builtins
import json
import os
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import httpx

from sandboxd_sdk._async._http import _check
from sandboxd_sdk._errors import SandboxError

CHUNK = 1 << 20


def _image_path(name: str) -> str:
    # Names hold "/" and ":" (registry references): the server's route takes the rest of the
    # path as the name, so "/" stays; anything else odd (%, ?, #, spaces) is percent-encoded.
    return "/api/v1/images/" + quote(name, safe="/:@")


async def _file_chunks(path: str | os.PathLike[str]) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


class AsyncImages:
    """client.images: the server's images, whatever its data directory or host."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def list(self) -> list[dict[str, Any]]:
        return list((await _check(await self._http.get("/api/v1/images"))).json()["items"])

    async def inspect(self, name: str) -> dict[str, Any]:
        """Its layers, config, source, and for a pulled image its reference and digest."""
        return dict((await _check(await self._http.get(_image_path(name)))).json())

    async def pull(
        self,
        reference: str,
        *,
        auth: dict[str, str] | None = None,
        on_progress: Callable[[int, int], object] | None = None,
    ) -> dict[str, Any]:
        """Pulls name[:tag|@digest] from its registry onto the server and returns the image.
        on_progress(done, total) gets the bytes fetched so far; auth is {"username", "password"}
        for a private registry (the server's own SANDBOXD_REGISTRY_AUTH otherwise)."""
        body: dict[str, Any] = {"reference": reference}
        if auth is not None:
            body["auth"] = auth
        async with self._http.stream("POST", "/api/v1/images/pull", json=body, timeout=None) as r:
            await _check(r)
            # NDJSON: progress lines, then one line with the image or the error that ended it.
            async for line in r.aiter_lines():
                if not line:
                    continue
                event = json.loads(line)
                if event.get("type") == "progress":
                    if on_progress is not None:
                        on_progress(int(event["done"]), int(event["total"]))
                elif event.get("type") == "done":
                    return dict(event["image"])
                elif event.get("type") == "error":
                    raise SandboxError(
                        str(event.get("code", "INTERNAL")),
                        str(event.get("message", "")),
                        int(event.get("status", 0)),
                        event.get("field"),
                    )
        raise SandboxError("STREAM_ENDED", "the pull's progress stream ended before the pull did")

    async def import_(
        self, name: str, source: bytes | str | os.PathLike[str], *, ref: str | None = None
    ) -> dict[str, Any]:
        """Imports the image name from a root filesystem tarball (its bytes, or a local file's path,
        sent as it is read), or from a local OCI image layout directory (sent as a tar; ref picks
        a tag in it). The server unpacks either with the same refusing extractor."""
        params = {"name": name, "format": "rootfs"}
        if ref is not None:
            params["ref"] = ref
        if isinstance(source, bytes):
            return await self._import(params, source)
        if not os.path.isdir(source):
            return await self._import(params, _file_chunks(source))
        params["format"] = "oci-layout"
        with tempfile.NamedTemporaryFile(suffix=".tar") as spool:
            with tarfile.open(fileobj=spool, mode="w") as tar:
                tar.add(source, arcname=".")
            spool.flush()
            return await self._import(params, _file_chunks(spool.name))

    async def _import(self, params: dict[str, str], content: bytes | AsyncIterator[bytes]) -> dict[str, Any]:
        headers = {"Content-Type": "application/x-tar"}
        r = await self._http.post(
            "/api/v1/images/import", params=params, content=content, headers=headers, timeout=None
        )
        return dict((await _check(r)).json())

    async def remove(self, name: str) -> None:
        """Refused (CONFLICT, 409) while a sandbox is built on it."""
        await _check(await self._http.delete(_image_path(name)))

    async def gc(self) -> builtins.list[str]:
        """Deletes blobs and layers that no image, build cache or sandbox uses; returns them."""
        return list((await _check(await self._http.post("/api/v1/images/gc"))).json()["removed"])
