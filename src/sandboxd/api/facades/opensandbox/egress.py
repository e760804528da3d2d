"""OpenSandbox facade: the egress sidecar's API, per sandbox at `/sandboxes/{id}/proxy/18080/…`,
mapped onto the sandbox's native egress policy (SandboxService.set_egress). The sidecar's policy
is an ordered rule list and a default action; the native policy compiles to exactly that
(EgressPolicy.compiled), so a policy read here and written back is the same policy.

Upstream's credential vault (`/credential-vault…`) is not served: a 404 there."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal
from weakref import WeakValueDictionary

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, ValidationError

from sandboxd.api.facades.opensandbox.access import EgressSandbox, sandboxes
from sandboxd.domain import Sandbox
from sandboxd.errors import InvalidRequest
from sandboxd.services.lifecycle import SandboxService
from sandboxd.services.requests import EgressPolicy, EgressRule, check_egress_target

router = APIRouter(prefix="/sandboxes/{sandbox_id}/proxy/18080")
Sandboxes = Annotated[SandboxService, Depends(sandboxes)]
ENFORCEMENT = "dns+nftables"  # DNS answers filtered, connections filtered by address
LOCKS = "egress_locks"


class NetworkRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["allow", "deny"]
    target: str


def current(sandbox: Sandbox) -> tuple[list[tuple[str, str]], str]:
    """The sandbox's policy as (ordered (action, target) rules, default action)."""
    if not sandbox.spec.internet_access:
        return [], "deny"
    if sandbox.spec.egress is None:
        return [], "allow"
    return EgressPolicy.model_validate(sandbox.spec.egress).compiled()


def status_body(rules: list[tuple[str, str]], default: str) -> dict[str, object]:
    mode = "custom" if rules else ("deny_all" if default == "deny" else "allow_all")
    return {
        "status": "ok",
        "mode": mode,
        "enforcementMode": ENFORCEMENT,
        "policy": {"defaultAction": default, "egress": [{"action": a, "target": t} for a, t in rules]},
    }


def native(rules: list[tuple[str, str]], default: str) -> EgressPolicy:
    if not rules:
        return EgressPolicy(mode="deny_all" if default == "deny" else "allow_all")
    try:
        return EgressPolicy(
            mode="custom",
            rules=[EgressRule(action=a, target=t) for a, t in rules],
            default_action=default,
        )
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise InvalidRequest("egress", message) from None


def _target(value: str, index: int) -> str:
    try:
        return check_egress_target(value)
    except ValueError as exc:
        raise InvalidRequest(f"{index}.target", f"{index}.target: {exc}") from None


def _lock(request: Request, sandbox_id: str) -> asyncio.Lock:
    """One change at a time per sandbox: a read, the merge, then the write, none lost between
    two PATCHes (the server is one process; the locks live in the facade app's state, each only
    as long as a change holds it)."""
    locks: WeakValueDictionary[str, asyncio.Lock] | None = getattr(request.app.state, LOCKS, None)
    if locks is None:
        locks = WeakValueDictionary()
        setattr(request.app.state, LOCKS, locks)
    lock = locks.get(sandbox_id)
    if lock is None:
        lock = locks[sandbox_id] = asyncio.Lock()
    return lock


@router.get("/policy")
async def get_policy(sandbox: EgressSandbox) -> dict[str, object]:
    return status_body(*current(sandbox))


@router.patch("/policy")
async def patch_policy(
    request: Request, body: Annotated[list[NetworkRule], Body()], sandbox: EgressSandbox, service: Sandboxes
) -> dict[str, object]:
    """Merges rules in: an incoming rule replaces the rule for its target, and new rules come
    first (the first matching rule decides); the default action stays."""
    incoming = [(rule.action, _target(rule.target, i)) for i, rule in enumerate(body)]
    async with _lock(request, sandbox.id):
        rules, default = current(await service.get(sandbox.project_id, sandbox.id))
        targets = {t for _, t in incoming}
        merged = incoming + [(a, t) for a, t in rules if t not in targets]
        updated = await service.set_egress(sandbox.project_id, sandbox.id, native(merged, default))
    return status_body(*current(updated))


@router.delete("/policy")
async def delete_policy(
    request: Request, body: Annotated[list[str], Body()], sandbox: EgressSandbox, service: Sandboxes
) -> dict[str, object]:
    """Removes the rules for these targets (targets without a rule are no error)."""
    gone = {_target(t, i) for i, t in enumerate(body)}
    async with _lock(request, sandbox.id):
        rules, default = current(await service.get(sandbox.project_id, sandbox.id))
        kept = [(a, t) for a, t in rules if t not in gone]
        if kept == rules:
            return status_body(rules, default)
        updated = await service.set_egress(sandbox.project_id, sandbox.id, native(kept, default))
    return status_body(*current(updated))
