"""The request the credential broker sends upstream, rebuilt from a sandbox's request.

A request from a sandbox is hostile: whatever in it can pick where it goes upstream would carry the
injected secret there. A server behind a shared address (a CDN) picks the site by the request
target when it is absolute (``GET https://other.example/x``, RFC 9112 3.2.2: the Host header is then
ignored), by Host, or by headers some servers honour (X-Forwarded-Host, X-Original-URL...). So the
target must be origin-form (a path), Host must name the site TLS was set up for, and the upstream
request is made from parsed parts only: the method, that path, the canonical Host and the end-to-end
headers, with the transform applied.
"""

from __future__ import annotations

import h11

# Hop-by-hop headers (RFC 9110 7.6.1) end at the broker; Host is set again from the TLS name.
HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"upgrade",
    b"host",
}
# Headers that some servers and CDNs route by instead of Host: never passed on.
ROUTING = {
    b"forwarded",
    b"x-forwarded-host",
    b"x-forwarded-server",
    b"x-host",
    b"x-http-host-override",
    b"x-original-url",
    b"x-rewrite-url",
    b"x-original-host",
}

FIXED = HOP | ROUTING | {b"content-length", b"transfer-encoding"}


class Refused(Exception):
    """A request the broker answers itself, without sending anything upstream."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def upstream_request(
    request: h11.Request, sni: str, port: int, inject: tuple[tuple[str, str], ...], strip: tuple[str, ...]
) -> h11.Request:
    """The request to send to sni's server (on port) for request, with the headers of inject put in
    and those named in strip taken out; or Refused."""
    target = bytes(request.target)
    if request.method == b"CONNECT" or not target.startswith(b"/") or target.startswith(b"//"):
        # CONNECT (authority-form), OPTIONS * (asterisk-form), absolute-form, and a path that a
        # server may read as a network-path reference.
        raise Refused(400, "the broker takes origin-form request targets only (a path such as /v1/x)")
    hosts = [value for name, value in request.headers if name == b"host"]  # h11 lowercases names
    if len(hosts) != 1 or _canonical_host(bytes(hosts[0]), port) != sni:
        raise Refused(421, f"this connection is for {sni}: its Host must name that site")
    listed = {
        token.strip().lower() for name, value in request.headers if name == b"connection" for token in value.split(b",")
    }
    listed -= {b"content-length", b"transfer-encoding"}  # the body's framing stays what h11 read...
    if any(name == b"transfer-encoding" for name, _ in request.headers):
        # The body is chunked (h11 read it so); a Content-Length beside it goes (RFC 9112 6.3), or a
        # server reading by length would take the rest of the body for a request of the sandbox's.
        listed.add(b"content-length")
    # A transform neither frames the message nor routes it: its names among those are passed over.
    injected = [(k.encode(), v.encode()) for k, v in inject if k.lower().encode() not in FIXED]
    stripped = {n.lower().encode() for n in strip} - FIXED
    dropped = HOP | ROUTING | listed | stripped | {k.lower() for k, _ in injected}
    headers = [(b"host", sni.encode())]
    headers += [(bytes(k), bytes(v)) for k, v in request.headers if k not in dropped]
    headers += injected
    return h11.Request(method=bytes(request.method), target=target, headers=headers, http_version="1.1")


def _canonical_host(value: bytes, port: int) -> str:
    """A Host value as a lowercase name without a trailing dot; a port other than the connection's
    makes it name no site this connection is for."""
    text = value.decode("latin-1").strip().lower()
    name, colon, given = text.rpartition(":") if not text.endswith("]") else ("", "", "")
    if colon and given.isdigit():
        if int(given) != port:
            return ""
        text = name
    return text.rstrip(".")
