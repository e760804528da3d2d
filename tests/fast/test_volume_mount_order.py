"""Volumes are mounted before the sandbox's own mounts: the runtime follows symlinks inside the root
when it mounts, so a volume whose path leads to /.sandboxd or /proc is covered again by them."""

from __future__ import annotations

from sandboxd.domain import Limits
from sandboxd.runtimes.local.oci import config as oci
from sandboxd.runtimes.local.oci.config import AGENT_DIR, IdMap


def test_the_agent_and_kernel_mounts_come_after_every_volume() -> None:
    volume = oci.volume_mount("/srv/vol", "/data", False)
    config = oci.build_config(
        rootfs="/r",
        hostname="h",
        env={},
        cwd="/",
        limits=Limits(cpu=1, memory_mb=64, pids=64),
        cgroup_path="/x",
        idmap=IdMap(1000000, 65536),
        agent_host_dir="/agent",
        agent_config="{}",
        volumes=[volume],
    )
    destinations = [m["destination"] for m in config["mounts"]]
    assert destinations.index("/data") < min(destinations.index(d) for d in (AGENT_DIR, "/proc", "/dev", "/sys"))
