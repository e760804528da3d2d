"""Warm pools of a template (or of a runtime, which names one): what services/pools.py asks of
templates, and the rule for which pooled sandboxes are still the template's.

A template's pool names the template as a create would (``name``: its newest ready version, or
``name:version``), resolved in the pool's own project: a pooled sandbox lives in a pseudo project
where no project's templates are. Each refill pass resolves it again (a store read, no build) and
records what it resolved to; a pooled sandbox made from anything else (a version built before the
newest) is never handed out, and the pass removes it, so the pool refills from the new build. A
checkout resolves the request's template the same way: a create gets the version it would get
without a pool. Deleting the version a pool starts from is refused (services/templates.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sandboxd.domain import Sandbox, TemplateVersion, WarmPool


class Templates(Protocol):
    """What warm pools need of the template service (services/templates.py)."""

    def runtime_template(self, runtime: str) -> str: ...

    async def check(self, project_id: str, template: str) -> None: ...

    async def current(self, project_id: str, template: str) -> TemplateVersion | None: ...

    async def image_for(
        self, project_id: str, template: str, progress: Callable[[str, str], None]
    ) -> tuple[str, str]: ...


def template_name(template: str) -> str:
    return template.partition(":")[0]


def pool_fits_template(pool: WarmPool, template: str | None, current: TemplateVersion | None) -> bool:
    """Whether a create naming ``template`` (resolving now to ``current``) may take from the pool:
    the same template, named alike or resolving to the version the pool starts from."""
    if pool.template is None or template is None or current is None:
        return pool.template is None and template is None
    if template_name(pool.template) != template_name(template):
        return False
    return pool.template == template or pool.template_ref == current.ref


def made_from(sandbox: Sandbox, version: TemplateVersion) -> bool:
    """Whether a pooled sandbox was started from exactly this build (its ref and its image)."""
    return (sandbox.spec.template, sandbox.spec.image) == (version.ref, version.image)


def no_progress(_step: str, _message: str) -> None:
    """A pooled sandbox has no caller to show a first-use build's progress to."""
