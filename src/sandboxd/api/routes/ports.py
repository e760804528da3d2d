"""Exposing a sandbox's ports. The traffic itself goes through api/proxy.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field

from sandboxd.api.deps import CurrentPrincipal, Ports, ProjectId
from sandboxd.api.params import PortNumber
from sandboxd.api.routing import CheckedRoute
from sandboxd.domain import Scope

router = APIRouter(prefix="/api/v1/sandboxes/{sandbox_id}/ports", tags=["ports"], route_class=CheckedRoute)


class PortOut(BaseModel):
    port: int
    url: str = Field(description="Host route: http://{id}-{port}.{proxy_domain}:{server port}/")
    path_url: str = Field(description="Path route under the API.")
    public: bool = Field(description="Reachable without the sandbox's traffic token.")
    # The service's Unix time, validated into a datetime: rendered in RFC 3339 like every time of the API.
    expires_at: datetime | None = Field(None, description="For a signed URL: when it stops working.")


class ExposePort(BaseModel):
    port: int = Field(ge=1, le=65535)


@router.get("", response_model=list[PortOut])
async def list_ports(sandbox_id: str, service: Ports, project: ProjectId) -> list[PortOut]:
    """The sandbox's exposed ports, each with its URLs (host route and path route)."""
    return [PortOut.model_validate(p) for p in await service.list(project, sandbox_id)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=PortOut)
async def expose_port(sandbox_id: str, body: ExposePort, service: Ports, project: ProjectId) -> PortOut:
    """Exposes a port of the sandbox through the port proxy; answers with its URLs and traffic token."""
    return PortOut.model_validate(await service.expose(project, sandbox_id, body.port))


@router.get("/{port}", response_model=PortOut)
async def port_url(
    sandbox_id: str,
    port: PortNumber,
    service: Ports,
    project: ProjectId,
    principal: CurrentPrincipal,
    signed: Annotated[bool, Query(description="A URL that carries its own expiring signature.")] = False,
    expires_in: Annotated[int, Query(ge=1, le=7 * 24 * 3600)] = 3600,
) -> PortOut:
    """An exposed port's URLs; with `signed=true`, a URL that carries its own signature and expires after
    `expires_in` seconds (needs a write key)."""
    if signed:
        # A signed URL admits every method, as the traffic token does: a read key may not mint one.
        principal.require(Scope.WRITE)
        return PortOut.model_validate(await service.sign(project, sandbox_id, port, expires_in))
    return PortOut.model_validate(await service.describe_exposed(project, sandbox_id, port))


@router.delete("/{port}", status_code=status.HTTP_204_NO_CONTENT)
async def unexpose_port(sandbox_id: str, port: PortNumber, service: Ports, project: ProjectId) -> None:
    """Stops proxying the port; its URLs, token and signed URLs stop working at once."""
    await service.unexpose(project, sandbox_id, port)
