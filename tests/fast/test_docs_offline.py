"""/docs and /redoc work offline: every script, stylesheet and icon they load is this server's own
(an install without internet used to show blank pages, their scripts coming from a CDN), and the
pages keep a policy that lets nothing else in. And every operation of the API is documented: a
summary and a description, in the schema the pages show."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest

from tests.fast.conftest import Api

pytestmark = pytest.mark.anyio

BASE = "http://sandboxd.test"
EXPECTED_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class Resources(HTMLParser):
    """Every URL a page loads or points at (script src, link href, img src, redoc spec-url)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "spec-url", "action") and value is not None:
                self.urls.append(value)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_page_loads_only_from_this_server(api: Api, page: str) -> None:
    async with api.anonymous() as anonymous:
        r = await anonymous.get(page)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/html")
        html = r.text
        # No external host anywhere in the page (fonts, CDNs, analytics).
        assert "http://" not in html and "https://" not in html and "//" not in html.replace("<!--", ""), html
        parser = Resources()
        parser.feed(html)
        assets = [u for u in parser.urls if not u.endswith("openapi.json")]
        assert len(assets) >= 2, parser.urls  # the script, and the icon (and Swagger UI's stylesheet)
        assert any(u.endswith(".js") for u in assets)
        for url in parser.urls:
            absolute = urljoin(BASE + page, url)
            assert urlsplit(absolute).netloc == "sandboxd.test", url
            got = await anonymous.get(absolute)
            assert got.status_code == 200, (url, got.status_code)
            suffix = "." + url.rsplit(".", 1)[-1]
            if suffix in EXPECTED_TYPES:
                assert got.headers["content-type"].startswith(EXPECTED_TYPES[suffix]), (url, got.headers)
                assert len(got.content) > 500
            else:
                assert got.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_docs_pages_keep_a_strict_policy(api: Api, page: str) -> None:
    """Only this origin's scripts (and the page's own inline one, by its hash), no framing: another
    site's page, or a sandbox's page on the path route, cannot load the docs into a frame and drive
    them, nor can a script from elsewhere run in them."""
    async with api.anonymous() as anonymous:
        r = await anonymous.get(page)
    policy = {
        d.split()[0]: d.split()[1:] for d in (p.strip() for p in r.headers["content-security-policy"].split(";")) if d
    }
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
    for directive, sources in policy.items():
        for source in sources:
            assert source.startswith("'") or source in ("data:", "blob:"), (directive, source)
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    if "<script>" in r.text:  # an inline script runs only by its hash, which the policy names
        assert any(s.startswith("'sha256-") for s in policy["script-src"])


async def test_every_operation_has_a_summary_and_a_description(api: Api) -> None:
    r = await api.client.get("/openapi.json")
    schema = r.json()
    missing = []
    count = 0
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "put", "post", "delete", "patch", "head", "options"):
                continue
            count += 1
            for part in ("summary", "description"):
                if not str(operation.get(part, "")).strip():
                    missing.append(f"{method.upper()} {path}: {part}")
    assert count > 30
    assert not missing, "\n".join(missing)
