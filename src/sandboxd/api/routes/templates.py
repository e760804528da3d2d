"""Templates (build, versions, build logs) and the runtimes that name them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from sandboxd.api.deps import ProjectId, Templates, authorize_operator
from sandboxd.api.params import Offset, Version
from sandboxd.api.routing import CheckedRoute
from sandboxd.domain import BuildState, TemplateVersion
from sandboxd.services.requests import CreateTemplate

router = APIRouter(prefix="/api/v1", tags=["templates"], route_class=CheckedRoute)


class TemplateOut(BaseModel):
    name: str
    version: int
    ref: str = Field(description="name:version, as sandboxes name it in `template`.")
    state: BuildState
    message: str
    image: str | None
    steps_cached: int = Field(description="Steps whose layer came from the build cache.")
    definition: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, v: TemplateVersion) -> TemplateOut:
        return cls(ref=v.ref, **v.model_dump())


class TemplateList(BaseModel):
    items: list[TemplateOut]


class RuntimeOut(BaseModel):
    name: str
    template: str
    built: str | None = Field(description="name:version of its newest ready build; built on first use if none.")


class RuntimeList(BaseModel):
    items: list[RuntimeOut]


@router.post("/templates", status_code=status.HTTP_202_ACCEPTED, response_model=TemplateOut)
async def build_template(
    body: CreateTemplate,
    service: Templates,
    project: ProjectId,
    response: Response,
    wait: Annotated[bool, Query(description="Answer once the build has ended (201), not at its start.")] = False,
    no_cache: Annotated[bool, Query(description="Run every step again, cached or not.")] = False,
) -> TemplateOut:
    """Builds the next version of a template. Follow its log at .../versions/{version}/logs?follow=true."""
    version = await service.build(project, body, no_cache)
    response.headers["Location"] = f"/api/v1/templates/{version.name}/versions/{version.version}"
    if wait:
        version = await service.wait(version)
        response.status_code = status.HTTP_201_CREATED
    return TemplateOut.of(version)


@router.get("/templates", response_model=TemplateList)
async def list_templates(service: Templates, project: ProjectId, name: str | None = None) -> TemplateList:
    """The project's templates, every version, by name and version; `name` filters."""
    return TemplateList(items=[TemplateOut.of(v) for v in await service.find(project, name)])


@router.get("/templates/{name}", response_model=TemplateOut)
async def get_template(name: str, service: Templates, project: ProjectId) -> TemplateOut:
    """The newest version."""
    return TemplateOut.of(await service.get(project, name))


@router.get("/templates/{name}/versions/{version}", response_model=TemplateOut)
async def get_template_version(name: str, version: Version, service: Templates, project: ProjectId) -> TemplateOut:
    """One version of a template: its definition, state and build result."""
    return TemplateOut.of(await service.get(project, name, version))


@router.get(
    "/templates/{name}/versions/{version}/logs",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
async def template_logs(
    name: str,
    version: Version,
    service: Templates,
    project: ProjectId,
    offset: Offset = 0,
    follow: Annotated[bool, Query(description="Keep streaming until the build ends.")] = False,
) -> StreamingResponse:
    """A template version's build log from a byte offset; with `follow=true`, streamed until the build ends."""
    return StreamingResponse(await service.logs(project, name, version, offset, follow), media_type="text/plain")


@router.delete("/templates/{name}/versions/{version}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_template_version(name: str, version: Version, service: Templates, project: ProjectId) -> None:
    """Removes the version and its image; refused while a sandbox runs on it."""
    await service.delete(project, name, version)


@router.get("/runtimes", response_model=RuntimeList)
async def list_runtimes(service: Templates) -> RuntimeList:
    """The runtimes the server offers (`python3.11`, `node18`, ...) and whether each one's template is built."""
    items = [
        RuntimeOut(name=runtime, template=template, built=built.ref if built else None)
        for runtime, template, built in await service.runtimes()
    ]
    return RuntimeList(items=items)


@router.post(
    "/runtimes/{runtime}/build",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TemplateOut,
    dependencies=[Depends(authorize_operator)],
)
async def build_runtime(
    runtime: str, service: Templates, response: Response, no_cache: Annotated[bool, Query()] = False
) -> TemplateOut:
    """Builds (again) the template a runtime names, from its definition on the server; every
    project's sandboxes of that runtime use it, so only the server's key may."""
    version = await service.build_runtime(runtime, no_cache)
    response.headers["Location"] = f"/api/v1/templates/{version.name}/versions/{version.version}"
    return TemplateOut.of(version)
