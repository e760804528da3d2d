"""Property-based fuzzing of the whole HTTP API from its published schema (openapi.json): no
generated request, valid or not, gets a 5xx. Bounded: a few examples per operation, one sandbox.

Left out, and why:
- POST /api/v1/templates, POST /api/v1/runtimes/{runtime}/build: each example would build images
  (a sandbox per step, apt for runtimes); their input checks are in tests/test_templates.py.
- POST /api/v1/sandboxes is fuzzed on its own with fewer examples, each sandbox it makes deleted
  at once, and without the fields that make the server fetch from the network (image, template,
  runtime, source, image_auth, transforms): generated names would send it to random hosts.
- POST .../commands/stream, GET .../files and GET .../archive: streamed responses (a generated
  path may name /dev/zero); and `follow` on log routes is forced off, for the same reason.
Operations on one sandbox get the id of a real, running sandbox (and process routes a real
process), so the fuzzing reaches the agent and the egress code, not only the 404s; except
DELETE of the sandbox and POST .../timeout, which would end it for the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

from sandboxd import Sandbox
from tests.conftest import Server

ROOT = Path(__file__).resolve().parents[2]

schema = (
    schemathesis.openapi.from_path(ROOT / "openapi.json")
    # What starts sandboxes of its own (a pool keeps them started) is fuzzed in tests/fast, on the
    # in-process runtime; here it would leave real sandboxes running for the tests after.
    .exclude(
        method="POST",
        path=[
            "/api/v1/sandboxes",
            "/api/v1/templates",
            "/api/v1/runtimes/{runtime}/build",
            "/api/v1/pools",
            "/api/v1/sandboxes/{sandbox_id}/fork",
        ],
    )
    .exclude(path_regex=r"/commands/stream$")
    .exclude(path="/api/v1/events")  # endless: tests/test_events.py
    .exclude(method="GET", path_regex=r"/(files|archive)$")
)
creates = schemathesis.openapi.from_path(ROOT / "openapi.json").include(method="POST", path="/api/v1/sandboxes")
FETCHING = ("image", "template", "runtime", "source", "image_auth", "transforms")
KEEP_SANDBOX_ID = {("DELETE", "/api/v1/sandboxes/{sandbox_id}"), ("POST", "/api/v1/sandboxes/{sandbox_id}/timeout")}


@pytest.fixture(scope="module")
def target(server: Server) -> Iterator[tuple[Sandbox, str]]:
    with server.create(memory_mb=256, timeout=600, ports=[8000]) as sb:
        process = sb.commands.run("sleep 600", background=True)
        yield sb, process.id


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
    derandomize=True,
)
def test_no_server_errors(case: schemathesis.Case[Any], server: Server, target: tuple[Sandbox, str]) -> None:
    sandbox, process = target
    params = case.path_parameters or {}
    if "sandbox_id" in params and (case.method.upper(), case.path) not in KEEP_SANDBOX_ID:
        params["sandbox_id"] = sandbox.id
    if "process_id" in params:
        params["process_id"] = process
    if case.query and "follow" in case.query:
        case.query["follow"] = "false"
    if case.query and case.path.endswith("/listening/{port}") and "timeout" in case.query:
        case.query["timeout"] = 0  # a long poll by design (up to 30 s): tests/test_cli_network.py waits on it
    case.call_and_validate(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.key}"},
        checks=[not_a_server_error],
        timeout=30,
    )


@creates.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
    derandomize=True,
)
def test_create_has_no_server_errors(case: schemathesis.Case[Any], server: Server) -> None:
    if isinstance(case.body, dict):
        for name in FETCHING:
            case.body.pop(name, None)
        # At the 0.01 minimum a sandbox takes seconds to start (tests/security/test_cpu_minimum.py
        # covers it): a few seconds times every example is more than this test's budget.
        cpu = case.body.get("cpu")
        if isinstance(cpu, int | float) and not isinstance(cpu, bool):
            case.body["cpu"] = max(cpu, 0.5)
    headers = {"Authorization": f"Bearer {server.key}"}
    response = case.call(base_url=server.url, headers=headers, timeout=60)
    try:
        case.validate_response(response, checks=[not_a_server_error])
    finally:
        if response.status_code in (201, 202):
            with server.client() as http:
                http.delete(f"/api/v1/sandboxes/{response.json()['id']}")
