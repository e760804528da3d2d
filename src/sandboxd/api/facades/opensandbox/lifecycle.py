"""OpenSandbox facade: the lifecycle API (`/v1/…`, key in OPEN-SANDBOX-API-KEY).

Each route maps onto the services: create onto the one CreateSandbox (create.py), the rest onto
the sandbox, port and snapshot services. A sandbox of another project is not found (404), as a
missing one is: the services look every id up within the caller's project."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Body, Query, Request, Response, status
from fastapi.responses import JSONResponse

from sandboxd.api import facades
from sandboxd.api.facades.opensandbox import snapshots
from sandboxd.api.facades.opensandbox.common import Caller, public_prefix, state
from sandboxd.api.facades.opensandbox.create import check_metadata, core_request, rename, volume_mounts
from sandboxd.api.facades.opensandbox.models import CreateSandboxIn, Pagination, RenewIn, dump
from sandboxd.api.facades.opensandbox.states import FROM_OPENSANDBOX, RESERVED_PREFIX, SERVER_PREFIX, sandbox_out
from sandboxd.api.facades.opensandbox.tokens import EGRESS, EGRESS_HEADER, EXECD, EXECD_HEADER, access_token
from sandboxd.api.facades.translate import parse_rfc3339, rfc3339
from sandboxd.domain import Sandbox, SandboxSpec, Scope, State
from sandboxd.errors import InvalidRequest, SandboxNotRunning
from sandboxd.services.ports import SIGNATURE_QUERY
from sandboxd.services.requests import CreateSandbox

router = APIRouter(prefix="/v1")
router.include_router(snapshots.router)

EXECD_PORT = 44772
EGRESS_PORT = 18080
# The execd and egress APIs of a sandbox are sandboxd's own, served by this facade (execd.py,
# egress.py) under this path, admitted by the access token the endpoints call hands out.
SIDECARS = {EXECD_PORT: (EXECD, EXECD_HEADER), EGRESS_PORT: (EGRESS, EGRESS_HEADER)}
MAX_PAGE_SIZE = 200
_WALK = 1000  # sandboxes read per store query while counting a list's total


@router.post("/sandboxes", status_code=status.HTTP_202_ACCEPTED)
async def create_sandbox(body: CreateSandboxIn, request: Request, who: Caller) -> JSONResponse:
    services = state(request).services
    project = who.project()
    core_request(body, services.settings, [])  # every field checked before a volume is made
    try:
        mounts = await volume_mounts(body.volumes or [], project, services.volumes, services.settings)
        req = core_request(body, services.settings, mounts)
        sandbox = await services.sandboxes.create(project, req, wait=False)
    except InvalidRequest as exc:
        raise rename(exc) from None
    location = f"{public_prefix(request.scope)}/v1/sandboxes/{sandbox.id}"
    return JSONResponse(dump(sandbox_out(sandbox, full=False)), status_code=202, headers={"Location": location})


@router.get("/sandboxes")
async def list_sandboxes(
    request: Request,
    who: Caller,
    state_: Annotated[list[str] | None, Query(alias="state")] = None,
    metadata: str | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=MAX_PAGE_SIZE)] = 20,
) -> dict[str, Any]:
    """Filters: states (any of them, case-insensitive), metadata `k=v&k2=v2` (all of them).
    sandboxd pages by cursor; the facade walks it to count the total upstream reports."""
    services = state(request).services
    project = who.project()
    states: list[State] | None = None
    if state_:
        states = []
        for name in state_:
            if name.lower() not in FROM_OPENSANDBOX:
                raise InvalidRequest("state", f"state: unknown state {name!r}")
            states += FROM_OPENSANDBOX[name.lower()]
    labels = _metadata_filter(metadata)
    found: list[Sandbox] = []
    if states is None or states:
        after: str | None = None
        while True:
            batch = await services.sandboxes.find(project, states, labels, after, _WALK)
            found += batch
            if len(batch) < _WALK:
                break
            after = batch[-1].id
    total = len(found)
    items = found[(page - 1) * page_size : page * page_size]
    pages = math.ceil(total / page_size)
    pagination = Pagination(
        page=page, page_size=page_size, total_items=total, total_pages=pages, has_next_page=page < pages
    )
    return {"items": [dump(sandbox_out(s)) for s in items], "pagination": dump(pagination)}


def _metadata_filter(metadata: str | None) -> dict[str, str]:
    if not metadata:
        return {}
    try:
        pairs = parse_qsl(metadata, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise InvalidRequest("metadata", f"metadata: {metadata!r} is not k=v&k2=v2") from None
    return dict(pairs)


@router.get("/sandboxes/{sandbox_id}")
async def get_sandbox(sandbox_id: str, request: Request, who: Caller) -> dict[str, Any]:
    sandbox = await state(request).services.sandboxes.get(who.project(), sandbox_id)
    return dump(sandbox_out(sandbox))


@router.delete("/sandboxes/{sandbox_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_sandbox(sandbox_id: str, request: Request, who: Caller) -> Response:
    await state(request).services.sandboxes.delete(who.project(), sandbox_id, "user_delete")
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/pause", status_code=status.HTTP_202_ACCEPTED)
async def pause_sandbox(sandbox_id: str, request: Request, who: Caller) -> Response:
    """Frozen, memory kept, when this answers (upstream's Pausing is never seen)."""
    await state(request).services.sandboxes.pause(who.project(), sandbox_id)
    return Response(status_code=202)


@router.post("/sandboxes/{sandbox_id}/resume", status_code=status.HTTP_202_ACCEPTED)
async def resume_sandbox(sandbox_id: str, request: Request, who: Caller) -> Response:
    """A paused or hibernated sandbox is resumed; a stopped one (the native API's stop) started:
    all three are OpenSandbox's Paused."""
    sandboxes = state(request).services.sandboxes
    project = who.project()
    sandbox = await sandboxes.get(project, sandbox_id)
    if sandbox.status.state == State.STOPPED:
        await sandboxes.start(project, sandbox_id)
    else:
        await sandboxes.resume(project, sandbox_id)
    return Response(status_code=202)


@router.post("/sandboxes/{sandbox_id}/renew-expiration")
async def renew_expiration(sandbox_id: str, body: RenewIn, request: Request, who: Caller) -> dict[str, Any]:
    """The native timeout is seconds from now: expiresAt becomes that, rounded up to a second."""
    try:
        when = parse_rfc3339(body.expires_at)
    except ValueError as exc:
        raise InvalidRequest("expiresAt", f"expiresAt: {exc}") from None
    seconds = math.ceil((when - datetime.now(UTC)).total_seconds())
    if seconds < 1:
        raise InvalidRequest("expiresAt", "expiresAt: must be in the future")
    most = state(request).settings.max_timeout
    if seconds > most:
        raise InvalidRequest("expiresAt", f"expiresAt: at most {most} seconds from now (the server's max_timeout)")
    sandbox = await state(request).services.sandboxes.renew(who.project(), sandbox_id, seconds)
    return {"expiresAt": rfc3339(sandbox.expires_at)}


@router.patch("/sandboxes/{sandbox_id}/metadata")
async def patch_metadata(
    sandbox_id: str, request: Request, who: Caller, patch: Annotated[dict[str, str | None], Body()]
) -> dict[str, Any]:
    """JSON merge patch: a string sets a key, null removes it; keys under opensandbox.io/ (this
    facade's own) and sandboxd. (the server's own) are refused, set or removed."""
    check_metadata({k: v for k, v in patch.items() if v is not None})
    for key in patch:  # a null too: removing the server's or this facade's own labels is no caller's
        for reserved in (RESERVED_PREFIX, SERVER_PREFIX):
            if key.startswith(reserved):
                raise InvalidRequest(f"metadata.{key}", f"metadata.{key}: the prefix {reserved} is reserved")

    def merge(spec: SandboxSpec) -> SandboxSpec:
        labels = {k: v for k, v in spec.metadata.items() if patch.get(k, "") is not None}
        labels.update({k: v for k, v in patch.items() if v is not None})
        CreateSandbox._labels(labels)  # the core's own rules (count, length)
        return spec.model_copy(update={"metadata": labels})

    try:
        sandbox = await state(request).services.sandboxes.patch_spec(who.project(), sandbox_id, merge, running=False)
    except ValueError as exc:
        raise InvalidRequest("metadata", f"metadata: {exc}") from None
    return dump(sandbox_out(sandbox))


@router.get("/sandboxes/{sandbox_id}/endpoints/{port}")
async def get_endpoint(
    sandbox_id: str,
    port: int,
    request: Request,
    who: Caller,
    use_server_proxy: bool = False,
    expires: int | None = None,
) -> dict[str, Any]:
    """44772 (execd) and 18080 (egress) are sandboxd's own APIs for the sandbox, answered at once
    even while it is pending (the SDK pings execd until it runs), with the sandbox's access token
    for that API. Any other port is exposed through the port proxy (the sandbox must be running)
    and answered with its path URL without a scheme (the SDK adds one) and its traffic token.
    use_server_proxy changes nothing: every endpoint is on sandboxd already.
    A GET, but it needs the write scope: the execd token runs commands, and another port is
    exposed by this call (a read-only key must get neither)."""
    who.require(Scope.WRITE)
    api = state(request)
    project = who.project()
    if not 1 <= port <= 65535:
        raise InvalidRequest("port", f"port: {port} is not between 1 and 65535")
    if port in SIDECARS:
        sandbox = await api.services.sandboxes.get(project, sandbox_id)
        if sandbox.status.state.ended:
            raise SandboxNotRunning(sandbox.id, sandbox.status.state.value)
        name, header = SIDECARS[port]
        token = access_token(api.api_key, name, sandbox.id, sandbox.traffic_token)
        return {
            "endpoint": f"{facades.public_base(request.scope)}/sandboxes/{sandbox.id}/proxy/{port}",
            "headers": {header: token},
        }
    ports = api.services.ports
    described = await ports.expose(project, sandbox_id, port)
    endpoint = str(described["path_url"]).split("://", 1)[-1]
    if expires is not None:
        expires_in = expires - int(time.time())
        if expires_in < 1:
            raise InvalidRequest("expires", "expires: must be in the future")
        signed = await ports.sign(project, sandbox_id, port, expires_in)
        signature = str(signed["url"]).rpartition(f"{SIGNATURE_QUERY}=")[2]
        return {"endpoint": f"{endpoint}?{SIGNATURE_QUERY}={signature}"}
    sandbox = await api.services.sandboxes.get(project, sandbox_id)
    if sandbox.spec.public_traffic:
        return {"endpoint": endpoint}
    return {"endpoint": endpoint, "headers": {"X-Sandbox-Token": sandbox.traffic_token}}


@router.post("/metrics/events", status_code=status.HTTP_204_NO_CONTENT)
async def metrics_event(who: Caller) -> Response:
    """The SDK's create telemetry: accepted, not kept (sandboxd's own metrics count creates)."""
    return Response(status_code=204)
