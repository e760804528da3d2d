"""Warm pools: ready sandboxes of one image and limits, kept started for one project's creates.

Who manages a pool: the project it belongs to (a key that may write to the project), and only that
project's creates take from it: a pooled sandbox is never handed to another tenant. Until checked
out a pooled sandbox is recorded in the pool's pseudo project (store/pools.py), so it is in no
user's list, quota, name space or event stream, and has no expiry.

A create fits a pool when everything fixed when the container was made is the same: the image (as
the project names it) or the template (services/pool_templates.py: a template's pool follows its
newest build) and the limits; no entrypoint, volumes, source or credential brokering of its own;
env, cwd and user only where the image has no start command (which runs with the pool's). What is
the sandbox's identity is bound at checkout, in one compare-and-set statement (two creates never get
the same one): its project, name, labels, env/cwd/user for execs, timeout (it starts at checkout), a
new traffic token; then its egress policy (pooled ones start with deny all). Its id, and so its
hostname and /etc/hosts, is a fresh ULID no one has seen before the checkout, so neither needs
rewriting inside the (hostile) root filesystem.

Pools refill in the background (a loop woken by every checkout). A server killed during a refill
finds the pooled sandbox pending on restart: reconcile removes it and the loop starts another.

What pools may cost is bounded (config.py): pools per project and the sum of their targets (create
and resize, checked under one lock), the pooled sandboxes of the whole server (the refill starts
none past it), and a pooled sandbox's age: one older than pool_max_age_seconds (at most
max_timeout) is recycled, so what its image's start command runs never outlives a sandbox's
longest timeout. A pooled sandbox is only ever removed by a compare-and-set on the record as read
(SandboxService.remove_pooled): one a create took meanwhile is the create's, and left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sandboxd.config import Settings
from sandboxd.domain import (
    MIN_CPU,
    Sandbox,
    SandboxSpec,
    State,
    Status,
    TemplateVersion,
    WarmPool,
    new_id,
    utcnow,
)
from sandboxd.errors import Conflict, InvalidRequest, PoolEmpty, PoolNotFound, QuotaExceeded, SandboxdError
from sandboxd.runtimes.base import EgressRecords, egress_control
from sandboxd.services.lifecycle import SandboxService
from sandboxd.services.pool_templates import Templates, made_from, no_progress, pool_fits_template
from sandboxd.services.requests import CreateSandbox, WarmPoolChoice
from sandboxd.services.specs import build_spec
from sandboxd.store.base import DuplicateKey, Store
from sandboxd.store.pools import POOLED_PREFIX, pooled_project

log = logging.getLogger("sandboxd.pools")

MAX_TARGET = 64  # ready sandboxes one pool may keep
FILL_INTERVAL = 2.0  # seconds between refill passes when no checkout wakes the loop
FILL_PARALLEL = 2  # sandboxes one pool starts at a time
REFILL_DELAY = 0.25  # seconds from a checkout to its refill
FAILED_BACKOFF = 30.0  # seconds a pool whose last fill failed waits before the next


class CreatePool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(
        None, description="The image, as the project names it; the server's default if no image, template or runtime."
    )
    template: str | None = Field(
        None,
        description="A template (its newest ready version, followed as new ones are built) or name:version: "
        "its image, env, start command and ready check are the pool's.",
    )
    runtime: str | None = Field(None, description="A runtime the server is configured with (the template it names).")
    target: int = Field(1, ge=0, le=MAX_TARGET, description="Ready sandboxes to keep started.")
    # The bounds of a create's own (CreateSandbox): a pool's limits are a create's.
    cpu: float | None = Field(None, ge=MIN_CPU, description="Limits a create must ask for (the defaults if omitted).")
    memory_mb: int | None = Field(None, ge=16)
    pids: int | None = Field(None, ge=16)
    disk_mb: int | None = Field(None, ge=16)

    @model_validator(mode="after")
    def _one_source(self) -> CreatePool:
        given = [name for name in ("image", "template", "runtime") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of image, template and runtime, not {' and '.join(given)}")
        return self


class ResizePool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: int = Field(ge=0, le=MAX_TARGET, description="Ready sandboxes to keep started.")


@dataclass
class PoolStatus:
    pool: WarmPool
    ready: int
    starting: int


class PoolService:
    def __init__(self, settings: Settings, store: Store, sandboxes: SandboxService) -> None:
        self.settings = settings
        self.store = store
        self.sandboxes = sandboxes
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._fills: dict[str, set[asyncio.Task[None]]] = {}
        self._failed_at: dict[str, float] = {}
        self._counts: set[asyncio.Task[None]] = set()
        self._closed = False  # no count is written once the store may be closing
        self._sizing = asyncio.Lock()  # a project's pool count and target sum, checked and written together
        self.templates: Templates | None = None  # set once the template service exists; None: no template pools

    # -- managing pools --------------------------------------------------------------------------

    async def create(self, project_id: str, req: CreatePool) -> PoolStatus:
        request = CreateSandbox(
            image=req.image, cpu=req.cpu, memory_mb=req.memory_mb, pids=req.pids, disk_mb=req.disk_mb
        )
        spec = build_spec(self.settings, request)  # the limits checked as a create's
        template = current = None
        if req.template is not None or req.runtime is not None:
            templates = self._templates("runtime" if req.runtime is not None else "template")
            template = req.template or templates.runtime_template(str(req.runtime))
            await templates.check(project_id, template)  # one the project cannot start from: 404/409 now
            current = await templates.current(project_id, template)  # None: built by the first refill
        else:
            await self.sandboxes.image_name(project_id, spec.image)  # an image the project cannot see: 400/404 now
        pool = WarmPool(
            id=new_id("wp_"),
            project_id=project_id,
            image="" if template else spec.image,
            limits=spec.limits,
            target=req.target,
            created_at=utcnow(),
            template=template,
            template_ref=current.ref if current else None,
            template_image=current.image if current else None,
        )
        async with self._sizing:
            pools = await self.store.find_pools(project_id)
            if len(pools) >= self.settings.max_pools_per_project:
                have = len(pools)
                raise QuotaExceeded(f"this project has {have} warm pools, the most it may (max_pools_per_project)")
            self._check_targets(pools, req.target)
            await self.store.insert_pool(pool)
        self._wake.set()
        return PoolStatus(pool, 0, 0)

    async def find(self, project_id: str) -> list[PoolStatus]:
        return [await self._status(pool) for pool in await self.store.find_pools(project_id)]

    async def get(self, project_id: str, pool_id: str) -> PoolStatus:
        pool = await self.store.get_pool(project_id, pool_id)
        if pool is None:
            raise PoolNotFound(pool_id)
        return await self._status(pool)

    async def resize(self, project_id: str, pool_id: str, target: int) -> PoolStatus:
        async with self._sizing:
            pools = await self.store.find_pools(project_id)
            if not any(p.id == pool_id for p in pools):
                raise PoolNotFound(pool_id)
            self._check_targets([p for p in pools if p.id != pool_id], target)
            pool = await self.store.resize_pool(project_id, pool_id, target)
        if pool is None:
            raise PoolNotFound(pool_id)
        self._wake.set()
        return await self._status(pool)

    def _templates(self, field: str) -> Templates:
        if self.templates is None:
            raise InvalidRequest(field, "this server has no templates")
        return self.templates

    def _check_targets(self, others: list[WarmPool], target: int) -> None:
        """QuotaExceeded if ``target`` with the project's other pools' targets passes its limit
        (a smaller target than before always passes: shrinking is never refused)."""
        most = self.settings.max_pooled_sandboxes_per_project
        kept = sum(p.target for p in others)
        if target and kept + target > most:
            raise QuotaExceeded(
                f"this project's other warm pools keep {kept} sandboxes; {target} more passes its {most} "
                "(max_pooled_sandboxes_per_project)",
                "target",
            )

    async def delete(self, project_id: str, pool_id: str) -> None:
        """Drains the pool: its record first (no refill starts after), then, once the ones still
        starting are up, every pooled sandbox: none is left when the call returns."""
        await self.get(project_id, pool_id)
        await self.store.delete_pool(pool_id)
        await asyncio.gather(*self._fills.get(pool_id, ()), return_exceptions=True)
        self._fills.pop(pool_id, None)
        await self._drain(pool_id)

    async def _status(self, pool: WarmPool) -> PoolStatus:
        live = await self._pooled(pool.id, [State.RUNNING, State.PENDING])
        ready = sum(1 for s in live if s.status.state == State.RUNNING)
        return PoolStatus(pool, ready, len(live) - ready)

    async def _pooled(self, pool_id: str, states: list[State]) -> list[Sandbox]:
        return await self.store.find_sandboxes(pooled_project(pool_id), states=states, limit=MAX_TARGET * 4)

    async def _drain(self, pool_id: str, keep: int = 0) -> None:
        ready = await self._pooled(pool_id, [State.RUNNING])
        for sandbox in ready[keep:]:
            await self._remove(sandbox, "pool_drained")

    async def _remove(self, sandbox: Sandbox, reason: str) -> bool:
        """Removes a pooled sandbox unless a create took it since it was read (compare-and-set)."""
        try:
            return await self.sandboxes.remove_pooled(sandbox, reason)
        except SandboxdError:
            log.exception("could not remove a pooled sandbox", extra={"sandbox_id": sandbox.id})
            return False

    async def _recycle(self, pool_id: str) -> int:
        """Removes the pool's ready sandboxes older than pool_max_age_seconds (at most max_timeout);
        the refill starts new ones. How many it removed."""
        age = min(self.settings.pool_max_age_seconds, float(self.settings.max_timeout))
        oldest = utcnow() - timedelta(seconds=age)
        removed = 0
        for sandbox in await self._pooled(pool_id, [State.RUNNING]):
            if sandbox.created_at <= oldest and await self._remove(sandbox, "pool_recycled"):
                removed += 1
        return removed

    # -- checkout ----------------------------------------------------------------------------------

    async def checkout(
        self, project_id: str, req: CreateSandbox, spec: SandboxSpec
    ) -> tuple[Sandbox | None, dict[str, Any]]:
        """A ready sandbox of the project's pools that fits the request, bound to it; (None,
        {hit: false}) where there is none (then a normal create runs), a 503 for mode require."""
        choice = req.warm_pool or WarmPoolChoice()
        if choice.mode == "bypass" or (choice.id is None and choice.mode == "prefer" and not _poolable(req, spec)):
            return None, {"hit": False, "id": None}  # no pool could fit: the store is not asked
        # The pools and their ready sandboxes in one read: a hit's path has one read and one write.
        found = await self.store.ready_pooled(project_id, choice.id, MAX_TARGET * 4)
        if choice.id is not None and not found:
            raise PoolNotFound(choice.id)
        ready = {pool.id: sandboxes for pool, sandboxes in found}
        pools = [pool for pool, _ in found]
        current = None  # the template version a create of it gets now, if a pool could give one
        if spec.template is not None and self.templates is not None and any(p.template for p in pools):
            current = await self.templates.current(project_id, spec.template)
        fitting = [pool for pool in pools if _fits(pool, req, spec, current)]
        if not fitting:
            if choice.mode == "require":
                which = f"warm pool {choice.id}" if choice.id else "no warm pool of this project"
                raise Conflict(
                    f"{which} fits this create: a pool fits the same image or template and limits, no "
                    "entrypoint, volumes, source or transforms",
                    "warm_pool",
                )
            return None, {"hit": False, "id": choice.id}
        for pool in fitting:
            for candidate in ready[pool.id]:
                if current is not None and not made_from(candidate, current):
                    continue  # made from an older build: the refill replaces it
                taken = await self._claim(project_id, pool, candidate, req, spec)
                if taken is not None:
                    # The refill waits a moment: started at once, it competes for the CPU with the
                    # caller's first commands in the sandbox just handed out. So does the count,
                    # a write that would share the store's thread with the create's answer.
                    asyncio.get_running_loop().call_later(REFILL_DELAY, self._refill_after_hit, pool.id)
                    return taken, {"hit": True, "id": pool.id}
        self._count(fitting[0].id, hit=False)
        self._wake.set()
        if choice.mode == "require":
            raise PoolEmpty(f"warm pool {fitting[0].id} has no ready sandbox now; try again, or use mode prefer")
        return None, {"hit": False, "id": fitting[0].id}

    def _refill_after_hit(self, pool_id: str) -> None:
        if self._closed:
            return
        self._count(pool_id, hit=True)  # before the refill's writes: a refilled pool shows the hit
        self._wake.set()

    def _count(self, pool_id: str, hit: bool) -> None:
        task = asyncio.create_task(self.store.count_checkout(pool_id, hit))
        self._counts.add(task)
        task.add_done_callback(self._counts.discard)

    async def _claim(
        self, project_id: str, pool: WarmPool, candidate: Sandbox, req: CreateSandbox, spec: SandboxSpec
    ) -> Sandbox | None:
        pooled = candidate.spec
        if pooled.entrypoint and (req.env or req.cwd or req.user):
            return None  # its start command runs with the pool's env, cwd and user
        # The request over the image's defaults, as create resolves it: the pooled spec holds them.
        image = {"env": pooled.env, "cwd": pooled.cwd, "user": pooled.user, "entrypoint": pooled.entrypoint}
        if pool.template is not None:  # recorded as a create of the template records it: the build it started from
            spec = spec.model_copy(update={"image": pooled.image, "template": pooled.template})
        bound = spec.resolved({**image, "ready_check": pooled.ready_check})
        now = utcnow()
        fields = {
            "status": Status(
                state=State.RUNNING, reason="warm_pool_checkout", message=f"from warm pool {pool.id}", changed_at=now
            ),
            "name": req.name,
            "spec": bound,
            "created_at": now,
            "expires_at": now + timedelta(seconds=bound.timeout),
            "traffic_token": secrets.token_urlsafe(24),
        }
        control = egress_control(self.sandboxes.runtime) if bound.egress_rules != pooled.egress_rules else None
        if isinstance(control, EgressRecords):
            # The record as it will be once the caller's policy is in force, written by the claim
            # itself: no second write. Until set_egress below returns, the kernel still holds the
            # pool's deny-all (stricter than the record) and the caller has no answer; a server
            # killed in between applies the recorded policy again on restart (adopt).
            fields["runtime"] = control.egress_record(candidate.runtime, bound.egress_rules or {})
        try:
            taken = await self.store.claim_pooled(candidate.id, pool.id, candidate.version, project_id, fields)
        except DuplicateKey:
            raise Conflict(f"a sandbox named {req.name!r} exists in this project", "name") from None
        if taken is None:
            return None  # another create took it first
        if control is not None:
            try:
                async with self.sandboxes.lock(taken.id):
                    record = await control.set_egress(taken.id, candidate.runtime, bound.egress_rules or {})
                    if record != taken.runtime:  # a runtime that cannot say its record beforehand
                        patched = await self.store.update_if(
                            taken.id, {"runtime": record}, expected_states=[State.RUNNING]
                        )
                        taken = patched or taken
            except Exception as exc:
                # It is the caller's now, and not as asked: removed, with the reason on record.
                log.exception("binding egress at checkout failed", extra={"sandbox_id": taken.id})
                await self.sandboxes.delete(None, taken.id, "checkout_failed", str(exc))
                return None
        return taken

    # -- refilling ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.create_task(self._fill_forever())

    async def shutdown(self) -> None:
        self._closed = True
        fills = [t for tasks in self._fills.values() for t in tasks]
        tasks = [*fills, *self._counts, *([self._loop] if self._loop else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def sweep(self) -> None:
        """At start: removes pooled sandboxes whose pool is gone (deleted while one was starting)."""
        pools = {pool.id for pool in await self.store.find_pools(None)}
        for sandbox in await self.store.active():
            if sandbox.project_id.startswith(POOLED_PREFIX) and sandbox.project_id[len(POOLED_PREFIX) :] not in pools:
                await self.sandboxes.delete(None, sandbox.id, "pool_deleted")

    async def _fill_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.fill_once()
            except Exception:
                log.exception("warm pool refill pass failed")
            # Not wait_for: on 3.11 it swallows a cancel that comes as the event is set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FILL_INTERVAL):
                    await self._wake.wait()

    async def fill_once(self) -> None:
        loop = asyncio.get_running_loop()
        pools = await self.store.find_pools(None)
        for pool in pools:
            await self._recycle(pool.id)
            if pool.template is not None:
                await self._follow_template(pool)
        statuses = [await self._status(pool) for pool in pools]
        # The server's pooled sandboxes: a fill started but not yet recorded counts too.
        room = self.settings.max_pooled_sandboxes - sum(
            s.ready + max(s.starting, len(self._fills.get(s.pool.id, ()))) for s in statuses
        )
        for status in statuses:
            pool = status.pool
            if loop.time() - self._failed_at.get(pool.id, -FAILED_BACKOFF) < FAILED_BACKOFF:
                continue
            have = status.ready + status.starting
            if have > pool.target:
                await self._drain(pool.id, keep=max(pool.target - status.starting, 0))
                continue
            fills = self._fills.setdefault(pool.id, set())
            for _ in range(min(pool.target - have, FILL_PARALLEL - len(fills), max(room, 0))):
                room -= 1
                task = asyncio.create_task(self._fill(pool))
                fills.add(task)
                task.add_done_callback(fills.discard)

    async def _follow_template(self, pool: WarmPool) -> None:
        """Records what the pool's template resolves to now and removes the pooled sandboxes made
        from anything else (a build before the newest): the refill replaces them."""
        assert pool.template is not None
        try:
            current = await self._templates("template").current(pool.project_id, pool.template)
        except SandboxdError as exc:
            log.warning("warm pool %s: template %s: %s", pool.id, pool.template, exc.message)
            return
        if current is None or current.image is None:
            return  # not built yet: the refill's start builds it
        if (pool.template_ref, pool.template_image) != (current.ref, current.image):
            await self.store.set_pool_template(pool.id, current.ref, current.image)
            pool.template_ref, pool.template_image = current.ref, current.image
        for sandbox in await self._pooled(pool.id, [State.RUNNING]):
            if not made_from(sandbox, current):
                await self._remove(sandbox, "pool_template_changed")

    async def _fill(self, pool: WarmPool) -> None:
        request = CreateSandbox(
            image=pool.image or None,
            template=pool.template,
            cpu=pool.limits.cpu,
            memory_mb=pool.limits.memory_mb,
            pids=pool.limits.pids,
            disk_mb=pool.limits.disk_mb,
            internet_access=False,  # until a checkout binds the caller's policy
        )
        try:
            spec, image = build_spec(self.settings, request), None
            if pool.template is not None:  # resolved (first built) in the pool's project, not the pseudo one
                image, ref = await self._templates("template").image_for(pool.project_id, pool.template, no_progress)
                spec = spec.model_copy(update={"image": image, "template": ref})
            error = await self.sandboxes.launch_pooled(pool.project_id, pooled_project(pool.id), spec, image)
        except SandboxdError as exc:
            error = exc
        if error is not None:
            log.warning("warm pool %s could not start a sandbox: %s", pool.id, error.message)
            self._failed_at[pool.id] = asyncio.get_running_loop().time()
            return
        self._failed_at.pop(pool.id, None)
        if await self.store.get_pool(None, pool.id) is None:
            await self._drain(pool.id)  # deleted while it started
        self._wake.set()


def _poolable(req: CreateSandbox, spec: SandboxSpec) -> bool:
    """Whether the request asks nothing a pooled sandbox cannot have, whatever the pool."""
    return (
        req.entrypoint is None
        and not req.volumes
        and req.source is None
        and not req.transforms
        and req.image_auth is None
    )


def _fits(pool: WarmPool, req: CreateSandbox, spec: SandboxSpec, current: TemplateVersion | None) -> bool:
    """Whether nothing the container was made with differs from what the request asks (a
    template's pool: the template, resolving to ``current`` now)."""
    if not (spec.limits == pool.limits and _poolable(req, spec)):
        return False
    if pool.template is None:
        return spec.template is None and spec.image == pool.image
    return pool_fits_template(pool, spec.template, current)
