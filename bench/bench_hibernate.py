"""Hibernate → resume of a running sandbox over HTTP, and its first exec after the resume.

On hosts where CRIU does not work (these machines) a hibernate keeps only the disk: it costs a stop,
and a resume a start (a boot on the kept writable layer), so the figures sit beside stop and start's."""

from __future__ import annotations

import time

import httpx


def _ms(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def hibernate_figures(http: httpx.Client, sid: str, runs: int) -> dict[str, list[float]]:
    """Hibernate, resume, hibernate → resume, and hibernate → resume → exec `true` done."""
    results: dict[str, list[float]] = {}
    path = f"/api/v1/sandboxes/{sid}"
    body = {"command": ["true"]}
    kept = http.get("/api/v1/capabilities").json()["hibernate"]["memory_kept"]
    kind = "memory kept" if kept else "disk only"
    for _ in range(runs):
        hibernate = _ms(lambda: http.post(f"{path}/hibernate").raise_for_status())
        resume = _ms(lambda: http.post(f"{path}/resume").raise_for_status())
        first = _ms(lambda: http.post(f"{path}/commands", json=body).raise_for_status())
        results.setdefault(f"hibernate ({kind})", []).append(hibernate)
        results.setdefault(f"resume from hibernated ({kind})", []).append(resume)
        results.setdefault("hibernate → resume", []).append(hibernate + resume)
        results.setdefault("hibernate → resume → exec `true` done", []).append(hibernate + resume + first)
    return results
