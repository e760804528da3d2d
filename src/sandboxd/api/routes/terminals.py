"""Terminal sessions of a sandbox (the terminal itself is the WebSocket in routes/terminal.py)."""

from __future__ import annotations

from fastapi import APIRouter

from sandboxd.api.deps import ProjectId, Terminals
from sandboxd.api.models import TerminalSession
from sandboxd.api.routing import CheckedRoute

router = APIRouter(prefix="/api/v1/sandboxes/{sandbox_id}", tags=["terminal"], route_class=CheckedRoute)


@router.get("/terminals", response_model=list[TerminalSession])
async def list_terminals(sandbox_id: str, service: Terminals, project: ProjectId) -> list[TerminalSession]:
    """The sandbox's terminal sessions: attached, or waiting out their grace period for a client."""
    await service.sandboxes.get(project, sandbox_id)  # another project's sandbox is a 404, not []
    return service.list(project, sandbox_id)


@router.delete("/terminals/{session_id}", response_model=TerminalSession)
async def end_terminal(sandbox_id: str, session_id: str, service: Terminals, project: ProjectId) -> TerminalSession:
    """Ends a terminal session: its program and everything it started are killed (SIGKILL)."""
    return await service.end(project, sandbox_id, session_id)
