"""What a sandbox's HTTP response may say to a browser, by the route it came through.

A sandbox's app is hostile (it is whatever runs in the sandbox). A browser gives a response power
over the whole origin it came from, beyond the page itself: a service worker's scope, cookies, stored
data, reporting endpoints, HSTS, alternative services. On the path route
(``/api/v1/sandboxes/{id}/ports/{port}/…``) that origin is the API's own, where ``/docs`` runs and
keys are typed, and every sandbox's path route shares it. So there a response is made inert: its
document runs as an opaque origin (``Content-Security-Policy: sandbox`` without allow-same-origin, so
its scripts run but touch no storage, cookies or service workers of the API's origin), and headers
that act on the origin are dropped. On the host route (``{id}-{port}.{proxy_domain}``) the origin is
the sandbox's own, but sibling hosts are the same site: a cookie's ``Domain`` attribute is removed so
that it stays with the host that set it and never reaches another sandbox or a parent domain.
"""

from __future__ import annotations

# Scripts, forms, popups (sandboxed too), dialogs and downloads work; what is missing is
# allow-same-origin (and allow-popups-to-escape-sandbox, allow-top-navigation*): the page is an
# opaque origin, not the API's.
PATH_ROUTE_CSP = b"sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"

# Response headers whose effect outlives the response and reaches the whole origin (or host).
ORIGIN_WIDE = {
    b"set-cookie",  # cookies for every path of the origin: the API's and all other sandboxes'
    b"set-cookie2",
    b"service-worker-allowed",  # widens a service worker's scope to / (then it serves /docs)
    b"clear-site-data",  # wipes the origin's storage and cookies
    b"strict-transport-security",  # max-age=0 would switch off the operator's HSTS
    b"public-key-pins",
    b"public-key-pins-report-only",
    b"expect-ct",
    b"nel",  # network error logging: reports of later requests to the API (with their URLs)
    b"report-to",
    b"reporting-endpoints",
    b"alt-svc",  # moves the origin's later connections elsewhere
    b"accept-ch",  # client hints the browser sends the origin from then on
    b"critical-ch",
    b"origin-agent-cluster",  # the first answer decides for the origin
    b"set-login",  # the origin's FedCM login status
    b"link",  # rel=serviceworker registers a worker without any script
}
# Refresh and Location stay: they navigate, as a link would, and javascript: targets are not
# followed from a header. The app's own Content-Security-Policy stays too: policies only add up.

# Browsers send these when they fetch the script of a worker that would belong to the origin (a
# service worker's, or a shared worker's, which only a page of the origin itself can start).
SERVICE_WORKER_REQUEST = b"service-worker"
WORKER_DESTINATIONS = {b"serviceworker", b"sharedworker"}  # Sec-Fetch-Dest


def path_route_response(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A path-route response's headers: nothing that acts on the API's origin, and a sandboxing CSP."""
    kept = [(k, v) for k, v in headers if k.lower() not in ORIGIN_WIDE]
    return [*kept, (b"content-security-policy", PATH_ROUTE_CSP), (b"x-content-type-options", b"nosniff")]


def host_route_response(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A host-route response's headers, with every cookie made host-only and Clear-Site-Data
    kept to what is the origin's own."""
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"set-cookie":
            value = host_only_cookie(value)
        elif lower == b"clear-site-data":
            value = _own_site_data(value)
            if not value:
                continue
        out.append((name, value))
    return out


# Clear-Site-Data "cookies" clears the cookies of the whole registrable domain (every sibling
# sandbox's, and the API's under the same one); the other kinds are the origin's own.
_ORIGIN_DATA = (b'"cache"', b'"storage"', b'"executionContexts"')


def _own_site_data(value: bytes) -> bytes:
    kinds = [k.strip() for k in value.split(b",")]
    if b'"*"' in kinds:
        kinds = list(_ORIGIN_DATA)
    return b", ".join(k for k in kinds if k in _ORIGIN_DATA)


def host_only_cookie(value: bytes) -> bytes:
    """A Set-Cookie value without Domain attributes. Browsers split a Set-Cookie value on ";"
    whatever the quoting, so splitting here sees the attributes the browser will see."""
    first, *attributes = value.split(b";")
    kept = [a for a in attributes if a.split(b"=", 1)[0].strip().lower() != b"domain"]
    return b";".join([first, *kept])
