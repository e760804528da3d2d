from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from sandboxd.domain import State
from sandboxd.errors import NotReady

router = APIRouter(tags=["health"])
# Behind the API key: the series name sandboxes.
metrics_router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> dict[str, str]:
    """Ready once the runtime is prepared and the store reconciled."""
    if not getattr(request.app.state, "ready", False):
        raise NotReady("the server is starting")
    return {"status": "ready"}


@metrics_router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> str:
    """Prometheus text format."""
    store = request.app.state.store
    counts = dict.fromkeys(State, 0)
    refusals = []
    for sandbox in store.active():
        counts[sandbox.status.state] += 1
        if sandbox.status.state == State.RUNNING:
            found = await request.app.state.sandboxes.egress_refusals(sandbox.id)
            if found is not None:
                refusals.append((sandbox.id, found))
    lines = [
        "# HELP sandboxd_sandboxes Sandboxes not yet ended, by state.",
        "# TYPE sandboxd_sandboxes gauge",
        *(f'sandboxd_sandboxes{{state="{s.value}"}} {n}' for s, n in counts.items() if not s.ended),
        "# HELP sandboxd_http_requests_total HTTP requests served, by status code.",
        "# TYPE sandboxd_http_requests_total counter",
        *(
            f'sandboxd_http_requests_total{{code="{code}"}} {n}'
            for code, n in sorted(request.app.state.request_counts.items())
        ),
        "# HELP sandboxd_egress_refused_packets_total Packets a running sandbox's egress policy refused.",
        "# TYPE sandboxd_egress_refused_packets_total counter",
        *(f'sandboxd_egress_refused_packets_total{{sandbox="{i}"}} {c["refused_packets"]}' for i, c in refusals),
        "# HELP sandboxd_egress_refused_lookups_total DNS lookups a running sandbox's egress policy refused.",
        "# TYPE sandboxd_egress_refused_lookups_total counter",
        *(f'sandboxd_egress_refused_lookups_total{{sandbox="{i}"}} {c["refused_lookups"]}' for i, c in refusals),
    ]
    return "\n".join(lines) + "\n"
