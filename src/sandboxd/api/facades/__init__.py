"""Facades: other systems' sandbox APIs, served over sandboxd's one core so that their clients keep
working with only the base URL and key changed.

Each facade is a FastAPI sub-app of its own (its error renderer, its auth header), mounted under a
prefix on the main listener and, where an operator asks, at its original paths on a listener of its
own. A facade translates to the services (api_state(scope).services), never to a runtime, and never
holds logic of its own that the services already have: it only renames, converts and re-shapes.

What each facade supports, maps or refuses is tabled in the README (one row per field/endpoint).
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.types import Scope

# The prefixes on the main listener; each facade's sub-app serves its system's original paths.
FACADES = ("/opensandbox", "/vercel")


def mount(app: FastAPI) -> None:
    # Imported here: the facades' modules import this package's helpers (public_base).
    from sandboxd.api.facades import opensandbox, vercel

    app.mount("/opensandbox", opensandbox.build("/opensandbox"))
    app.mount("/vercel", vercel.build("/vercel"))


def is_facade_path(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in FACADES)


# Set by a listener that serves one facade at its original paths (it forwards to the main app
# under the facade's prefix): the prefix its clients see, "" there.
PUBLIC_PREFIX = "sandboxd.facade_public_prefix"


def public_base(scope: Scope) -> str:
    """host[:port] and path prefix under which this request's facade is reached, without a scheme
    (OpenSandbox's endpoints have none), e.g. "127.0.0.1:8080/opensandbox"."""
    host = Headers(scope=scope).get("host") or "{}:{}".format(*(scope.get("server") or ("127.0.0.1", 80)))
    prefix = scope.get(PUBLIC_PREFIX, scope.get("root_path", ""))
    return f"{host}{prefix}"
