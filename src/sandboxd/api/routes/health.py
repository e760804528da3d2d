from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from sandboxd.api.deps import State as ApiStateDep
from sandboxd.services import hibernation

router = APIRouter(tags=["health"])
# Behind the API key: the series name sandboxes.
metrics_router = APIRouter(tags=["health"])
# Behind the API key, any scope: what a client may expect of this server.
capabilities_router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: 200 while the server process answers at all (no key needed)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(api: ApiStateDep) -> dict[str, str]:
    """Ready once the runtime is prepared and the store reconciled (503 before: the state
    this depends on exists only then)."""
    return {"status": "ready"}


@capabilities_router.get("/api/v1/capabilities")
async def capabilities(api: ApiStateDep) -> dict[str, Any]:
    """What this server's host can do where that varies by host: whether hibernate keeps memory
    (a CRIU checkpoint, probed once with `criu check`) and, if not, why."""
    return await hibernation.capabilities(api.services.sandboxes.runtime)


@metrics_router.get("/metrics", response_class=PlainTextResponse)
async def metrics(api: ApiStateDep) -> str:
    """Prometheus text format."""
    counts, refusals = await api.services.sandboxes.census()
    lines = [
        "# HELP sandboxd_sandboxes Sandboxes not yet ended, by state.",
        "# TYPE sandboxd_sandboxes gauge",
        *(f'sandboxd_sandboxes{{state="{s.value}"}} {n}' for s, n in counts.items() if not s.ended),
        "# HELP sandboxd_http_requests_total HTTP requests served, by status code.",
        "# TYPE sandboxd_http_requests_total counter",
        *(f'sandboxd_http_requests_total{{code="{code}"}} {n}' for code, n in sorted(api.request_counts.items())),
        "# HELP sandboxd_egress_refused_packets_total Packets a running sandbox's egress policy refused.",
        "# TYPE sandboxd_egress_refused_packets_total counter",
        *(f'sandboxd_egress_refused_packets_total{{sandbox="{i}"}} {c["refused_packets"]}' for i, c in refusals),
        "# HELP sandboxd_egress_refused_lookups_total DNS lookups a running sandbox's egress policy refused.",
        "# TYPE sandboxd_egress_refused_lookups_total counter",
        *(f'sandboxd_egress_refused_lookups_total{{sandbox="{i}"}} {c["refused_lookups"]}' for i, c in refusals),
    ]
    return "\n".join(lines) + "\n"
