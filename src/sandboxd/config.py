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
    data_dir: Path = Path("/var/lib/sandboxd")
    images_dir: Path | None = None  # default: <data_dir>/images
    api_key: str | None = None
    runtime: Literal["local"] = "local"
    oci_runtime: Literal["auto", "runc", "crun"] = "auto"
    bridge: str = "sbxd0"
    subnet: str = "10.88.0.0/16"
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
    # Ports are reached at http://{sandbox id}-{port}.{proxy_domain}:{port}/ (*.localhost resolves to
    # loopback by itself; a real deployment points a wildcard DNS record at the server).
    proxy_domain: str = "localhost"
    external_url: str | None = None  # how clients reach the API, for the URLs it hands out
    # The sandboxes' resolver asks these (host or host:port); none: the host's own resolvers.
    dns_upstream: list[str] = []
    # More CAs the credential broker trusts for upstream servers (besides the host's).
    broker_upstream_ca: Path | None = None
    retention_seconds: int = 3600
    # Runtime names → template names. A template that was never built is built on first use from
    # <name>.toml in template_dirs or the definitions shipped with sandboxd.
    runtimes: dict[str, str] = {"python3.11": "python3.11", "node18": "node18"}
    template_dirs: list[Path] = []
    build_memory_mb: int = 2048  # limits of the sandboxes that run template build steps
    build_pids: int = 4096
    reaper_interval: float = 1.0

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
