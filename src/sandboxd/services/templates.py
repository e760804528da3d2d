"""Templates: named, versioned recipes (a base image plus steps) built once into an image that
sandboxes start from many times; and runtimes, names such as ``node18`` that resolve to them.

A build runs each step that changes files (run, copy) in a sandbox of its own, started on the base
image plus the layers of the steps before it, and keeps that sandbox's writable layer as the step's
layer. Steps that only change settings (env, workdir, user) make no layer. Every step has a cache
key: the hash of the base image's layers and of every step up to it, so a rebuild reuses the
longest unchanged prefix of steps and runs only the rest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandboxd.config import Settings
from sandboxd.domain import SHARED_PROJECT, BuildState, ExitInfo, Limits, SandboxSpec, TemplateVersion, utcnow
from sandboxd.errors import Conflict, InvalidRequest, SandboxdError
from sandboxd.runtimes.base import Runtime, layer_builder
from sandboxd.services.commands import CommandService, Gap, Output
from sandboxd.services.lifecycle import SandboxService
from sandboxd.services.requests import (
    CopyStep,
    CreateTemplate,
    EnvStep,
    RunCommand,
    RunStep,
    UserStep,
    WorkdirStep,
)
from sandboxd.services.template_definitions import Definitions
from sandboxd.store.base import Store
from sandboxd.store.pools import pooled_project

log = logging.getLogger("sandboxd.templates")

BUILD_LABEL = "sandboxd.template-build"
LOG_CAP = 16 * 1024 * 1024  # bytes of step output kept in a build log
MAX_LINE = 64 * 1024  # on the sandboxes that run build steps


class TemplateNotFound(SandboxdError):
    code = "TEMPLATE_NOT_FOUND"
    status = 404

    def __init__(self, ref: str) -> None:
        super().__init__(f"template {ref!r} not found", "template")


@dataclass
class _Context:
    """What settings steps have set so far: the build's later steps and its image get them."""

    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None


class TemplateService:
    def __init__(
        self, settings: Settings, store: Store, runtime: Runtime, sandboxes: SandboxService, commands: CommandService
    ) -> None:
        self.settings = settings
        self.store = store
        self.runtime = runtime
        self.sandboxes = sandboxes
        self.commands = commands
        self.definitions = Definitions(settings)
        self.log_dir = settings.data_dir / "builds"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._builds: dict[str, asyncio.Task[None]] = {}
        self._name_locks: dict[str, asyncio.Lock] = {}

    # -- building --------------------------------------------------------------------------------

    async def build(self, project_id: str, definition: CreateTemplate, no_cache: bool = False) -> TemplateVersion:
        """Starts building the next version of definition.name in the project; returns it while
        it builds. no_cache runs every step again (an apt-get upgrade that should pick up new
        packages); its layers then replace the cached ones."""
        layer_builder(self.runtime)  # a runtime that cannot build refuses before a version exists
        async with self._name_locks.setdefault(f"{project_id}/{definition.name}", asyncio.Lock()):
            latest = await self.store.get_template(project_id, definition.name)
            version = TemplateVersion(
                project_id=project_id,
                name=definition.name,
                version=(latest.version + 1) if latest else 1,
                definition=definition.model_dump(mode="json"),
                state=BuildState.BUILDING,
                created_at=utcnow(),
            )
            await self.store.insert_template(version)
        self.log_path(version).parent.mkdir(mode=0o700, exist_ok=True)
        self.log_path(version).write_bytes(b"")
        task = asyncio.create_task(self._build(version, definition, no_cache))
        self._builds[_key(version)] = task
        task.add_done_callback(lambda _t: self._builds.pop(_key(version), None))
        return version

    async def wait(self, version: TemplateVersion) -> TemplateVersion:
        task = self._builds.get(_key(version))
        if task is not None:
            await asyncio.shield(task)
        return await self.get(version.project_id, version.name, version.version)

    async def _build(self, version: TemplateVersion, definition: CreateTemplate, no_cache: bool) -> None:
        with open(self.log_path(version), "ab", buffering=0) as out:
            left = [LOG_CAP]

            def say(line: str) -> None:
                # A step printing without end cannot fill the disk: past the cap, only the
                # build's own lines (==>) are kept.
                data = (line.rstrip("\n") + "\n").encode()
                if left[0] > 0 or line.startswith("==>"):
                    if 0 < left[0] < len(data) + 1:
                        data = b"==> the build log is over its size limit: step output is dropped from here\n"
                    left[0] -= len(data)
                    out.write(data)

            try:
                image, cached = await self._run_steps(version, definition, say, no_cache)
                version.state, version.image, version.steps_cached = BuildState.READY, image, cached
                say(f"==> built {version.ref} ({cached} of {len(definition.steps)} steps from the cache)")
            except SandboxdError as exc:
                version.state, version.message = BuildState.FAILED, exc.message
                say(f"==> build failed: {exc.message}")
            except Exception as exc:
                log.exception("template build failed", extra={"template": version.ref})
                version.state, version.message = BuildState.FAILED, f"build failed: {exc}"
                say(f"==> build failed: {exc}")
            finally:
                version.finished_at = utcnow()
                patch = {f: getattr(version, f) for f in ("state", "image", "steps_cached", "message", "finished_at")}
                await self.store.update_template(version.project_id, version.name, version.version, patch)

    async def _run_steps(
        self, version: TemplateVersion, definition: CreateTemplate, say: Callable[[str], None], no_cache: bool = False
    ) -> tuple[str, int]:
        base = definition.base or self.settings.default_image
        say(f"==> base image {base}")
        # The project's name for it (an image it imported) as the catalog knows it; one it does not see is refused.
        base = await self.sandboxes.image_name(version.project_id, base)
        builder = layer_builder(self.runtime)
        base_layers = await builder.ensure_image(base, lambda _step, msg: say(f"    {msg}"))
        base_config = self.runtime.image_config(base)
        ctx = _Context(env=dict(base_config.get("env", {})), cwd=base_config.get("cwd"), user=base_config.get("user"))
        layers: list[str] = []
        cached = 0
        for number, step in enumerate(definition.steps, 1):
            # A step's result depends on exactly the layers under it and the settings it runs
            # with: the key names those, so a cache hit is always the layer this step would make.
            # The project is part of the key: a layer one project made (in a sandbox it could
            # write to while the step ran) is never another project's, nor the shared runtimes'.
            key = _hash(
                "step",
                {
                    "project": version.project_id,
                    "parents": [*base_layers, *layers],
                    "context": vars(ctx),
                    "step": step.model_dump(),
                },
            )
            say(f"==> step {number}/{len(definition.steps)}: {_describe(step)}")
            if isinstance(step, EnvStep):
                ctx.env.update(step.env)
            elif isinstance(step, UserStep):
                ctx.user = step.user
            elif not no_cache and (layer := builder.cached_layer(key)) is not None:
                say("    cached")
                cached += 1
                layers.append(layer)
            else:
                layer = await self._layer_step(version, base, layers, ctx, step, number, say)
                builder.cache_layer(key, layer)
                layers.append(layer)
            if isinstance(step, WorkdirStep):
                ctx.cwd = step.path
        config: dict[str, Any] = {"env": ctx.env, "cwd": ctx.cwd, "user": ctx.user}
        if definition.start_command is not None:
            start = definition.start_command
            config["entrypoint"] = ["/bin/sh", "-c", start] if isinstance(start, str) else start
        if definition.ready_check is not None:
            config["ready_check"] = definition.ready_check.model_dump(mode="json")
        # Named by content: a rebuild that changes nothing, here or by another server sharing the
        # image directory, finds its image already there.
        image = f"template-{version.name}-{_hash('image', {'layers': [*base_layers, *layers], 'config': config})[:16]}"
        made = True
        try:
            await asyncio.to_thread(builder.save_image, image, base, layers, config, {"template": version.name})
        except InvalidRequest as exc:
            if "already exists" not in exc.message:
                raise
            made = False
        if definition.ready_check is not None:
            try:
                await self._try_ready_check(version, image, say)
            except BaseException:
                if made and not await self._image_in_use(image):
                    with contextlib.suppress(SandboxdError):
                        await asyncio.to_thread(builder.delete_image, image)
                raise
        return image, cached

    async def _try_ready_check(self, version: TemplateVersion, image: str, say: Callable[[str], None]) -> None:
        """Starts one sandbox of the new image as a create would (its start command, then its
        readiness check until the check's timeout): a check that can never pass fails the build,
        once, with the check's own output, instead of every create from the template."""
        s = self.settings
        say("==> trying the ready check in a sandbox of the new image")
        spec = SandboxSpec(
            image=image,
            metadata={BUILD_LABEL: version.ref},
            # What a create gets by default: the check must pass in the sandboxes users will get.
            limits=Limits(
                cpu=s.default_cpu, memory_mb=s.default_memory_mb, pids=s.default_pids, disk_mb=s.default_disk_mb
            ),
            timeout=600 + 120,  # the check's timeout is at most 600 s
        )
        try:
            sandbox = await self.sandboxes.launch(SHARED_PROJECT, spec)
        except SandboxdError as exc:
            message = f"the ready check did not pass in a sandbox of the new image: {exc.message}"
            raise InvalidRequest("ready_check", message) from None
        await self.sandboxes.delete(None, sandbox.id, "template_ready_check_done")
        say("    the ready check passed")

    async def _image_in_use(self, image: str) -> bool:
        return any(v.image == image for v in await self.store.find_all_templates())

    async def _layer_step(
        self,
        version: TemplateVersion,
        base: str,
        layers: list[str],
        ctx: _Context,
        step: RunStep | CopyStep | WorkdirStep,
        number: int,
        say: Callable[[str], None],
    ) -> str:
        """Runs one step in a sandbox of its own and returns its writable layer as a new layer."""
        s = self.settings
        timeout = step.timeout if isinstance(step, RunStep) else 60.0
        spec = SandboxSpec(
            image=base,
            layers=list(layers),
            env=ctx.env,
            cwd="/",  # a workdir step's directory exists only once that step has run
            image_start=False,  # a base template's start command and readiness check stay out of builds
            metadata={BUILD_LABEL: version.ref},
            limits=Limits(cpu=s.max_cpu, memory_mb=s.build_memory_mb, pids=s.build_pids, disk_mb=s.build_disk_mb),
            timeout=int(timeout) + 120,
        )
        # In the shared project, which no key can name: the building project's keys cannot reach
        # the step's sandbox (to write into the layer it is making) while it runs. Its base image
        # was resolved in the building project already.
        sandbox = await self.sandboxes.launch(SHARED_PROJECT, spec)
        try:
            if isinstance(step, RunStep):
                cmd = RunCommand(command=step.command, user=ctx.user, cwd=ctx.cwd, timeout=step.timeout)
                exit_info: ExitInfo | None = None
                pending = b""
                async for item in await self.commands.stream(None, sandbox.id, cmd):
                    if isinstance(item, Output):
                        pending += item.data
                        *lines, pending = pending.split(b"\n")
                        if len(pending) > MAX_LINE:  # output without newlines is cut into lines
                            lines, pending = [*lines, pending], b""
                        for line in lines:
                            say("    " + line.decode(errors="replace"))
                    elif isinstance(item, Gap):
                        pending = b""
                        say(f"    [sandboxd: {item.dropped} bytes of this step's output were dropped here]")
                    elif isinstance(item, ExitInfo):  # (the process started is told first)
                        exit_info = item
                if pending:
                    say("    " + pending.decode(errors="replace"))
                if exit_info is not None and exit_info.timed_out:
                    raise InvalidRequest("steps", f"step {number} (run) timed out after {step.timeout:g} s")
                code = exit_info.exit_code if exit_info is not None else None
                if code != 0:
                    raise InvalidRequest("steps", f"step {number} (run) exited with code {code}")
            elif isinstance(step, WorkdirStep):  # made like Docker's WORKDIR: it exists afterwards
                await self.runtime.agent(sandbox.id, sandbox.runtime).mkdir(step.path)
            else:
                data = base64.b64decode(step.content) if step.encoding == "base64" else step.content.encode()

                async def body() -> AsyncIterator[bytes]:
                    yield data

                await self.runtime.agent(sandbox.id, sandbox.runtime).write(step.path, body(), step.mode)
                say(f"    wrote {len(data)} bytes")
        except BaseException:
            await self.sandboxes.delete(None, sandbox.id, "template_step_failed")
            raise
        return await self.sandboxes.commit_and_delete(sandbox.id, "template_step_done")

    # -- reading and removing --------------------------------------------------------------------

    async def _find(
        self, project_id: str, name: str, version: int | None = None, ready: bool = False
    ) -> TemplateVersion | None:
        """The project's own template of that name; else, for a name the operator defines (a
        shipped or configured definition, a runtime's), the shared one."""
        found = await self.store.get_template(project_id, name, version, ready)
        if found is None and project_id != SHARED_PROJECT and self.definition(name) is not None:
            found = await self.store.get_template(SHARED_PROJECT, name, version, ready)
        return found

    async def get(self, project_id: str, name: str, version: int | None = None) -> TemplateVersion:
        found = await self._find(project_id, name, version)
        if found is None:
            raise TemplateNotFound(name if version is None else f"{name}:{version}")
        return found

    async def find(self, project_id: str, name: str | None = None) -> list[TemplateVersion]:
        return await self.store.find_templates(project_id, name)

    async def images(self, project_id: str | None) -> set[str]:
        """The images the project's templates were built into; every project's but the shared
        one's with None (what the image service tells from the operator's images)."""
        if project_id is None:
            found = [v for v in await self.store.find_all_templates() if v.project_id != SHARED_PROJECT]
        else:
            found = await self.store.find_templates(project_id)
        return {v.image for v in found if v.image}

    async def has_templates(self, project_id: str) -> bool:
        return bool(await self.store.find_templates(project_id))

    def log_path(self, version: TemplateVersion) -> Path:
        return self.log_dir / version.project_id / f"{version.name}-{version.version}.log"

    async def logs(self, project_id: str, name: str, version: int, offset: int, follow: bool) -> AsyncIterator[bytes]:
        """The build log from a byte offset; with follow, until the build ends."""
        found = await self.get(project_id, name, version)
        path = self.log_path(found)

        async def chunks() -> AsyncIterator[bytes]:
            position = offset
            while True:
                building = (await self.get(project_id, name, version)).state == BuildState.BUILDING
                try:
                    with open(path, "rb") as f:
                        f.seek(position)
                        while chunk := f.read(65536):
                            position += len(chunk)
                            yield chunk
                except FileNotFoundError:
                    return
                if not (follow and building):
                    return
                await asyncio.sleep(0.1)

        return chunks()

    async def delete(self, project_id: str, name: str, version: int) -> None:
        found = await self.store.get_template(project_id, name, version)  # a project deletes only its own
        if found is None:
            raise TemplateNotFound(f"{name}:{version}")
        if found.state == BuildState.BUILDING:
            raise Conflict(f"template {found.ref} is still building")
        await self._release_pools(found)
        # Images are named by content: another version, or another project's identical build,
        # may be using the same one.
        shared = any(
            v.image == found.image and (v.project_id, v.name, v.version) != (project_id, name, version)
            for v in await self.store.find_all_templates()
        )
        if found.image is not None and not shared:
            try:
                await asyncio.to_thread(layer_builder(self.runtime).delete_image, found.image)
            except SandboxdError as exc:
                if exc.code != "IMAGE_NOT_FOUND":
                    raise
        await self.store.delete_template(project_id, name, version)
        self.log_path(found).unlink(missing_ok=True)

    async def _release_pools(self, found: TemplateVersion) -> None:
        """A version a warm pool of the project starts its sandboxes from is not deleted (409:
        the pool would be left with nothing to start, or silently start another version); the
        pooled sandboxes still made from it (the pool moved on to a newer build) are removed
        first, as no create would get them: none runs on its image once it is deleted."""
        pools = await self.store.find_pools(None if found.project_id == SHARED_PROJECT else found.project_id)
        for pool in pools:
            if (pool.template_ref, pool.template_image) == (found.ref, found.image):
                raise Conflict(
                    f"template {found.ref} is what warm pool {pool.id} starts its sandboxes from: "
                    "delete the pool, or build a newer version of the template, first",
                    "template",
                )
        # Only the pools that could start from this version (the project's own, or any for a
        # shared one): another project's template of the same name and image is not this one.
        owners = {pooled_project(pool.id) for pool in pools}
        for sandbox in await self.store.active():
            made_from = (sandbox.spec.template, sandbox.spec.image) == (found.ref, found.image)
            if made_from and sandbox.project_id in owners:
                await self.sandboxes.remove_pooled(sandbox, "template_deleted")

    # -- sandboxes from templates and runtimes ---------------------------------------------------

    def runtime_template(self, runtime: str) -> str:
        """The template a runtime name stands for, or a 400 that lists the configured ones."""
        return self.definitions.runtime_template(runtime)

    def definition(self, name: str) -> CreateTemplate | None:
        return self.definitions.definition(name)

    async def runtimes(self) -> list[tuple[str, str, TemplateVersion | None]]:
        """The configured runtimes: name, the template it names, and its newest ready build."""
        return [
            (runtime, template, await self.store.get_template(SHARED_PROJECT, template, ready=True))
            for runtime, template in sorted(self.settings.runtimes.items())
        ]

    async def build_runtime(self, runtime: str, no_cache: bool = False) -> TemplateVersion:
        """Builds (again) a runtime's template, shared by every project."""
        return await self.build(SHARED_PROJECT, self.definitions.runtime_definition(runtime), no_cache)

    async def check(self, project_id: str, template: str) -> None:
        """Refuses at once a template that neither exists nor can be built from a definition."""
        name, version = _split_ref(template)
        if await self._find(project_id, name, version, ready=version is None) is not None:
            return
        if version is None and self.definition(name) is not None:
            return  # built on first use
        if version is None and (latest := await self._find(project_id, name)) is not None:
            raise _never_built(latest)
        raise TemplateNotFound(template)

    async def current(self, project_id: str, template: str) -> TemplateVersion | None:
        """The ready version a create naming ``template`` starts from now; None where there is
        none yet (an operator's template never built). Builds nothing (a warm pool's check)."""
        name, version = _split_ref(template)
        found = await self._find(project_id, name, version, ready=version is None)
        return found if found is not None and found.state == BuildState.READY and found.image else None

    async def image_for(self, project_id: str, template: str, progress: Callable[[str, str], None]) -> tuple[str, str]:
        """(image, name:version) for a template reference; an operator's template that was never
        built is built now (shared by every project), its progress shown on the waiting sandbox."""
        name, version = _split_ref(template)
        found = await self._find(project_id, name, version, ready=version is None)
        if found is None and version is None:
            definition = self.definition(name)
            if definition is None:
                raise TemplateNotFound(template)
            async with self._name_locks.setdefault(f"first-build:{name}", asyncio.Lock()):
                found = await self.store.get_template(SHARED_PROJECT, name, ready=True)
                latest = await self.store.get_template(SHARED_PROJECT, name)
                if found is None and latest is not None and _recent_failure(latest):
                    # Creates queued behind a failed build get its failure, not a build each.
                    found = latest
                elif found is None:
                    building = await self.build(SHARED_PROJECT, definition)
                    # Said once the version exists: a client that sees this reason follows the
                    # newest version's log (GET /templates/{name}), which is this one.
                    progress("building_template", f"building template {building.ref} (first use)")
                    found = await self.wait(building)
        if found is None:
            raise TemplateNotFound(template)
        if found.state != BuildState.READY or found.image is None:
            raise Conflict(f"template {found.ref} is {found.state.value}: {found.message}", "template")
        return found.image, found.ref

    async def reconcile(self) -> None:
        """Builds cut short by a server stop failed; their step sandboxes go."""
        for version in await self.store.find_all_templates():
            if version.state == BuildState.BUILDING and _key(version) not in self._builds:
                patch = {"state": BuildState.FAILED, "message": "the server stopped during the build"}
                await self.store.update_template(
                    version.project_id, version.name, version.version, {**patch, "finished_at": utcnow()}
                )
        await self.sandboxes.delete_labelled(BUILD_LABEL, "template_build_ended")

    async def shutdown(self) -> None:
        for task in list(self._builds.values()):
            task.cancel()
        await asyncio.gather(*self._builds.values(), return_exceptions=True)


def _never_built(latest: TemplateVersion) -> Conflict:
    """The answer for a template that exists but has no version to start from: its newest
    version says why (a "not found" would send the user looking for a typo)."""
    if latest.state == BuildState.BUILDING:
        why = f"version {latest.version} is still building"
    else:
        why = f"version {latest.version} {latest.state.value}: {latest.message}"
    return Conflict(f"template {latest.name} has no successful build: {why}", "template")


RETRY_FAILED_BUILD_AFTER = 60.0  # seconds before a create builds a runtime's failed template again


def _recent_failure(version: TemplateVersion) -> bool:
    if version.state != BuildState.FAILED or version.finished_at is None:
        return False
    return (utcnow() - version.finished_at).total_seconds() < RETRY_FAILED_BUILD_AFTER


def _key(version: TemplateVersion) -> str:
    return f"{version.project_id}/{version.ref}"


def _split_ref(ref: str) -> tuple[str, int | None]:
    name, _, version = ref.partition(":")
    if not version:
        return name, None
    if not version.isdigit():
        raise InvalidRequest("template", f"invalid template version in {ref!r}: a number is expected")
    return name, int(version)


def _hash(previous: str, item: object) -> str:
    return hashlib.sha256(f"{previous}\n{json.dumps(item, sort_keys=True)}".encode()).hexdigest()


def _describe(step: RunStep | CopyStep | EnvStep | WorkdirStep | UserStep) -> str:
    if isinstance(step, RunStep):
        return f"run {step.command if isinstance(step.command, str) else ' '.join(step.command)}"
    if isinstance(step, CopyStep):
        return f"copy {step.path}"
    if isinstance(step, EnvStep):
        return "env " + " ".join(f"{k}=…" for k in step.env)  # values may be secrets: not in the log
    if isinstance(step, WorkdirStep):
        return f"workdir {step.path}"
    return f"user {step.user}"
