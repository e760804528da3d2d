"""Vercel Sandbox's API (SDK `vercel-sandbox` 0.10.0), served over sandboxd's services.

A Vercel sandbox is a name with successive sessions; a session is one native sandbox. Key in
`Authorization: Bearer`, `teamId` in every query. Times are integer milliseconds. Error bodies are
`{"error": {"code", "message"}}` with the codes the SDK acts on.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from sandboxd.api import errors
from sandboxd.api.facades.vercel import commands, drives, fs, sandboxes, sessions, snapshots


def render(request: Request, code: str, message: str, field: str | None = None) -> dict[str, object]:
    return {"error": {"code": code, "message": message}}


def build(prefix: str) -> FastAPI:
    """The facade's app; `prefix` is where it is mounted ("" on a listener of its own)."""
    app = FastAPI(title="sandboxd: Vercel Sandbox facade", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.prefix = prefix
    errors.install(app, render)
    for module in (sandboxes, sessions, commands, fs, snapshots, drives):
        app.include_router(module.router)
    return app
