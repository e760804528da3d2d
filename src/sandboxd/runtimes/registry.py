"""Backends by name: config picks one, nothing else knows which."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING

from sandboxd.config import Settings
from sandboxd.runtimes.base import Runtime
from sandboxd.runtimes.outbound import OutboundRules

if TYPE_CHECKING:
    from sandboxd.runtimes.local.images.catalog import ImageStore


def _local(settings: Settings) -> Runtime:
    from sandboxd.runtimes.local.network.bridge import Network
    from sandboxd.runtimes.local.oci.cli import OciClasses
    from sandboxd.runtimes.local.runtime import LocalRuntime

    return LocalRuntime(
        data_dir=settings.data_dir,
        images=image_store(settings),
        network=Network(settings.bridge, settings.subnet, settings.dns_queries_per_second),
        blocked_cidrs=outbound_rules(settings).blocked,
        oci_classes=OciClasses(settings.data_dir, settings.oci_runtime, settings.oci_runtime_classes),
        agent_binary=settings.agent_binary,
        id_base=settings.userns_base,
        id_size=settings.userns_size,
        dns_upstream=settings.dns_upstream,
        broker_upstream_ca=settings.broker_upstream_ca,
        scratch_size_gb=settings.scratch_size_gb,
        bind_allow=settings.bind_allow,
    )


def image_store(settings: Settings) -> ImageStore:
    from sandboxd.runtimes.local.images.catalog import ImageStore
    from sandboxd.runtimes.local.images.registry import DEFAULT_REGISTRY, DOCKER_HUB_ALIASES, Credentials

    # Docker Hub's credentials may be keyed by any of its names (docker.io, as docker writes
    # them): references to it are all read as DEFAULT_REGISTRY, so its key is too.
    auth = {
        DEFAULT_REGISTRY if host in DOCKER_HUB_ALIASES else host: Credentials(c["username"], c["password"])
        for host, c in settings.registry_auth.items()
    }
    return ImageStore(settings.image_root, settings.userns_base, registry_auth=auth, outbound=outbound_rules(settings))


def image_catalog(settings: Settings) -> tuple[ImageStore, Callable[[], tuple[set[str], set[str]]]]:
    """The image catalog the images API serves, and what tells which images sandboxes use."""
    from sandboxd.runtimes.local.oci.rootfs import images_in_use

    return image_store(settings), lambda: images_in_use(settings.data_dir)


def outbound_rules(settings: Settings) -> OutboundRules:
    """The operator's network boundaries for server-side fetches, from the settings."""

    def networks(values: list[str]) -> tuple[ipaddress.IPv4Network, ...]:
        return tuple(ipaddress.IPv4Network(v.strip(), strict=False) for v in values)

    return OutboundRules(
        blocked=networks(settings.blocked_cidrs),
        allow=networks(settings.fetch_allow_cidrs),
        allow_hosts=tuple(settings.registry_allow_hosts),
    )


# A Kubernetes backend registers here, behind the same protocol.
RUNTIMES: dict[str, Callable[[Settings], Runtime]] = {"local": _local}


def build_runtime(settings: Settings) -> Runtime:
    return RUNTIMES[settings.runtime](settings)
