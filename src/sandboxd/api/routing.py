"""The route class of every JSON route: a body must be valid Unicode text throughout.

JSON can spell a lone surrogate (``"\\ud800"``), which Python decodes into a str that cannot be
encoded again: accepted, it fails later, far from the request (writing the sandbox's config,
the store, a log line). Refused here once for every field, with the field named."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException


class InvalidText(HTTPException):
    """An HTTPException, so FastAPI passes it on from its body parsing instead of making it a
    400 without a field."""

    def __init__(self, field: str) -> None:
        super().__init__(400, f"{field}: not valid Unicode text (a lone surrogate)")
        self.field = field


def lone_surrogate_at(value: Any, where: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """Where in a parsed JSON document a string (or key) holds a lone surrogate, if anywhere."""
    if isinstance(value, str):
        return where if not _encodes(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if not _encodes(key):
                return (*where, "key")
            found = lone_surrogate_at(item, (*where, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = lone_surrogate_at(item, (*where, str(index)))
            if found is not None:
                return found
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class CheckedRequest(Request):
    async def json(self) -> Any:
        value = await super().json()
        where = lone_surrogate_at(value)
        if where is not None:
            raise InvalidText(".".join(where) or "body")
        return value


class CheckedRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            return await handler(CheckedRequest(request.scope, request.receive))

        return checked
