"""Layers on disk: shared between images, unpacked into overlayfs's format, device nodes refused,
and garbage collection that waits for a pull in progress."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.errors import InvalidRequest
from sandboxd.runtimes.local.images.catalog import ImageStore
from sandboxd.runtimes.local.images.layers import OPAQUE_XATTR
from tests.conftest import USERNS_BASE
from tests.test_registry import LOOPBACK_REGISTRY, TAR, Registry, tar_bytes


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("layers-registry"))
    yield reg
    reg.close()


def device_tar(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3  # /dev/null's numbers
        tar.addfile(info)
    return buf.getvalue()


def test_images_share_layers_and_keep_overlay_whiteouts(registry: Registry, tmp_path: Path) -> None:
    base = tar_bytes(("usr/bin/python3", b""), ("etc/motd", b"base"), ("opt/old/a", b"a"), ("opt/keep", b"k"))
    one = tar_bytes(("etc/.wh.motd", b""), ("one.txt", b"1"))
    two = tar_bytes(("opt/old/.wh..wh..opq", b""), ("opt/old/b", b"b"))
    registry.push_image("share/one", "v1", [(base, TAR), (one, TAR)])
    registry.push_image("share/two", "v1", [(base, TAR), (two, TAR)])
    store = ImageStore(tmp_path / "images", USERNS_BASE, outbound=LOOPBACK_REGISTRY)
    first = store.pull(f"{registry.host}/share/one:v1")
    second = store.pull(f"{registry.host}/share/two:v1")
    assert first.layer_ids[0] == second.layer_ids[0]  # the base blob is unpacked once
    assert len(list((tmp_path / "images" / ".layers").iterdir())) == 3
    whiteout = os.lstat(first.layers[1] / "etc" / "motd")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(second.layers[1] / "opt" / "old", OPAQUE_XATTR) == b"y"
    assert os.lstat(first.layers[0] / "opt" / "keep").st_uid == USERNS_BASE  # owners shifted


def test_device_nodes_are_refused_except_under_dev(registry: Registry, tmp_path: Path) -> None:
    registry.push_image("dev/evil", "v1", [(device_tar("etc/evil"), TAR)])
    registry.push_image("dev/fine", "v1", [(tar_bytes(("usr/bin/python3", b"")), TAR), (device_tar("dev/null"), TAR)])
    store = ImageStore(tmp_path / "images", USERNS_BASE, outbound=LOOPBACK_REGISTRY)
    with pytest.raises(InvalidRequest, match="refused layer entry 'etc/evil': device nodes are not allowed"):
        store.pull(f"{registry.host}/dev/evil:v1")
    assert not store.exists(f"{registry.host}/dev/evil:v1")
    assert not list((tmp_path / "images").glob(".partial-*"))
    fine = store.pull(f"{registry.host}/dev/fine:v1")
    assert not (fine.layers[1] / "dev" / "null").exists()  # the sandbox gets its own /dev


def test_gc_waits_for_a_pull_in_progress(registry: Registry, tmp_path: Path) -> None:
    registry.push_image("slow/app", "v1", [(tar_bytes(("usr/bin/python3", b""), ("app.txt", b"app")), TAR)])
    store = ImageStore(tmp_path / "images", USERNS_BASE, outbound=LOOPBACK_REGISTRY)
    downloading, release = threading.Event(), threading.Event()
    pulled: list[object] = []

    calls: list[int] = []

    def progress(_ref: str, done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:  # the second call comes before unpacking: the blob is stored, no image has it yet
            downloading.set()
            release.wait(10)

    pull = threading.Thread(target=lambda: pulled.append(store.pull(f"{registry.host}/slow/app:v1", progress)))
    pull.start()
    assert downloading.wait(10)
    collected: list[list[str]] = []
    gc = threading.Thread(target=lambda: collected.append(ImageStore(tmp_path / "images", USERNS_BASE).gc()))
    gc.start()
    gc.join(0.5)
    assert gc.is_alive()  # waiting for the pull, not deleting its fresh blob
    release.set()
    pull.join(10)
    gc.join(10)
    assert collected == [[]] and pulled
    assert list((tmp_path / "images" / ".blobs" / "sha256").iterdir())
    image = store.get(f"{registry.host}/slow/app:v1")
    assert (image.layers[0] / "app.txt").read_bytes() == b"app"


def hardlink_tar(link: str, target: str, then: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(link)
        info.type, info.linkname, info.mode = tarfile.LNKTYPE, target, 0o4777
        tar.addfile(info)
        if then is not None:  # the same name again as a file: written through the link, if it were one
            data = tarfile.TarInfo(link)
            data.size = len(then)
            tar.addfile(data, io.BytesIO(then))
    return buf.getvalue()


@pytest.mark.parametrize("target", ["../../../../../../../var/tmp/sandboxd-hl-victim", "/var/tmp/sandboxd-hl-victim"])
def test_hard_links_out_of_the_layer_are_refused(registry: Registry, tmp_path: Path, target: str) -> None:
    victim = Path("/var/tmp/sandboxd-hl-victim")
    victim.write_text("precious")
    victim.chmod(0o644)
    try:
        registry.push_image("hl/evil", "v1", [(hardlink_tar("x", target, b"attacker"), TAR)])
        store = ImageStore(tmp_path / "images", USERNS_BASE, outbound=LOOPBACK_REGISTRY)
        with pytest.raises(InvalidRequest, match="a hard link to"):
            store.pull(f"{registry.host}/hl/evil:v1")
        tarball = tmp_path / "evil.tar"
        tarball.write_bytes(hardlink_tar("x", target, b"attacker"))
        with pytest.raises(InvalidRequest, match="a hard link to"):
            store.import_tarball("evil", tarball)
        assert victim.read_text() == "precious" and victim.stat().st_mode & 0o7777 == 0o644
        assert victim.stat().st_nlink == 1 and victim.stat().st_uid == 0
    finally:
        victim.unlink()


def test_hard_links_inside_a_layer_work_and_a_rewrite_does_not_write_through(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("usr/bin/python3", b""), ("a", b"original")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("b")
        link.type, link.linkname = tarfile.LNKTYPE, "a"
        tar.addfile(link)
        again = tarfile.TarInfo("b")
        again.size = 3
        tar.addfile(again, io.BytesIO(b"new"))
    (tmp_path / "ok.tar").write_bytes(buf.getvalue())
    image = ImageStore(tmp_path / "images", USERNS_BASE).import_tarball("ok", tmp_path / "ok.tar")
    assert (image.layers[0] / "a").read_bytes() == b"original"  # b was replaced, not written through
    assert (image.layers[0] / "b").read_bytes() == b"new"
