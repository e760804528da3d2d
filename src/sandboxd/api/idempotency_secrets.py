"""Secrets are not kept with an Idempotency-Key's answer: a sandbox's env values and traffic token
would otherwise sit in the database for the whole retention (24 h), copies of what the sandbox's
own record holds. The stored answer has them blanked and marked; a replay fills them in again from
the sandbox's record (as a GET by the same API key shows them). A sandbox gone by then replays
with env values "***" and traffic_token null, and an Idempotent-Redacted header naming them."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Scope

from sandboxd.api.models import SandboxOut
from sandboxd.api.state import api_state
from sandboxd.errors import SandboxdError
from sandboxd.services.auth import Principal
from sandboxd.services.idempotency import Answer

SECRET_FIELDS = ("env", "traffic_token")
_MARK = "sandboxd-redacted"  # kept with the stored answer only, never sent
REDACTED = "Idempotent-Redacted"


def _blank(field: str, value: Any) -> Any:
    return dict.fromkeys(value, "***") if field == "env" and isinstance(value, dict) else None


def redact(answer: Answer) -> Answer:
    """What is kept: the answer without its secrets (a JSON object holding any), marked."""
    if not answer.body:
        return answer
    try:
        doc = json.loads(answer.body)
    except (ValueError, RecursionError):
        return answer
    if not isinstance(doc, dict):
        return answer
    found = [field for field in SECRET_FIELDS if doc.get(field)]
    if not found:
        return answer
    for field in found:
        doc[field] = _blank(field, doc[field])
    return Answer(answer.status, (*answer.headers, (_MARK, ",".join(found))), json.dumps(doc).encode())


async def restore(scope: Scope, principal: Principal, answer: Answer) -> Answer:
    """What a replay sends: a redacted answer with its secrets from the sandbox's record again."""
    marks = [value for name, value in answer.headers if name.lower() == _MARK]
    if not marks or not answer.body:
        return answer
    headers = tuple((name, value) for name, value in answer.headers if name.lower() != _MARK)
    fields = [field for field in marks[0].split(",") if field in SECRET_FIELDS]
    doc = json.loads(answer.body)
    try:
        if principal.project_id is None or not isinstance(doc.get("id"), str):
            raise LookupError
        sandbox = await api_state(scope).services.sandboxes.get(principal.project_id, doc["id"])
        current = SandboxOut.of(sandbox).model_dump(mode="json")
        for field in fields:
            doc[field] = current[field]
    except (SandboxdError, LookupError):
        headers = (*headers, (REDACTED, ",".join(fields)))
    return Answer(answer.status, headers, json.dumps(doc).encode())
