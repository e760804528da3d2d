"""Vercel facade: sandboxes (a name with successive sessions; a session is one native sandbox).

create (POST /v3 and /v2) -> a native create, named and labelled; persistent (the default) is a
native persistent sandbox whose timeout stops it (files kept). get with resume=true boots the
current session again if sandboxd still holds it stopped, else starts a new session: from the
name's kept files (persistent) or afresh (not). delete removes the live session, the name's kept
files and (deleteOrphanSnapshots) the snapshots of its sessions; its sessions stay as records
under another label, so the name is free again."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError

from sandboxd.api.facades.vercel import paging, shapes
from sandboxd.api.facades.vercel.common import (
    DELETED_LABEL,
    RUNTIME_LABEL,
    SANDBOX_LABEL,
    TAG_PREFIX,
    VercelError,
    caller,
    current,
    project_of,
    services,
    sessions,
)
from sandboxd.api.facades.vercel.models import CreateBody, ForkBody, Overrides, UpdateBody
from sandboxd.domain import Sandbox, Scope, State, TimeoutAction, new_id
from sandboxd.errors import InvalidRequest
from sandboxd.services.requests import CreateSandbox
from sandboxd.services.snapshots import ForkSandbox
from sandboxd.services.specs import egress_rules

router = APIRouter()

DEFAULT_RUNTIME = "node24"
DEFAULT_TIMEOUT_MS = 5 * 60 * 1000
# Where a native field's error is the Vercel field's.
_FIELDS = {
    "cpu": "resources.vcpus",
    "memory_mb": "resources.memory",
    "metadata": "tags",
    "egress": "networkPolicy",
    "volumes": "mounts",
}


def native(model: type[Any], **fields: Any) -> Any:
    """A core request built here: its refusal is a 400 naming the Vercel field, not a 500."""
    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        field = _FIELDS.get(loc[0], loc[0]) if loc else "body"
        raise InvalidRequest(field, f"{field}: {str(first['msg']).removeprefix('Value error, ')}") from None


def _check_timeout(request: Request, ms: int | None) -> None:
    most = services(request).settings.max_timeout
    if ms is not None and ms > most * 1000:
        raise InvalidRequest("timeout", f"timeout must be at most {most * 1000} ms")


def _check_vcpus(request: Request, body: Overrides) -> tuple[float, int] | None:
    limits = body.limits()
    most = services(request).settings.max_cpu
    if limits is not None and limits[0] > most:
        raise InvalidRequest("resources.vcpus", f"at most {most:g} vcpus here")
    return limits


def _response(request: Request, name: str, found: list[Sandbox], **extra: Any) -> dict[str, Any]:
    last = found[-1]
    return {
        "sandbox": shapes.sandbox(name, found),
        "session": shapes.session(last),
        "routes": shapes.routes(services(request).ports, last),
        **extra,
    }


async def _create(request: Request, body: CreateBody) -> dict[str, Any]:
    project = await project_of(request, body.projectId)
    body.refuse_unsupported()
    _check_timeout(request, body.timeout)
    limits = _check_vcpus(request, body)
    name = body.name or new_id("sandbox-").replace("_", "-")
    if await sessions(request, project, name):
        raise VercelError(409, "sandbox_already_exists", f"a sandbox named {name!r} exists in this project")
    source = body.native_source()
    runtime = body.runtime
    settings = services(request).settings
    if runtime is None and body.image is None and source is None and DEFAULT_RUNTIME in settings.runtimes:
        runtime = DEFAULT_RUNTIME  # Vercel's default, where the operator configured it
    labels = {SANDBOX_LABEL: name, **body.labels()}
    if runtime is not None:
        labels[RUNTIME_LABEL] = runtime
    persistent = body.persistent is not False
    egress = body.networkPolicy.native() if body.networkPolicy else None
    req: CreateSandbox = native(
        CreateSandbox,
        name=name,
        image=body.image,
        runtime=runtime,
        env=body.env or {},
        metadata=labels,
        cpu=limits[0] if limits else None,
        memory_mb=limits[1] if limits else None,
        timeout=-(-(body.timeout or DEFAULT_TIMEOUT_MS) // 1000),
        timeout_action=TimeoutAction.STOP if persistent else TimeoutAction.DESTROY,
        persistent=persistent,
        egress=egress,
        ports=body.ports or [],
        public_traffic=True,  # Vercel's routes are public URLs
        source=source,
        volumes=body.volumes(),
    )
    created = await services(request).sandboxes.create(project, req, wait=True)
    return _response(request, name, [created])


@router.post("/v3/sandboxes")
async def create_v3(request: Request, body: CreateBody) -> dict[str, Any]:
    """What the Python SDK sends."""
    return await _create(request, body)


@router.post("/v2/sandboxes")
async def create_v2(request: Request, body: CreateBody) -> dict[str, Any]:
    """The seed's create (the TS SDK's with `runtime`)."""
    return await _create(request, body)


async def resume_session(request: Request, project: str, name: str, last: Sandbox) -> Sandbox:
    """A running session of the sandbox whose current session is `last` (not running)."""
    svc = services(request).sandboxes
    state = last.status.state
    if state == State.STOPPED:
        return await svc.start(project, last.id)
    if state == State.HIBERNATED:
        return await svc.resume(project, last.id)
    if not state.ended:
        return last  # pending or stopping: the SDK polls
    spec = last.spec.model_copy(update={"resumed_from": None})
    if spec.persistent and svc.persistence is not None:
        spec = spec.model_copy(update={"snapshot": None})
        spec = await svc.persistence.resume(project, native(CreateSandbox, name=name, persistent=True), spec)
    return await svc.launch(project, spec, name=name)


@router.get("/v2/sandboxes/{name}")
async def get_sandbox(
    request: Request, name: str, projectId: str | None = None, resume: bool = False
) -> dict[str, Any]:
    project = await project_of(request, projectId)
    if resume:  # a GET that starts a session: the key must be one that may change things
        (await caller(request, projectId)).require(Scope.WRITE)
    found = await current(request, project, name)
    last = found[-1]
    if resume and last.status.state not in (State.RUNNING, State.PENDING):
        resumed = await resume_session(request, project, name, last)
        found = [s for s in found if s.id != resumed.id] + [resumed]
        return _response(request, name, found, resumed=True)
    return _response(request, name, found, resumed=False)


def _sort_key(by: str, name: str, found: list[Sandbox]) -> Any:
    if by == "name":
        return name
    if by == "statusUpdatedAt":
        return (found[-1].status.changed_at, name)
    return (found[0].created_at, name)


@router.get("/v2/sandboxes")
async def list_sandboxes(
    request: Request,
    project: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    sortBy: Annotated[str, Query(pattern="^(createdAt|name|statusUpdatedAt)$")] = "createdAt",
    sortOrder: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    namePrefix: str | None = None,
    tags: str | None = None,
) -> dict[str, Any]:
    """The project's sandboxes, a page at a time; cursor: the offset of the page (opaque)."""
    project_id = await project_of(request, project)
    tag: tuple[str, str] | None = None
    if tags is not None:
        key, sep, value = tags.partition(":")
        if not sep or not key:
            raise InvalidRequest("tags", "tags filter is key:value")
        tag = (f"{TAG_PREFIX}{key}", value)
    groups: dict[str, list[Sandbox]] = {}
    after: str | None = None
    while True:
        page = await services(request).sandboxes.find(project_id, None, None, after, 1000)
        for sb in page:
            name = sb.spec.metadata.get(SANDBOX_LABEL)
            if name is not None:
                groups.setdefault(name, []).append(sb)
        if len(page) < 1000:
            break
        after = page[-1].id
    rows = [
        (name, found)
        for name, found in groups.items()
        if (namePrefix is None or name.startswith(namePrefix))
        and (tag is None or found[-1].spec.metadata.get(tag[0]) == tag[1])
    ]
    rows.sort(key=lambda row: _sort_key(sortBy, *row), reverse=sortOrder == "desc")
    chosen, pagination = paging.page(rows, cursor, limit)
    return {"sandboxes": [shapes.sandbox(name, found) for name, found in chosen], "pagination": pagination}


@router.patch("/v2/sandboxes/{name}")
async def update_sandbox(request: Request, name: str, body: UpdateBody, projectId: str | None = None) -> dict[str, Any]:
    """Saved on the current session's record, so the next session (a resume) has it too; ports
    and the network policy also apply at once to a running session; resources, env and timeout
    from its next (re)start (env: a running session's next command)."""
    project = await project_of(request, projectId)
    body.refuse_unsupported()
    for field in ("mounts", "currentSnapshotId"):
        if getattr(body, field) is not None:
            raise InvalidRequest(field, f"{field} cannot be changed here: create a sandbox with it")
    _check_timeout(request, body.timeout)
    limits = _check_vcpus(request, body)
    svc = services(request)
    last = (await current(request, project, name))[-1]
    if body.networkPolicy is not None:
        policy = body.networkPolicy.native()
        if last.status.state == State.RUNNING:
            await svc.sandboxes.set_egress(project, last.id, policy)
        else:
            saved = {
                "egress": policy.model_dump(),
                "egress_rules": egress_rules(policy),  # what its next start enforces
                "internet_access": policy.mode != "deny_all",
            }
            await svc.sandboxes.patch_spec(project, last.id, lambda s: s.model_copy(update=saved), running=False)
    if body.ports is not None:
        # Through the port service: it forgets the proxy's cached routes of a port that goes.
        wanted = native(CreateSandbox, ports=body.ports).ports
        for port in sorted(set(last.spec.ports) - set(wanted)):
            await svc.ports.unexpose(project, last.id, port)
        added = sorted(set(wanted) - set(last.spec.ports))
        if added and last.status.state == State.RUNNING:
            for port in added:
                await svc.ports.expose(project, last.id, port)
        elif added:
            await svc.sandboxes.patch_spec(
                project, last.id, lambda s: s.model_copy(update={"ports": sorted({*s.ports, *added})}), running=False
            )
    labels = body.labels()

    def change(spec: Any) -> Any:
        update: dict[str, Any] = {}
        if body.tags is not None:
            kept = {k: v for k, v in spec.metadata.items() if not k.startswith(TAG_PREFIX)}
            update["metadata"] = {**kept, **labels}
        elif labels:
            update["metadata"] = {**spec.metadata, **labels}
        if body.env is not None:
            update["env"] = {**spec.env, **native(CreateSandbox, env=body.env).env}
        if body.timeout is not None:
            update["timeout"] = -(-body.timeout // 1000)
        if limits is not None:
            update["limits"] = spec.limits.model_copy(update={"cpu": limits[0], "memory_mb": limits[1]})
        if body.persistent is not None:
            action = TimeoutAction.STOP if body.persistent else TimeoutAction.DESTROY
            update |= {"persistent": body.persistent, "timeout_action": action}
        return spec.model_copy(update=update)

    await svc.sandboxes.patch_spec(project, last.id, change, running=False)
    found = await current(request, project, name)
    return {"sandbox": shapes.sandbox(name, found), "routes": shapes.routes(svc.ports, found[-1])}


@router.delete("/v2/sandboxes/{name}")
async def delete_sandbox(
    request: Request, name: str, projectId: str | None = None, deleteOrphanSnapshots: bool = False
) -> dict[str, Any]:
    project = await project_of(request, projectId)
    svc = services(request)
    found = await current(request, project, name)
    ended = await svc.sandboxes.delete(project, found[-1].id)
    # The name's kept files go with it (a persistent session's delete keeps them first).
    session_ids = {s.id for s in found}
    for snapshot in await svc.snapshots.find(project):
        orphan = deleteOrphanSnapshots and snapshot.sandbox_id in session_ids
        if snapshot.persistent_name == name or orphan:
            await svc.snapshots.delete(project, snapshot.id)

    def retire(spec: Any) -> Any:
        metadata = {k: v for k, v in spec.metadata.items() if k != SANDBOX_LABEL}
        return spec.model_copy(update={"metadata": {**metadata, DELETED_LABEL: name}})

    body = shapes.sandbox(name, [*found[:-1], ended])
    for session in found:
        await svc.sandboxes.patch_spec(project, session.id, retire, running=False)
    return {"sandbox": body}


@router.post("/v2/sandboxes/{name}/fork")
async def fork_sandbox(request: Request, name: str, body: ForkBody, projectId: str | None = None) -> dict[str, Any]:
    """A new sandbox from the current session's files as they are now (running or stopped), with
    its settings; a fork may give a name, tags and a timeout, nothing else."""
    project = await project_of(request, projectId or body.projectId)
    for field in sorted(Overrides.model_fields):
        if field not in ("tags", "timeout") and getattr(body, field) is not None:
            raise InvalidRequest(field, f"a fork takes its source's {field}: give only name, tags and timeout")
    if body.image is not None:
        raise InvalidRequest("image", "a fork runs on its source's files: give no image")
    _check_timeout(request, body.timeout)
    last = (await current(request, project, name))[-1]
    new_name = body.name or new_id("sandbox-").replace("_", "-")
    if await sessions(request, project, new_name):
        raise VercelError(409, "sandbox_already_exists", f"a sandbox named {new_name!r} exists in this project")
    labels = {k: v for k, v in last.spec.metadata.items() if not (body.tags is not None and k.startswith(TAG_PREFIX))}
    labels |= body.labels() | {SANDBOX_LABEL: new_name}
    timeout = None if body.timeout is None else -(-body.timeout // 1000)
    req = native(ForkSandbox, name=new_name, metadata=labels, timeout=timeout)
    forked = await services(request).snapshots.fork(project, last.id, req)
    return _response(request, new_name, [forked])
