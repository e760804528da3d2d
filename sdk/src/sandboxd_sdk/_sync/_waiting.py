"""A create that may wait for a template build: the server answers at once (202, pending), and the
client follows the sandbox until it has started, passing the log of a build it waits for (a
runtime's or an operator's template built on first use) to the caller.
GENERATED from ../_async by scripts/unasync.py: do not edit."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from sandboxd_sdk._sync._http import _check, segment
from sandboxd_sdk._sync.templates import Templates

# Seconds between looks at a pending sandbox: a create from a built template takes ~50 ms, so the
# looks come every 10 ms for the first second (one small GET each), then less often: a build takes
# seconds to minutes.
POLL, SLOW_POLL, SLOW_AFTER = 0.01, 0.25, 1.0


def until_started(
    http: httpx.Client, info: dict[str, Any], on_build_log: Callable[[str], object]
) -> dict[str, Any]:
    """The sandbox's record once it is no longer pending. While it waits for a template build
    (status reason "building_template"), that build's log goes to on_build_log line by line."""
    path = f"/api/v1/sandboxes/{segment(info['id'])}"
    followed: set[tuple[str, int]] = set()
    polls = 0
    while info["status"]["state"] == "pending":
        build = _build_under_way(http, info)
        if build is not None and build not in followed:
            followed.add(build)
            Templates(http=http).follow(*build, on_build_log, check=False)
            polls = 0  # the sandbox starts next: soon
        else:
            time.sleep(POLL if polls * POLL < SLOW_AFTER else SLOW_POLL)
            polls += 1
        info = (_check(http.get(path))).json()
    return info


def _build_under_way(http: httpx.Client, info: dict[str, Any]) -> tuple[str, int] | None:
    """(name, version) of the template build a pending sandbox waits for, if it waits for one.
    The server reports the build once its version exists: the newest version is that one."""
    if info["status"]["reason"] != "building_template" or not info.get("template"):
        return None
    name = str(info["template"]).partition(":")[0]
    return name, int((_check(http.get(f"/api/v1/templates/{segment(name)}"))).json()["version"])
