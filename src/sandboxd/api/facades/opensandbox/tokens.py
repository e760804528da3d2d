"""The per-sandbox access tokens of the execd and egress APIs (what upstream calls
X-EXECD-ACCESS-TOKEN and OPENSANDBOX-EGRESS-AUTH).

The endpoints call hands a token out to a caller holding the sandbox's project key; the SDK then
sends it, and only it, on every execd/egress call. A token is an HMAC under the server's key of the
API's name, the sandbox's id and its traffic token: nothing to store, different for each sandbox and
API (an execd token does not open the egress API, nor a port's traffic, nor the other way round), and
void once the sandbox's traffic token changes (a new one at each warm-pool checkout)."""

from __future__ import annotations

import hashlib
import hmac

EXECD = "execd"
EGRESS = "egress"
EXECD_HEADER = "X-EXECD-ACCESS-TOKEN"
EGRESS_HEADER = "OPENSANDBOX-EGRESS-AUTH"


def access_token(server_key: str, api: str, sandbox_id: str, traffic_token: str) -> str:
    message = f"opensandbox:{api}:{sandbox_id}:{traffic_token}".encode()
    return hmac.new(server_key.encode(), message, hashlib.sha256).hexdigest()


def valid(presented: str | None, server_key: str, api: str, sandbox_id: str, traffic_token: str) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(presented.encode(), access_token(server_key, api, sandbox_id, traffic_token).encode())
