from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, Field

from sandboxd.api.deps import CurrentPrincipal, Ports, ProjectId, Sandboxes
from sandboxd.api.models import HibernateRequest, RenewTimeout, SandboxList, SandboxOut, WarmPoolCheckout
from sandboxd.api.params import PortNumber
from sandboxd.api.routing import CheckedRoute
from sandboxd.domain import HibernateMemory, Scope, State
from sandboxd.errors import InvalidRequest
from sandboxd.services.requests import CreateSandbox, EgressPolicy

router = APIRouter(prefix="/api/v1/sandboxes", tags=["sandboxes"], route_class=CheckedRoute)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SandboxOut)
async def create_sandbox(
    body: CreateSandbox,
    service: Sandboxes,
    project: ProjectId,
    response: Response,
    wait: Annotated[bool, Query(description="Return once running; false answers 202 while pending.")] = True,
) -> SandboxOut:
    """Creates a sandbox from an image, a template or a runtime. Answers 201 once it runs, or with `wait=false` 202
    at once while it is `pending` (poll it with GET)."""
    sandbox, checkout = await service.create_reporting(project, body, wait=wait)
    response.headers["Location"] = f"/api/v1/sandboxes/{sandbox.id}"
    if not wait and sandbox.status.state == State.PENDING:
        response.status_code = status.HTTP_202_ACCEPTED
    out = SandboxOut.of(sandbox)
    if checkout is not None:
        out.warm_pool_checkout = WarmPoolCheckout(**checkout)
    return out


@router.get("", response_model=SandboxList)
async def list_sandboxes(
    service: Sandboxes,
    project: ProjectId,
    principal: CurrentPrincipal,
    state: Annotated[list[State] | None, Query(description="Repeat to match any of several.")] = None,
    label: Annotated[list[str] | None, Query(description="key=value; repeat to require several.")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SandboxList:
    """The project's sandboxes, oldest first, filtered by state and labels, a page at a time (`next_cursor` gives
    the next page)."""
    labels: dict[str, str] = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest("label", f"label filter {item!r} must be key=value")
        labels[key] = value
    items = await service.find(project, state, labels, cursor, limit + 1)
    page = items[:limit]
    more = len(items) > limit
    writer = principal.allows(Scope.WRITE)
    return SandboxList(items=[SandboxOut.of(s, writer) for s in page], next_cursor=page[-1].id if more else None)


@router.get("/{sandbox_id}", response_model=SandboxOut)
async def get_sandbox(
    sandbox_id: str, service: Sandboxes, project: ProjectId, principal: CurrentPrincipal
) -> SandboxOut:
    """One sandbox: its state, image, resources, timeout, labels and the reason it ended, if it did."""
    return SandboxOut.of(await service.get(project, sandbox_id), principal.allows(Scope.WRITE))


@router.delete("/{sandbox_id}", response_model=SandboxOut)
async def delete_sandbox(sandbox_id: str, service: Sandboxes, project: ProjectId) -> SandboxOut:
    """Stops the sandbox and removes everything it had (processes, files, network); answers with its final record."""
    return SandboxOut.of(await service.delete(project, sandbox_id))


@router.post("/{sandbox_id}/stop", response_model=SandboxOut)
async def stop_sandbox(sandbox_id: str, service: Sandboxes, project: ProjectId) -> SandboxOut:
    """Ends the sandbox's processes and frees its memory and network, keeping its files; `stopped`
    until started again. Its timeout does not run while stopped; a sandbox stopped longer than the
    server keeps stopped sandboxes (a week by default) is deleted. 409 unless it is running."""
    return SandboxOut.of(await service.stop(project, sandbox_id))


@router.post("/{sandbox_id}/start", response_model=SandboxOut)
async def start_sandbox(sandbox_id: str, service: Sandboxes, project: ProjectId) -> SandboxOut:
    """Boots a stopped sandbox again with its files, env, limits, egress policy, ports and traffic
    token (its address inside may change); its timeout runs again in full. 409 unless it is stopped."""
    return SandboxOut.of(await service.start(project, sandbox_id))


@router.post("/{sandbox_id}/pause", response_model=SandboxOut)
async def pause_sandbox(sandbox_id: str, service: Sandboxes, project: ProjectId) -> SandboxOut:
    """Freezes every process of a running sandbox, its memory kept; a paused one answers as it is. Its timeout stops:
    it is kept paused for the server's paused retention (its expires_at), then destroyed. 409 if it is not running."""
    return SandboxOut.of(await service.pause(project, sandbox_id))


@router.post("/{sandbox_id}/resume", response_model=SandboxOut)
async def resume_sandbox(sandbox_id: str, service: Sandboxes, project: ProjectId) -> SandboxOut:
    """Thaws a paused sandbox (in milliseconds): its processes go on where they were, with its full timeout again. A
    hibernated one is booted again (restored, if its memory was kept). A running one answers as it is; 409 otherwise."""
    return SandboxOut.of(await service.resume(project, sandbox_id))


@router.post("/{sandbox_id}/hibernate", response_model=SandboxOut)
async def hibernate_sandbox(
    sandbox_id: str, service: Sandboxes, project: ProjectId, body: HibernateRequest | None = None
) -> SandboxOut:
    """Keeps only the sandbox's disk: its processes end, its memory and network are freed. Where the server can
    checkpoint processes (GET /api/v1/capabilities) their memory is saved too and resume brings them back;
    otherwise resume boots it again. `hibernation.memory_kept` says which. Kept as long as a stopped sandbox, then
    deleted. 409 unless it is running; a process that cannot be checkpointed is a failure that leaves it running
    (409 CHECKPOINT_FAILED, with memory "require"; with "auto", the same, where the server tried)."""
    memory = body.memory if body is not None else HibernateMemory.AUTO
    return SandboxOut.of(await service.hibernate(project, sandbox_id, memory))


@router.post("/{sandbox_id}/timeout", response_model=SandboxOut)
async def renew_timeout(sandbox_id: str, body: RenewTimeout, service: Sandboxes, project: ProjectId) -> SandboxOut:
    """Sets the sandbox's timeout to this many seconds from now (it is destroyed when the timeout passes)."""
    return SandboxOut.of(await service.renew(project, sandbox_id, body.timeout))


class RefusalOut(BaseModel):
    at: datetime
    kind: Literal["dns", "connection"] = Field(description="dns: a lookup; connection: a packet to an address.")
    target: str = Field(
        description="The name looked up, or address:port/protocol. It comes from the sandbox: printable ASCII "
        "only (anything else escaped as \\xNN), at most 253 characters."
    )


class EgressOut(BaseModel):
    policy: dict[str, Any] | None
    refused_packets: int = Field(0, description="Packets the policy refused (connections, datagrams).")
    refused_lookups: int = Field(0, description="DNS lookups of names the policy refused.")
    recent_refusals: list[RefusalOut] = Field(
        default_factory=list,
        description="The last refusals (at most 20), oldest first; empty once the sandbox has ended.",
    )


@router.get("/{sandbox_id}/egress", response_model=EgressOut)
async def get_egress(sandbox_id: str, service: Sandboxes, project: ProjectId) -> EgressOut:
    """The sandbox's egress policy and how often it refused something."""
    return EgressOut(**await service.egress_status(project, sandbox_id))


@router.put("/{sandbox_id}/egress", response_model=EgressOut)
async def set_egress(sandbox_id: str, body: EgressPolicy, service: Sandboxes, project: ProjectId) -> EgressOut:
    """Replaces the policy of a running sandbox; it applies from the next packet and lookup on.
    Connections to targets it no longer allows are cut."""
    await service.set_egress(project, sandbox_id, body)
    return EgressOut(**await service.egress_status(project, sandbox_id))


class ListeningOut(BaseModel):
    port: int
    listening: bool = Field(description="Something in the sandbox accepted a connection on the port.")


@router.get("/{sandbox_id}/listening/{port}", response_model=ListeningOut)
async def port_listening(
    sandbox_id: str,
    port: PortNumber,
    service: Ports,
    project: ProjectId,
    timeout: Annotated[float, Query(ge=0, le=30, description="Seconds to wait for it to listen.")] = 0,
) -> ListeningOut:
    """Whether something listens on the port inside the sandbox, waiting up to timeout seconds for
    it (a server just started there): what the proxy needs to answer rather than 502
    PORT_NOT_LISTENING. The port need not be exposed. (Not under …/ports/{port}/: that is the
    port's own path route.)"""
    return ListeningOut(port=port, listening=await service.wait_listening(project, sandbox_id, port, timeout))
