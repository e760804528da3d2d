"""Error rendering, one renderer per mounted app: the native API answers
{"code", "message", "field"?, "request_id"}; a facade installs its own renderer over the same
domain errors, so its clients get the bodies they parse."""

from __future__ import annotations

from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sandboxd.errors import SandboxdError

HTTP_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    413: "REQUEST_TOO_LARGE",
}


class Render(Protocol):
    """An error body in one API's shape: its code, message and the field at fault."""

    def __call__(self, request: Request, code: str, message: str, field: str | None = None) -> dict[str, object]: ...


def native_body(request: Request, code: str, message: str, field: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"code": code, "message": message}
    if field:
        body["field"] = field
    body["request_id"] = getattr(request.state, "request_id", None)
    return body


def install(app: FastAPI, render: Render = native_body) -> None:
    _body = render

    @app.exception_handler(SandboxdError)
    async def domain_error(request: Request, exc: SandboxdError) -> JSONResponse:
        return JSONResponse(_body(request, exc.code, exc.message, exc.field), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        # The first element says where (body, query, path); a field may itself be named "path".
        loc = [str(p) for p in first["loc"][1:]]
        field = ".".join(loc) or None
        message = str(first["msg"]).removeprefix("Value error, ")
        body = _body(request, "INVALID_REQUEST", f"{field}: {message}" if field else message, field)
        if render is native_body:  # every failing field, in the native API's shape only
            body["errors"] = [
                {"field": ".".join(str(p) for p in e["loc"][1:]), "message": e["msg"]} for e in exc.errors()
            ]
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "ERROR")
        body = _body(request, code, str(exc.detail), getattr(exc, "field", None))
        # The body was not read to its end: the connection cannot carry another request.
        headers = {"Connection": "close"} if exc.status_code in (408, 413) else None
        return JSONResponse(body, status_code=exc.status_code, headers=headers)
