"""The httpx client under every SDK object: its transport failures (refused, unknown host, TLS,
timeouts, a connection that breaks mid-answer) come out as SandboxdConnectionError, also those met
while a streamed body is read, so no raw httpx exception reaches an SDK caller.
GENERATED from ../_async by scripts/unasync.py: do not edit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from sandboxd_sdk._errors import connection_error


class Session(httpx.Client):
    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        # send() is where every request goes (get, post, stream...), the proxy mounts' too.
        url = _server_url(self, request)
        try:
            response = super().send(request, **kwargs)
        except httpx.TransportError as exc:
            raise connection_error(exc, url) from exc
        if kwargs.get("stream") and isinstance(response.stream, httpx.SyncByteStream):
            response.stream = _MappedStream(response.stream, url)
        return response


class _MappedStream(httpx.SyncByteStream):
    """A streamed body whose transport failures are SandboxdConnectionError too."""

    def __init__(self, inner: httpx.SyncByteStream, url: str) -> None:
        self._inner, self._url = inner, url

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                yield chunk
        except httpx.TransportError as exc:
            raise connection_error(exc, self._url) from exc

    def close(self) -> None:
        self._inner.close()


def _server_url(client: httpx.Client, request: httpx.Request) -> str:
    base = str(client.base_url).rstrip("/")
    return base or f"{request.url.scheme}://{request.url.netloc.decode('ascii')}"
