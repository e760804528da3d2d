"""Pulling images from OCI / Docker v2 registries: references, auth, manifests, verified blobs.

Blobs are kept once per digest under ``blobs/sha256/`` and shared by every image that uses them;
each is verified against its digest while it downloads and renamed into place only when it matches.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from sandboxd.errors import InvalidRequest, RuntimeFailure, UpstreamFailure
from sandboxd.runtimes import outbound
from sandboxd.runtimes.outbound import Fetch, OutboundRules

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
DEFAULT_REGISTRY = "registry-1.docker.io"
# Docker Hub's names for itself in references; its registry API answers on DEFAULT_REGISTRY only.
DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry.hub.docker.com"}
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def ref(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}"
        return f"{self.registry}/{self.repository}{suffix}"


def parse_reference(text: str) -> Reference:
    """name[:tag|@digest], with Docker's defaults for a name without a registry host."""
    if not text or len(text) > 512 or any(c.isspace() for c in text):
        raise InvalidRequest("image", f"invalid image reference {text!r}")
    rest, _, digest = text.partition("@")
    if digest and not DIGEST.match(digest):
        raise InvalidRequest("image", f"invalid digest in {text!r}: expected sha256:<64 hex>")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = (DEFAULT_REGISTRY if first in DOCKER_HUB_ALIASES else first), remainder
    else:
        registry, path = DEFAULT_REGISTRY, rest
    tag = None
    if ":" in path.rsplit("/", 1)[-1]:
        path, tag = path.rsplit(":", 1)
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if not re.fullmatch(r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*", path):
        raise InvalidRequest("image", f"invalid repository name in {text!r}")
    if tag is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
        raise InvalidRequest("image", f"invalid tag in {text!r}")
    return Reference(registry, path, tag, digest or None)


def looks_like_reference(name: str) -> bool:
    """Local image names are plain words; anything with a registry host or path is a reference."""
    return "/" in name or "@" in name


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


class RegistryClient:
    """One pull's conversation with one registry (http for loopback hosts, https otherwise).

    Every connection it opens — the registry, its redirects (blob CDNs), its token realm — is checked
    by outbound.py: none reaches the host's own networks unless the operator allowed it."""

    def __init__(
        self,
        ref: Reference,
        credentials: Credentials | None = None,
        rules: OutboundRules | None = None,
        timeout: float = 60.0,
    ) -> None:
        host = ref.registry.split(":")[0]
        scheme = "http" if host in ("localhost", "127.0.0.1", "::1") else "https"
        self.ref = ref
        self.credentials = credentials
        fetch = Fetch(rules or OutboundRules(), "image", named_hosts=True)
        self.http = outbound.client(
            fetch, base_url=f"{scheme}://{ref.registry}", timeout=timeout, follow_redirects=True
        )
        self._auth: str | None = None

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for _ in range(2):
            headers = dict(kwargs.pop("headers", {}))
            if self._auth:
                headers["Authorization"] = self._auth
            request = self.http.build_request(method, path, headers=headers, **kwargs)
            response = self.http.send(request, stream=True)
            if response.status_code != 401 or self._auth:
                return response
            challenge = response.headers.get("www-authenticate", "")
            response.close()
            self._authenticate(challenge)
            kwargs["headers"] = headers
        return response

    def _authenticate(self, challenge: str) -> None:
        scheme, _, params = challenge.partition(" ")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        creds = self.credentials
        basic = httpx.BasicAuth(creds.username, creds.password) if creds else None
        if scheme.lower() == "basic":
            if creds is None:
                raise InvalidRequest("image", f"{self.ref.registry} needs credentials for {self.ref.repository}")
            pair = f"{creds.username}:{creds.password}".encode()
            self._auth = "Basic " + base64.b64encode(pair).decode()
        elif scheme.lower() == "bearer" and "realm" in fields:
            query = {k: v for k, v in fields.items() if k in ("service", "scope")}
            query.setdefault("scope", f"repository:{self.ref.repository}:pull")
            realm = fields["realm"]
            if not realm.startswith(("https://", "http://")):
                raise InvalidRequest("image", f"{self.ref.registry} names a token realm that is not an http(s) URL")
            # Through the same checks as the registry: a realm on loopback would otherwise have the
            # server fetch a token from there and hand it to the registry.
            token = self.http.get(realm, params=query, auth=basic, timeout=30)
            if token.status_code in (401, 403):
                raise InvalidRequest("image", f"{self.ref.registry} refused the credentials")
            token.raise_for_status()
            body = token.json()
            self._auth = "Bearer " + (body.get("token") or body.get("access_token") or "")
        else:
            raise RuntimeFailure(f"{self.ref.registry} asks for an unsupported authentication: {challenge!r}")

    def manifest(self, reference: str) -> tuple[dict[str, Any], str]:
        response = self._request(
            "GET", f"/v2/{self.ref.repository}/manifests/{reference}", headers={"Accept": MANIFEST_TYPES}
        )
        try:
            if response.status_code == 404:
                raise InvalidRequest("image", f"{self.ref} was not found in its registry")
            if response.status_code in (401, 403):
                raise InvalidRequest("image", f"not allowed to pull {self.ref} (credentials missing or refused)")
            if response.is_error:
                raise RuntimeFailure(f"{self.ref.registry} answered {response.status_code} for the manifest")
            body = response.read()
        finally:
            response.close()
        if len(body) > 4 * 1024 * 1024:
            raise RuntimeFailure("the manifest is implausibly large")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RuntimeFailure(f"manifest digest mismatch: asked {reference}, got {digest}")
        return json.loads(body), digest

    def resolve(self) -> tuple[dict[str, Any], str]:
        """The image manifest for this machine's platform, following an index if there is one."""
        manifest, digest = self.manifest(self.ref.ref)
        if "manifests" in manifest:
            matches = [
                m
                for m in manifest["manifests"]
                if m.get("platform", {}).get("os", "linux") == "linux"
                and m.get("platform", {}).get("architecture") == ARCH
            ]
            if not matches:
                raise InvalidRequest("image", f"{self.ref} has no linux/{ARCH} image")
            manifest, digest = self.manifest(matches[0]["digest"])
        if "layers" not in manifest:
            raise RuntimeFailure(f"{self.ref}: unsupported manifest (schema {manifest.get('schemaVersion')})")
        return manifest, digest

    def blob(self, digest: str, store: Path, progress: Callable[[int], None] | None = None) -> Path:
        """The blob's path in the shared store, downloaded and verified if it is not there yet."""
        if not DIGEST.match(digest):
            raise RuntimeFailure(f"invalid blob digest {digest!r}")
        target = store / "sha256" / digest.split(":", 1)[1]
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        response = self._request("GET", f"/v2/{self.ref.repository}/blobs/{digest}")
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
        try:
            if response.is_error:
                raise RuntimeFailure(f"{self.ref.registry} answered {response.status_code} for blob {digest}")
            hasher = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    hasher.update(chunk)
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
            if "sha256:" + hasher.hexdigest() != digest:
                raise RuntimeFailure(f"blob {digest} did not match its digest")
            os.rename(tmp, target)
        finally:
            response.close()
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target


@dataclass
class Fetched:
    """An image's blobs, in the blob store: its layers (id, blob) bottom first, and what its image.json keeps."""

    layers: list[tuple[str, Path]]
    meta: dict[str, Any]
    done: int
    total: int


def fetch_image(
    ref: Reference,
    credentials: Credentials | None,
    outbound: OutboundRules,
    store: Path,
    progress: Callable[[str, int, int], None] | None = None,
) -> Fetched:
    """Downloads the manifest's layer and config blobs that store does not hold yet."""
    client = RegistryClient(ref, credentials, outbound)
    try:
        manifest, manifest_digest = client.resolve()
        layers = manifest["layers"]
        total = sum(int(layer.get("size", 0)) for layer in layers)
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            if progress:
                progress(str(ref), done[0], total)

        paths = [client.blob(layer["digest"], store, advance) for layer in layers]
        config_digest = manifest.get("config", {}).get("digest")
        config_path = client.blob(config_digest, store) if config_digest else None
    except httpx.HTTPError as exc:
        # Refused, timed out, reset, a bad redirect: the registry's failure, not ours.
        raise UpstreamFailure(f"registry {ref.registry}: {_describe(exc)}", "image") from None
    except RuntimeFailure as exc:  # the client's word for an answer it cannot use
        raise UpstreamFailure(_naming_host(ref, exc.message), "image") from None
    finally:
        client.close()
    meta = {
        "reference": str(ref),
        "digest": manifest_digest,
        "blobs": [layer["digest"] for layer in layers] + ([config_digest] if config_digest else []),
        "config": _oci_config(config_path),
    }
    ids = [str(layer["digest"]).replace(":", "-") for layer in layers]
    return Fetched(list(zip(ids, paths, strict=True)), meta, done[0], total)


def manifest_digest(ref: Reference, credentials: Credentials | None, outbound: OutboundRules) -> str:
    """The digest of the reference's manifest for this platform, asked with these credentials: the
    registry's word that they may read it (a 400 on image, as a pull's, when it says no)."""
    client = RegistryClient(ref, credentials, outbound)
    try:
        return client.resolve()[1]
    except httpx.HTTPError as exc:
        raise UpstreamFailure(f"registry {ref.registry}: {_describe(exc)}", "image") from None
    except RuntimeFailure as exc:
        raise UpstreamFailure(_naming_host(ref, exc.message), "image") from None
    finally:
        client.close()


def _naming_host(ref: Reference, message: str) -> str:
    """A pull's error names the registry it talked to (a user sees which host failed them)."""
    return message if ref.registry in message else f"registry {ref.registry}: {message}"


def _describe(exc: httpx.HTTPError) -> str:
    reason = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def _oci_config(path: Path | None) -> dict[str, Any]:
    """The parts of an OCI image config a sandbox takes: environment, working dir and user. The
    image's Cmd is not run: a sandbox idles until asked, unless its create names an entrypoint."""
    if path is None:
        return {}
    try:
        config = json.loads(path.read_text()).get("config") or {}
    except (ValueError, AttributeError):
        return {}
    env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
    result: dict[str, Any] = {"env": env} if env else {}
    if config.get("WorkingDir"):
        result["cwd"] = config["WorkingDir"]
    if config.get("User"):
        result["user"] = config["User"]
    return result
