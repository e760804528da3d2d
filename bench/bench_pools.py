"""Warm pool figures: create taken from a warm pool (a hit) to its answer and to its first exec,
next to a normal create of the same request in the same run. Goal: create from a pool ≤ 10 ms p50.
Each hit is taken once the pool is full again and at rest, so every timed create is a hit."""

from __future__ import annotations

import time

import httpx

MEMORY = 256  # the pool's limit, and the request's: a create fits the pool
SETTLE = 0.3  # seconds after the pool is full: a hit on a pool at rest, not one still finishing its refill


def _wait_full(http: httpx.Client, pool_id: str, target: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        found = http.get(f"/api/v1/pools/{pool_id}").raise_for_status().json()
        if found["ready"] >= target and not found["starting"]:
            time.sleep(SETTLE)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm pool did not fill: {found}")
        time.sleep(0.02)


def pool_figures(http: httpx.Client, runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    target = 2
    pool = http.post("/api/v1/pools", json={"target": target, "memory_mb": MEMORY}).raise_for_status().json()
    body = {"command": ["true"]}
    try:
        for _ in range(min(runs, 30)):
            for mode, name in (("prefer", "create from a warm pool (hit) (goal ≤ 10)"), ("bypass", "normal create")):
                if mode == "prefer":
                    _wait_full(http, pool["id"], target)
                request = {"memory_mb": MEMORY, "warm_pool": {"mode": mode}}
                began = time.perf_counter()
                sandbox = http.post("/api/v1/sandboxes", json=request).raise_for_status().json()
                created = (time.perf_counter() - began) * 1000
                if (mode == "prefer") != sandbox["warm_pool_checkout"]["hit"]:
                    raise RuntimeError(f"{mode}: unexpected checkout {sandbox['warm_pool_checkout']}")
                path = f"/api/v1/sandboxes/{sandbox['id']}"
                began = time.perf_counter()
                http.post(f"{path}/commands", json=body).raise_for_status()
                first = (time.perf_counter() - began) * 1000
                results.setdefault(name, []).append(created)
                results.setdefault(f"{name} → first exec `true` done", []).append(created + first)
                http.delete(path).raise_for_status()
    finally:
        http.delete(f"/api/v1/pools/{pool['id']}")
    return results
