"""Snapshot figures for bench/bench.py: a snapshot of a running sandbox with 100 MB freshly
written (not yet flushed: the snapshot writes it out), a create from that snapshot until its
first exec, and a fork of such a sandbox until the fork's first exec. Goal: fork ≤ 300 ms."""

from __future__ import annotations

import time

import httpx

WRITE = {"command": ["sh", "-c", "dd if=/dev/urandom of=/root/data.$$ bs=1M count=100 2>/dev/null"]}
TRUE = {"command": ["true"]}


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def snapshot_figures(http: httpx.Client, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    sid = http.post("/api/v1/sandboxes", json={"disk_mb": 4096, "timeout": 3600}).json()["id"]
    made: list[str] = []
    try:
        for _ in range(min(runs, 10)):
            http.post(f"/api/v1/sandboxes/{sid}/commands", json=WRITE).raise_for_status()
            t0 = time.perf_counter()
            r = http.post(f"/api/v1/sandboxes/{sid}/snapshots", json={})
            r.raise_for_status()
            out.setdefault("snapshot, 100 MB just written", []).append(_ms(t0))
            snap = r.json()["id"]
            t0 = time.perf_counter()
            new = http.post("/api/v1/sandboxes", json={"source": {"type": "snapshot", "id": snap}}).json()["id"]
            http.post(f"/api/v1/sandboxes/{new}/commands", json=TRUE).raise_for_status()
            out.setdefault("create from that snapshot → first exec done", []).append(_ms(t0))
            made.append(new)
            http.delete(f"/api/v1/snapshots/{snap}").raise_for_status()
            http.post(f"/api/v1/sandboxes/{sid}/commands", json=WRITE).raise_for_status()
            t0 = time.perf_counter()
            fork = http.post(f"/api/v1/sandboxes/{sid}/fork", json={}).json()["id"]
            http.post(f"/api/v1/sandboxes/{fork}/commands", json=TRUE).raise_for_status()
            out.setdefault("fork, 100 MB just written → first exec (goal ≤ 300)", []).append(_ms(t0))
            made.append(fork)
            for other in made:
                http.delete(f"/api/v1/sandboxes/{other}")
            made.clear()
            http.post(f"/api/v1/sandboxes/{sid}/commands", json={"command": ["sh", "-c", "rm -f /root/data.*"]})
    finally:
        for other in [*made, sid]:
            http.delete(f"/api/v1/sandboxes/{other}")
    return out
