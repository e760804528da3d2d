"""The httpx client under every SDK object: its transport failures (refused, unknown host, TLS,
timeouts, a connection that breaks mid-answer) come out as SandboxdConnectionError, also those met
while a streamed body is read, so no raw httpx exception reaches an SDK caller.
Generated into ../_sync by scripts/unasync.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from sandboxd_sdk._errors import connection_error


class Session(httpx.AsyncClient):
    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        # send() is where every request goes (get, post, stream...), the proxy mounts' too.
        url = _server_url(self, request)
        try:
            response = await super().send(request, **kwargs)
        except httpx.TransportError as exc:
            raise connection_error(exc, url) from exc
        if kwargs.get("stream") and isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = _MappedStream(response.stream, url)
        return response


class _MappedStream(httpx.AsyncByteStream):
    """A streamed body whose transport failures are SandboxdConnectionError too."""

    def __init__(self, inner: httpx.AsyncByteStream, url: str) -> None:
        self._inner, self._url = inner, url

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.TransportError as exc:
            raise connection_error(exc, self._url) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


def _server_url(client: httpx.AsyncClient, request: httpx.Request) -> str:
    base = str(client.base_url).rstrip("/")
    return base or f"{request.url.scheme}://{request.url.netloc.decode('ascii')}"
