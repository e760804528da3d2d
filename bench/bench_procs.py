"""Richer processes (issue 12): how soon a streamed command's pid arrives, a wait's answer once a
process ends, and binary stdin. Figures are wall-clock milliseconds over loopback HTTP."""

from __future__ import annotations

import base64
import time

import httpx

__all__ = ["process_figures"]

MIB = base64.b64encode(bytes(range(256)) * 4096).decode()  # 1 MiB of every byte value


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def process_figures(http: httpx.Client, sid: str, runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    path = f"/api/v1/sandboxes/{sid}"
    for _ in range(max(runs, 30)):
        start = time.perf_counter()
        with http.stream("POST", f"{path}/commands/stream", json={"command": ["true"]}) as r:
            for line in r.iter_lines():
                if line == "event: start":
                    results.setdefault("stream: request → pid (start event)", []).append(_ms(start))
                    break
        start = time.perf_counter()
        pid = http.post(f"{path}/commands", json={"command": ["true"], "background": True}).json()["id"]
        http.post(f"{path}/processes/{pid}/wait", params={"timeout": 10}).raise_for_status()
        results.setdefault("background `true` + wait for its exit", []).append(_ms(start))
        pid = http.post(
            f"{path}/commands", json={"command": ["sh", "-c", "cat >/dev/null"], "background": True}
        ).json()["id"]
        start = time.perf_counter()
        r = http.post(f"{path}/processes/{pid}/stdin", json={"data_base64": MIB, "eof": True})
        results.setdefault("stdin: 1 MiB binary write (cat)", []).append(_ms(start))
        assert r.json()["written"] == 1 << 20, r.text
    return results
