"""Every tar the host unpacks (`sandboxd cp ID:/dir DEST`, image imports, registry layers) comes from
somewhere hostile. Nothing in it may land outside its destination, whatever Python's patch level:
the CVE-2025-4517 archive (realpath gives up past PATH_MAX, the kernel does not) and the simpler
tricks are refused by sandboxd's own extractor, by the CLI end to end, and by the image store."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd import tarsafe
from sandboxd.errors import InvalidRequest
from sandboxd.runtimes.local.images.catalog import ImageStore
from tests.conftest import USERNS_BASE, Server

PATH_MAX = 4096
STEPS = "abcdefghijklmnop"

Entry = tuple[str, str, str | bytes]  # name, "file" | "dir" | "symlink" | "hardlink" | "chr" | "fifo", data or target


def make_tar(*entries: Entry, mode: int = 0o644) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, value in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            data = None
            if kind == "file":
                assert isinstance(value, bytes)
                info.size, data = len(value), io.BytesIO(value)
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o777
            elif kind in ("symlink", "hardlink"):
                assert isinstance(value, str)
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = value
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, data)
    return buf.getvalue()


def cve_2025_4517_tar(dest: Path, climb: int = 1, payload: tuple[Entry, ...] | None = None) -> bytes:
    """The archive of CPython's own regression test for CVE-2025-4517, sized for dest: 16 nested
    directories named so that expanding the one-letter symlinks to them takes realpath past PATH_MAX.
    realpath then stops expanding and takes "escape" (a symlink through that chain, then ".." climb
    times) to be inside dest; the kernel resolves it to dest's ancestor `climb` levels up. Through
    it a new file is written there, and a hard link reaches the file "flag" there to overwrite it."""
    length = (PATH_MAX - len(str(dest)) - 1) // (len(STEPS) + 1)
    component = "d" * length
    entries: list[Entry] = []
    path = ""
    for step in STEPS:
        entries.append((os.path.join(path, component), "dir", b""))
        entries.append((os.path.join(path, step), "symlink", component))
        path = os.path.join(path, component)
    linkpath = os.path.join(*STEPS, "l" * 254)
    entries.append((linkpath, "symlink", os.path.join(*[".."] * len(STEPS))))
    entries.append(("escape", "symlink", linkpath + "/.." * climb))
    if payload is None:
        payload = (
            ("escape/newfile", "file", b"written from the archive"),
            ("flaglink", "hardlink", "escape/flag"),
            ("flaglink", "file", b"overwritten from the archive"),
        )
    return make_tar(*entries, *payload)


def snapshot(top: Path, skip: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every entry under top but skip (the destination): its type bits and content or target."""
    found: dict[str, tuple[int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == skip:
            dirnames.clear()
            continue
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path == skip:
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                found[str(path)] = (stat.S_IFMT(st.st_mode), os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                found[str(path)] = (stat.S_IFMT(st.st_mode), path.read_bytes())
            else:
                found[str(path)] = (stat.S_IFMT(st.st_mode), b"")
    return found


def links_out_of(dest: Path) -> list[str]:
    """Symlinks under dest that the kernel resolves to somewhere outside it (dangling ones aside)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink() and os.path.exists(path):
                fd = os.open(path, os.O_PATH)
                try:
                    real = os.readlink(f"/proc/self/fd/{fd}")  # the kernel's answer, not realpath's
                finally:
                    os.close(fd)
                if not (real == str(dest) or real.startswith(str(dest) + "/")):
                    out.append(f"{path} -> {real}")
    return out


@pytest.fixture
def area(tmp_path: Path) -> Iterator[Path]:
    """A short-named directory (the CVE archive is sized to its destination) holding a host file
    'flag' beside the destination 'dest'."""
    top = Path(tempfile.mkdtemp(prefix="sbxd-tar-", dir="/var/tmp"))
    (top / "dest").mkdir()
    (top / "flag").write_text("precious host file")
    yield top
    shutil.rmtree(top, ignore_errors=True)


def assert_untouched(top: Path, before: dict[str, tuple[int, bytes | str]]) -> None:
    assert snapshot(top, top / "dest") == before
    assert (top / "flag").read_text() == "precious host file"
    assert not (top / "newfile").exists()
    assert links_out_of(top / "dest") == []


# -- the extractor on its own ----------------------------------------------------------------------

HOSTILE: dict[str, tuple[bytes, str]] = {
    "cve-2025-4517": (b"", "goes through a symlink"),  # built per destination below
    "symlink then a file through it": (
        make_tar(("inside", "dir", b""), ("s", "symlink", "inside"), ("s/f", "file", b"x")),
        "goes through a symlink ('s')",
    ),
    "symlink out, then a file through it": (
        make_tar(("s", "symlink", ".."), ("s/newfile", "file", b"x")),
        "outside the destination",
    ),
    "absolute symlink": (make_tar(("s", "symlink", "/var/tmp")), "absolute path"),
    "a later symlink turns an earlier one outward": (
        make_tar(("q", "dir", b""), ("q/s", "symlink", "x/../.."), ("q/x", "symlink", "..")),
        "'..' after a name",
    ),
    "hard link out by ..": (make_tar(("h", "hardlink", "../flag"), ("h", "file", b"x")), "a hard link to '../flag'"),
    "hard link to an absolute path": (make_tar(("h", "hardlink", "/etc/passwd")), "a hard link to '/etc/passwd'"),
    "hard link to a file the archive did not make": (
        make_tar(("h", "hardlink", "pre-existing")),
        "not a file this archive made earlier",
    ),
    "dot-dot name": (make_tar(("../newfile", "file", b"x")), "outside the destination"),
    "absolute name": (make_tar(("/var/tmp/sbxd-abs-name", "file", b"x")), "outside the destination"),
    "device node": (make_tar(("dev/null", "chr", b"")), "device nodes are not allowed"),
    "fifo": (make_tar(("pipe", "fifo", b"")), "fifos are not allowed"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_extractor_refuses_and_writes_nothing_outside(area: Path, case: str) -> None:
    dest = area / "dest"
    (dest / "pre-existing").write_text("already here")
    data, words = HOSTILE[case]
    if case == "cve-2025-4517":
        data = cve_2025_4517_tar(dest)
    before = snapshot(area, dest)
    with pytest.raises(tarsafe.UnsafeArchive) as err:
        tarsafe.extract(io.BytesIO(data), dest)
    assert words in str(err.value)
    assert_untouched(area, before)
    assert not Path("/var/tmp/sbxd-abs-name").exists()


def test_a_symlink_already_in_the_destination_is_not_followed(area: Path) -> None:
    dest = area / "dest"
    (dest / "planted").symlink_to(area)
    before = snapshot(area, dest)
    with pytest.raises(tarsafe.UnsafeArchive, match="goes through a symlink"):
        tarsafe.extract(io.BytesIO(make_tar(("planted/newfile", "file", b"x"))), dest)
    assert snapshot(area, dest) == before and not (area / "newfile").exists()
    # At a member's own name it is replaced, not written through.
    tarsafe.extract(io.BytesIO(make_tar(("planted", "file", b"replaced"))), dest)
    assert (dest / "planted").read_bytes() == b"replaced" and not (dest / "planted").is_symlink()
    assert_untouched(area, before)


def test_an_ordinary_tree_round_trips(tmp_path: Path) -> None:
    data = make_tar(
        ("top", "dir", b""),
        ("top/sub/deep.txt", "file", b"deep"),
        ("top/a.txt", "file", b"a"),
        ("top/sub/up", "symlink", "../a.txt"),
        ("top/same", "symlink", "sub/deep.txt"),
        ("top/hard", "hardlink", "top/a.txt"),
        ("top/hard", "file", b"rewritten"),
        mode=0o6755,
    )
    tarsafe.extract(io.BytesIO(data), tmp_path)
    top = tmp_path / "top"
    assert (top / "sub" / "up").read_bytes() == b"a" and (top / "same").read_bytes() == b"deep"
    assert (top / "a.txt").read_bytes() == b"a"  # the rewrite replaced the link, not its target
    assert (top / "hard").read_bytes() == b"rewritten"
    assert stat.S_IMODE((top / "a.txt").stat().st_mode) == 0o755  # setuid and setgid stripped
    assert stat.S_IMODE(top.stat().st_mode) == 0o755


def test_a_huge_extended_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x")
        info.pax_headers = {"comment": "c" * (tarsafe.MAX_HEADER_BYTES + 10)}
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(tarsafe.UnsafeArchive, match="extended header"):
        tarsafe.extract(io.BytesIO(buf.getvalue()), tmp_path)


def test_global_headers_are_bounded_in_total(tmp_path: Path) -> None:
    """Each global pax header is under the per-header cap, but tarfile keeps them all for the whole
    archive: thousands of them would hold gigabytes of the server's memory."""
    buf = io.BytesIO()
    for i in range(8):
        buf.write(tarfile.TarInfo.create_pax_global_header({f"k{i}": "v" * 16 * 1024}))
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo("x"), io.BytesIO(b""))
    buf.seek(0)
    with pytest.raises(tarsafe.UnsafeArchive, match="global extended headers"):
        tarsafe.extract(io.BytesIO(buf.getvalue()), tmp_path)


# -- the image store: rootfs tarballs and registry/OCI layers --------------------------------------


def oci_layout(top: Path, layer: bytes) -> Path:
    layout = top / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)

    def blob(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (layout / "blobs" / "sha256" / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer)}]
    manifest = blob(json.dumps({"schemaVersion": 2, "config": blob(b"{}"), "layers": layers}).encode())
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
    return layout


@pytest.mark.parametrize("how", ["rootfs tarball", "oci layer"])
def test_image_store_refuses_the_cve_archive(area: Path, how: str) -> None:
    store = ImageStore(area / "dest" / "images", USERNS_BASE)
    # A layer is unpacked into dest/images/.partial-XXXXXXXX/fs: "escape" climbs four levels, to area.
    staging = store.root / ".partial-XXXXXXXX" / "fs"
    data = cve_2025_4517_tar(staging, climb=4)
    (area / "evil.tar").write_bytes(data)
    layout = oci_layout(area / "dest", data)
    before = snapshot(area, area / "dest")
    with pytest.raises(InvalidRequest) as err:
        if how == "rootfs tarball":
            store.import_tarball("evil", area / "evil.tar")
        else:
            store.import_oci_layout("evil", layout)
    assert_untouched(area, before)
    assert not store.exists("evil")
    assert err.value.field == "image" and "goes through a symlink ('a')" in err.value.message, err.value.message


@pytest.mark.parametrize("whiteout", ["escape/.wh.flag", "escape/.wh..wh..opq"])
def test_whiteouts_do_not_go_through_a_layer_symlink(area: Path, whiteout: str) -> None:
    """A whiteout deletes the file it names and puts a device node there: through the CVE's chain,
    it would delete a host file; an opaque marker would set an xattr on a host directory."""
    store = ImageStore(area / "dest" / "images", USERNS_BASE)
    staging = store.root / ".partial-XXXXXXXX" / "fs"
    layout = oci_layout(area / "dest", cve_2025_4517_tar(staging, climb=4, payload=((whiteout, "file", b""),)))
    before = snapshot(area, area / "dest")
    with pytest.raises(InvalidRequest) as err:
        store.import_oci_layout("evil", layout)
    assert_untouched(area, before)
    assert os.listxattr(area) == []
    assert "goes through a symlink ('a')" in err.value.message, err.value.message


# -- the CLI, end to end ---------------------------------------------------------------------------


def run_cli(url: str, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDBOXD_URL": url, "SANDBOXD_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "sandboxd.cli.main", *args], env=env, capture_output=True, text=True, timeout=120
    )


class _HostileApi(http.server.BaseHTTPRequestHandler):
    """A server (or an agent behind it) that answers a directory download with a crafted archive."""

    def __init__(self, archive: bytes, *args: object) -> None:
        self.archive = archive
        super().__init__(*args)  # type: ignore[arg-type]

    def do_GET(self) -> None:
        if "/files/stat" in self.path:
            entry = {"name": "x", "path": "/x", "type": "dir", "size": 0, "mode": 0o755, "uid": 0, "gid": 0}
            body, kind = json.dumps({**entry, "modified_at": "2026-01-01T00:00:00+00:00"}).encode(), "application/json"
        else:
            body, kind = self.archive, "application/x-tar"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_cli_cp_refuses_a_crafted_archive(area: Path) -> None:
    dest = area / "dest"
    handler = functools.partial(_HostileApi, cve_2025_4517_tar(dest))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    before = snapshot(area, dest)
    try:
        done = run_cli(f"http://127.0.0.1:{httpd.server_address[1]}", "k", "cp", "sbx_x:/x", str(dest))
    finally:
        httpd.shutdown()
        httpd.server_close()
    message = " ".join(done.stderr.split())
    assert done.returncode == 1 and "archive from the sandbox was refused" in message, message
    assert "goes through a symlink ('a')" in message, message
    assert_untouched(area, before)


def test_cli_cp_of_a_hostile_tree_built_in_a_real_sandbox(server: Server) -> None:
    """The sandbox builds the CVE's tree for real (its agent archives it faithfully): "0escape" comes
    first, when its target is still text inside the destination, and the nested directories and
    symlinks that follow make it resolve outside. A second directory does the same in three entries.
    `cp` leaves those links out of the copy."""
    component = "d" * 237  # the sandbox's own paths stay under PATH_MAX, so its agent can archive it
    letters = "/".join(STEPS)
    script = f"""set -e
mkdir -p /w/evil /w/order/q && cd /w/evil
ln -s {letters}/{"l" * 254}/.. 0escape
p=.
for s in {" ".join(STEPS)}; do mkdir $p/{component}; ln -s {component} $p/$s; p=$p/{component}; done
ln -s {"/".join([".."] * 16)} $p/{"l" * 254}
ln -s x/../.. /w/order/q/s
ln -s .. /w/order/q/x
"""
    top = Path(tempfile.mkdtemp(prefix="sbxd-cp-", dir="/tmp"))  # short: the tree fits on the host too
    try:
        with server.create(memory_mb=128, timeout=300) as sb:
            made = sb.commands.run(script)
            assert made.exit_code == 0, made.stderr
            assert sb.commands.run("test -e /w/evil/0escape/order").exit_code == 0  # it escapes in there
            for tree in ("evil", "order"):
                dest = top / tree
                before = snapshot(top, dest)
                done = run_cli(server.url, server.key, "cp", f"{sb.id}:/w/{tree}", str(dest))
                # A download leaves the links out of the copy out (tarsafe.DOWNLOAD) rather than
                # refusing the tree: nothing outside it is touched and no link leads out of it.
                assert done.returncode == 0, (done.stdout, done.stderr)
                assert snapshot(top, dest) == before
                assert links_out_of(dest) == []
            assert not os.path.lexists(top / "evil" / "0escape") and not os.path.lexists(top / "order/q/s")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_name_too_long_for_the_filesystem_is_refused(tmp_path: Path) -> None:
    with pytest.raises(tarsafe.UnsafeArchive, match="longer than the filesystem takes"):
        tarsafe.extract(io.BytesIO(make_tar(("x" * 300, "file", b"x"))), tmp_path)


def test_a_size_bound_is_kept(tmp_path: Path) -> None:
    data = make_tar(("a", "file", b"1234"), ("b", "file", b"5678"))
    with pytest.raises(tarsafe.UnsafeArchive, match="more than 6 bytes"):
        tarsafe.extract(io.BytesIO(data), tmp_path, tarsafe.Rules(max_bytes=6))
    assert not (tmp_path / "b").exists()
