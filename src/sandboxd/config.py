"""Server settings: defaults, then a TOML config file (SANDBOXD_CONFIG), then SANDBOXD_* variables."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def half_of_host_pids() -> int:
    """Every process and thread of a sandbox also takes a pid of the host's (kernel.pid_max counts
    them across all pid namespaces): one sandbox at its maximum must leave the host half of them."""
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        pid_max = 32768  # the kernel's default
    return min(32768, pid_max // 2)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOXD_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    # A facade also served at its original paths on a port of its own (same host), e.g.
    # {"opensandbox": 8090}: for clients that cannot take a path prefix. Always on the main port too.
    facade_ports: dict[Literal["opensandbox", "vercel"], int] = {}
    data_dir: Path = Path("/var/lib/sandboxd")
    images_dir: Path | None = None  # default: <data_dir>/images
    # The sandboxes' PID 1: a static binary that scripts/bootstrap builds from agent/ into build/.
    agent_binary: Path = Path(__file__).resolve().parents[2] / "build" / "sandboxd-agent"
    api_key: str | None = None
    # Where records live: sqlite:///path (default: <data_dir>/sandboxd.db) or postgresql://user:pw@host/db.
    database_url: str | None = None
    runtime: Literal["local"] = "local"
    # The OCI runtime class new sandboxes get: "auto" (crun on cgroup v2 only hosts, else runc), or a
    # class name. runc, crun and runsc are found on PATH by name; oci_runtime_classes adds others
    # (name → binary). A sandbox keeps the class it was created with, whatever is configured later.
    oci_runtime: str = "auto"
    oci_runtime_classes: dict[str, str] = {}
    bridge: str = "sbxd0"
    # Not 10.88/16 (podman), 172.17-31 and 192.168.x (docker, LANs), the low 10.x (LANs, VPNs, Azure,
    # k3s, microk8s), 10.96/12 (Kubernetes services) or 10.244/16 (flannel); an odd second octet is
    # outside GCP's auto-mode subnets. A collision is refused at start all the same (preflight.py).
    subnet: str = "10.193.0.0/16"
    # Sandbox uid/gid 0..size-1 are host ids base..base+size-1: root inside is nobody outside.
    userns_base: int = 1_000_000
    userns_size: int = 65536
    default_image: str = "debian"
    # Credentials per registry host, e.g. {"registry.example.com": {"username": "u", "password": "p"}}.
    registry_auth: dict[str, dict[str, str]] = {}
    default_timeout: int = 300
    max_timeout: int = 7 * 24 * 3600
    default_cpu: float = 1.0
    default_memory_mb: int = 512
    default_pids: int = 512
    max_cpu: float = float(os.cpu_count() or 1)
    max_memory_mb: int = 16384
    max_pids: int = Field(default_factory=half_of_host_pids)
    # What a sandbox may write (its files, inodes included: they take metadata space), in MB.
    default_disk_mb: int = 2048
    max_disk_mb: int = 32768
    # Sandboxes' writable layers live on btrfs (for its quotas): the data directory's filesystem if
    # it is btrfs, else a sparse image file of this size in the data directory, loop-mounted.
    scratch_size_gb: int = 64
    # Ports are reached at http://{sandbox id}-{port}.{proxy_domain}:{port}/ (*.localhost resolves to
    # loopback by itself; a real deployment points a wildcard DNS record at the server).
    proxy_domain: str = "localhost"
    external_url: str | None = None  # how clients reach the API, for the URLs it hands out
    # The sandboxes' resolver asks these (host or host:port); none: the host's own resolvers.
    dns_upstream: list[str] = []
    # More CAs the credential broker trusts for upstream servers (besides the host's).
    broker_upstream_ca: Path | None = None
    # -- Network boundaries: what sandboxes, and the server on their or a caller's behalf, may reach.
    # Refused to sandboxes (unless a CIDR rule of theirs lies within one) and to server-side fetches,
    # as are the host's own addresses and attached networks. 0/8, loopback, link-local and multicast
    # are refused even if left out; the default adds cloud metadata endpoints.
    blocked_cidrs: list[str] = [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",  # AWS, GCP, Azure, OpenStack... 169.254.169.254; AWS ECS 169.254.170.2
        "100.100.100.200/32",  # Alibaba Cloud
        "192.0.0.192/32",  # Oracle Cloud (legacy)
    ]
    # Server-side fetches (sources, registries and their token realms) refuse loopback, link-local,
    # blocked_cidrs and the host's own networks; these networks are let through all the same.
    fetch_allow_cidrs: list[str] = []
    # Registries (host or host:port) that may be on the host or an attached network, e.g. a private
    # registry on the LAN; a token realm is let through only on one of these hosts too.
    registry_allow_hosts: list[str] = []
    dns_queries_per_second: int = 200  # per sandbox, twice that in a burst; more are dropped
    retention_seconds: int = 3600
    # A stopped sandbox's timeout does not run (it starts again in full at start); it is deleted,
    # its writable layer with it, once stopped this long.
    stopped_retention_seconds: int = 7 * 24 * 3600
    # How long a paused sandbox (its memory held on this host) is kept before it is destroyed
    # (reason pause_expired); a resume restarts its timeout.
    paused_retention_seconds: int = 86400
    # Lets a hibernate with memory "require" try `runc checkpoint` even where `criu check` failed
    # (the capabilities still say memory is not kept): for an operator checking what CRIU makes of
    # this host's sandboxes, and for the tests that prove a failed checkpoint leaves the sandbox
    # running. A failure is a 409 and the sandbox runs on; memory "auto" is not affected.
    checkpoint_despite_criu_check: bool = False
    # Sandbox events (the history and the event stream's resume), kept at least as long as the
    # sandboxes' own records: a record never goes without its history.
    event_retention_seconds: int = 7 * 86400
    event_heartbeat_seconds: float = 15.0  # an SSE comment on an idle event stream, for proxies
    # Idempotency-Key: how long a POST's answer is kept for retries, how long a retry waits for
    # the first request still running (then 409), and the largest answer kept with its body.
    idempotency_retention_seconds: int = 24 * 3600
    idempotency_wait_seconds: float = 60.0
    idempotency_max_response_kb: int = 1024
    # What one project may hold: keys (a claim past it is a 429 IDEMPOTENCY_KEYS_EXHAUSTED), and
    # bytes of kept answers (past it, an answer is kept without its body, like one past the cap).
    idempotency_max_keys: int = 10000
    idempotency_max_stored_mb: int = 64
    # Runtime names → template names. A template that was never built is built on first use from
    # <name>.toml in template_dirs or the definitions shipped with sandboxd.
    runtimes: dict[str, str] = {"python3.11": "python3.11", "node18": "node18"}
    template_dirs: list[Path] = []
    build_memory_mb: int = 2048  # limits of the sandboxes that run template build steps
    build_pids: int = 4096
    build_disk_mb: int = 8192
    reaper_interval: float = 1.0
    # Terminal sessions: a shell whose WebSocket dropped keeps running this long for a client to
    # reattach (?session=ID) and get the last terminal_scrollback_kb of its output again; at most
    # terminal_max_sessions live per sandbox.
    terminal_grace_seconds: float = 300.0
    terminal_scrollback_kb: int = Field(64, ge=1, le=16384)
    terminal_max_sessions: int = Field(16, ge=1, le=1024)
    # Host directories under which sandboxes may bind-mount (volumes of type "bind"); none by
    # default: every bind is refused. SANDBOXD_BIND_ALLOW='["/srv/shared"]'.
    bind_allow: list[Path] = []
    max_volume_mb: int = 65536  # the largest size_mb a named volume may ask for
    # Warm pools (services/pools.py): how many pools one project may have, the ready sandboxes they
    # keep together (the sum of their targets), and the pooled sandboxes the whole server keeps (the
    # refill starts no more past it); a create or resize past a project's limit is a 429 naming it.
    # A pooled sandbox is recycled (removed and started again) at this age, bounded by max_timeout:
    # whatever its image's start command runs cannot run unbounded before a checkout.
    max_pools_per_project: int = Field(4, ge=0)
    max_pooled_sandboxes_per_project: int = Field(16, ge=0)
    max_pooled_sandboxes: int = Field(64, ge=0)
    pool_max_age_seconds: float = Field(3600.0, gt=0)
    max_snapshots_per_project: int = 100  # a snapshot past it is a 409 (delete some, or use keep_last)
    # What one project's snapshots may hold of the scratch filesystem together, each counted as its
    # disk_mb (what it holds at most); a snapshot past it is a 429 QUOTA_EXCEEDED.
    max_project_snapshot_mb: int = 131072
    # What one project's named volumes may take of the scratch filesystem: how many, and their
    # size_mb together (a create past either is a 429 QUOTA_EXCEEDED naming it).
    max_project_volumes: int = 32
    max_project_volume_mb: int = 131072
    # -- limits on what one HTTP request may cost the server (before and after the API key) --
    # JSON request bodies; file and archive uploads are streamed and not capped here.
    max_json_body_mb: float = 10.0
    # From a connection's first byte (or a request's first byte) to the end of its headers.
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    body_idle_timeout: float = 60.0  # longest silence while a request body is still coming
    keep_alive_timeout: int = 5  # an idle connection between two requests

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("SANDBOXD_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    def public_url(self) -> str:
        return (self.external_url or f"http://{self.host}:{self.port}").rstrip("/")

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir}/sandboxd.db"

    @property
    def image_root(self) -> Path:
        return self.images_dir or self.data_dir / "images"

    def resolved_api_key(self) -> str:
        """The configured key, else the one kept in the data directory (made on first start)."""
        if self.api_key:
            return self.api_key
        path = self.data_dir / "api_key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = "sbd_" + secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key
