"""Templates and runtimes on a sandboxd server. GENERATED from ../_async by scripts/unasync.py: do not edit."""

from __future__ import annotations

import builtins
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

from sandboxd_sdk._sync._http import _check, _client, segment
from sandboxd_sdk._errors import LOG_TAIL_LINES, TemplateBuildError


class Templates:
    """Templates on a sandboxd server: build (with the build log as it comes), list, remove.

    A step is a dict: {"type": "run", "command": ...}, {"type": "copy", "path", "content"},
    {"type": "env", "env": {...}}, {"type": "workdir", "path"} or {"type": "user", "user"}."""

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str | None = None,
        request_timeout: float = 120.0,
        http: httpx.Client | None = None,
    ) -> None:
        # Given an http client (an Client's), it is shared and closed by its owner; else the
        # one shared by its configuration (_pool.py): neither is closed here.
        self._http = http or _client(url, api_key, request_timeout)[0]

    def build(
        self,
        name: str,
        steps: list[dict[str, Any]] | None = None,
        *,
        base: str | None = None,
        start_command: str | list[str] | None = None,
        ready_check: dict[str, Any] | None = None,
        on_log: Callable[[str], object] | None = None,
        no_cache: bool = False,
        check: bool = True,
    ) -> dict[str, Any]:
        """Builds the next version of name and returns it once it is built (its "state" is
        "ready"). A build that fails raises TemplateBuildError with the reason and the end of the
        build log; with check=False it is returned instead (state "failed", the reason in
        "message"). on_log gets each build log line as it comes. A ready_check is tried once, in
        a sandbox of the new image, before the build counts as done."""
        body: dict[str, Any] = {"name": name, "steps": steps or []}
        for key, value in (("base", base), ("start_command", start_command), ("ready_check", ready_check)):
            if value is not None:
                body[key] = value
        return self.build_definition(body, on_log=on_log, no_cache=no_cache, check=check)

    def build_definition(
        self,
        definition: dict[str, Any],
        *,
        on_log: Callable[[str], object] | None = None,
        no_cache: bool = False,
        check: bool = True,
    ) -> dict[str, Any]:
        """As build(), from a whole definition (name, base, steps, start_command, ready_check), as
        a TOML template file holds it."""
        params = {"no_cache": True} if no_cache else {}
        started = (_check(self._http.post("/api/v1/templates", json=definition, params=params))).json()
        return self._follow(started, on_log, check)

    def build_runtime(
        self,
        runtime: str,
        *,
        on_log: Callable[[str], object] | None = None,
        no_cache: bool = False,
        check: bool = True,
    ) -> dict[str, Any]:
        """(Re)builds the template a runtime names, from its definition on the server; a failed
        build raises TemplateBuildError unless check=False, as build()."""
        params = {"no_cache": True} if no_cache else {}
        path = f"/api/v1/runtimes/{segment(runtime)}/build"
        started = (_check(self._http.post(path, params=params))).json()
        return self._follow(started, on_log, check)

    def follow(
        self, name: str, version: int, on_log: Callable[[str], object] | None = None, check: bool = True
    ) -> dict[str, Any]:
        """Waits for a build that is under way (started by this client or another, or by a
        create that builds a runtime on first use), passing its log lines to on_log, and returns
        the version; a failed one raises TemplateBuildError unless check=False."""
        return self._follow({"name": name, "version": version}, on_log, check)

    def _follow(
        self, started: dict[str, Any], on_log: Callable[[str], object] | None, check: bool = False
    ) -> dict[str, Any]:
        path = f"/api/v1/templates/{segment(started['name'])}/versions/{int(started['version'])}"
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        with self._http.stream("GET", f"{path}/logs", params={"follow": True}, timeout=None) as r:
            _check(r)
            for line in r.iter_lines():
                tail.append(line)
                if on_log is not None:
                    on_log(line)
        built = dict((_check(self._http.get(path))).json())
        if check and built.get("state") == "failed":
            raise TemplateBuildError(built, "\n".join(tail))
        return built

    def get(self, name: str, version: int | None = None) -> dict[str, Any]:
        """One version of a template, or its newest (whatever its state) when version is None."""
        path = f"/api/v1/templates/{segment(name)}" + (f"/versions/{int(version)}" if version is not None else "")
        return dict((_check(self._http.get(path))).json())

    def list(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every version of the project's templates (of one name, if given), oldest first."""
        params = {"name": name} if name else {}
        r = _check(self._http.get("/api/v1/templates", params=params))
        return list(r.json()["items"])

    def delete(self, name: str, version: int) -> None:
        """Removes one version and its image (refused while a sandbox uses it)."""
        _check(self._http.delete(f"/api/v1/templates/{segment(name)}/versions/{int(version)}"))

    def runtimes(self) -> builtins.list[dict[str, Any]]:
        """The runtimes the server is configured with, and the template build each one uses."""
        return list((_check(self._http.get("/api/v1/runtimes"))).json()["items"])

    def close(self) -> None:
        """Nothing to close: the HTTP client is shared (see __init__)."""

    def __enter__(self) -> Templates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
