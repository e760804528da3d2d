"""Per-sandbox disk limits: every sandbox's writable layer is a btrfs subvolume with a quota.

The kernels sandboxd runs on may have no CONFIG_QUOTA (no ext4/XFS project quotas), while btrfs
and its qgroups are built in. So the overlay upper and work dirs of each sandbox live in a
subvolume ``<volume>/<id>`` whose qgroup caps what it holds, data and metadata alike: files,
directories and inodes all take metadata space, so the same cap bounds how many inodes a sandbox
makes. A write past it fails with EDQUOT inside the sandbox.

The volume is the data directory's own filesystem when that is btrfs (``<data_dir>/scratch`` is a
plain directory on it), else a sparse image file ``<data_dir>/scratch.img`` made on first start and
loop-mounted on ``<data_dir>/scratch``. Its size bounds what all sandboxes together can take from
the host; discard hands freed space back to the host's filesystem.

Subvolumes are made and removed with ioctls (a subvolume and its limit are one call, ~0.05 ms), not
the ``btrfs`` command: create is on every sandbox's critical path.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes.local.oci import mounts

log = logging.getLogger("sandboxd.scratch")
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
BTRFS_SUPER_MAGIC = 0x9123683E
SANDBOX_NAME = re.compile(r"^sbx_[0-9a-z]{26}$")
VOLUME_NAME = re.compile(r"^vol_[0-9a-z]{26}$")  # named volumes: a subvolume each, beside sandboxes'
SNAPSHOT_NAME = re.compile(r"^snp_[0-9a-z]{26}$")  # read-only snapshots of sandboxes' subvolumes


def _ioc(direction: int, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (0x94 << 8) | number  # 0x94: BTRFS_IOCTL_MAGIC


class _QgroupLimit(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("max_rfer", ctypes.c_uint64),
        ("max_excl", ctypes.c_uint64),
        ("rsv_rfer", ctypes.c_uint64),
        ("rsv_excl", ctypes.c_uint64),
    ]


class _QgroupInherit(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("num_qgroups", ctypes.c_uint64),
        ("num_ref_copies", ctypes.c_uint64),
        ("num_excl_copies", ctypes.c_uint64),
        ("lim", _QgroupLimit),
    ]


class _VolArgsV2(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_int64),
        ("transid", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("qgroup_inherit", ctypes.c_void_p),
        ("unused", ctypes.c_uint64 * 2),
        ("name", ctypes.c_char * 4040),
    ]


class _VolArgs(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int64), ("name", ctypes.c_char * 4088)]


class _QuotaCtl(ctypes.Structure):
    _fields_ = [("cmd", ctypes.c_uint64), ("status", ctypes.c_uint64)]


class _FsInfo(ctypes.Structure):
    _fields_ = [("max_id", ctypes.c_uint64), ("num_devices", ctypes.c_uint64), ("fsid", ctypes.c_uint8 * 16)]
    _fields_ += [("rest", ctypes.c_uint8 * (1024 - 32))]


class _InoLookup(ctypes.Structure):
    _fields_ = [("treeid", ctypes.c_uint64), ("objectid", ctypes.c_uint64), ("name", ctypes.c_char * 4080)]


SUBVOL_CREATE_V2 = _ioc(1, 24, ctypes.sizeof(_VolArgsV2))
SNAP_CREATE_V2 = _ioc(1, 23, ctypes.sizeof(_VolArgsV2))
SNAP_DESTROY = _ioc(1, 15, ctypes.sizeof(_VolArgs))
QUOTA_CTL = _ioc(3, 40, ctypes.sizeof(_QuotaCtl))
FS_INFO = _ioc(2, 31, ctypes.sizeof(_FsInfo))
INO_LOOKUP = _ioc(3, 18, ctypes.sizeof(_InoLookup))
FIRST_FREE_OBJECTID = 256  # a subvolume's root directory inode
SUBVOL_RDONLY, SUBVOL_QGROUP_INHERIT = 1 << 1, 1 << 2
QGROUP_INHERIT_SET_LIMITS = 1
LIMIT_MAX_RFER, LIMIT_MAX_EXCL = 1, 2
QUOTA_ENABLE, QUOTA_ENABLE_SIMPLE = 1, 4


def _ioctl(fd: int, request: int, arg: ctypes.Structure, what: str) -> None:
    if _libc.ioctl(fd, request, ctypes.byref(arg)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def is_btrfs(path: Path) -> bool:
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field
    if _libc.statfs(str(path).encode(), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"statfs {path}: {os.strerror(err)}")
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF == BTRFS_SUPER_MAGIC


def is_mount_point(path: Path) -> bool:
    return mounts.is_mount_point(path)  # every octal escape of the mount table decoded


class ScratchVolume:
    """The btrfs volume holding sandboxes' writable layers, one quota-limited subvolume each."""

    def __init__(self, data_dir: Path, size_gb: int) -> None:
        self.path = data_dir / "scratch"
        self.image = data_dir / "scratch.img"
        self.size = size_gb << 30

    # -- the volume ------------------------------------------------------------------------------

    def setup(self) -> None:
        """Makes the volume ready: already mounted (a killed server left it), the data directory's
        own btrfs, or the image file (made now if it is not there), loop-mounted."""
        self.path.mkdir(mode=0o711, exist_ok=True)
        if not is_btrfs(self.path):
            if is_mount_point(self.path):
                raise RuntimeFailure(f"{self.path} is a mount point but not btrfs")
            if not self.image.exists():
                self._make_image()
            self._mount_image()
            self._check_host_space()
        # Traverse only: a host user who cannot list sandbox ids cannot reach a setuid file a
        # sandbox left in its upper dir (the volume's root comes with mkfs's 0755).
        os.chmod(self.path, 0o711)
        self._enable_quota()

    def teardown(self) -> None:
        """Unmounts the image once no sandbox uses it. Running sandboxes keep it mounted: they
        outlive the server, and the next one adopts the mount as it is."""
        if not self.image.exists() or not is_mount_point(self.path) or self.ids():
            return
        try:
            mounts.unmount(self.path, lazy=False)  # the loop device goes with it (autoclear)
        except OSError as exc:
            log.warning("left %s mounted: %s", self.path, exc)

    def _make_image(self) -> None:
        if not shutil.which("mkfs.btrfs"):
            raise RuntimeFailure("disk limits need btrfs: install btrfs-progs (scripts/bootstrap does)")
        partial = self.image.with_name(self.image.name + ".partial")
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, self.size)  # sparse: the host gives space as sandboxes write
        finally:
            os.close(fd)
        # Single copies of metadata: a second copy in the same file protects against nothing.
        done = subprocess.run(
            ["mkfs.btrfs", "-q", "-m", "single", "-d", "single", "--", str(partial)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            partial.unlink()
            raise RuntimeFailure(f"mkfs.btrfs failed: {done.stderr.strip()[-500:]}")
        os.rename(partial, self.image)  # a crash before this leaves no half-made image

    def _mount_image(self) -> None:
        # discard: what sandboxes free (and whole deleted subvolumes) goes back to the host at each
        # commit. Async discard skips small extents: the metadata blocks that a flood of empty files
        # churns through stayed on the host (~600 MiB for 46 000 files in a 16 MB quota, against
        # ~20 MiB with this, at no measurable cost to writes).
        options = "loop,discard,noatime,nosuid,nodev"
        done = subprocess.run(
            ["mount", "-t", "btrfs", "-o", options, "--", str(self.image), str(self.path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeFailure(f"could not mount {self.image}: {done.stderr.strip()[-500:]}")

    def _check_host_space(self) -> None:
        """The image is sparse: if the host's filesystem fills before it does, btrfs sees write
        errors. Said at start, where an operator reads it."""
        host = os.statvfs(self.image)
        unallocated = self.size - os.stat(self.image).st_blocks * 512
        if host.f_bavail * host.f_frsize < unallocated:
            log.warning(
                "the scratch image %s can grow by %d GiB but its filesystem has %d GiB free: lower scratch_size_gb",
                self.image,
                unallocated >> 30,
                (host.f_bavail * host.f_frsize) >> 30,
            )

    def _enable_quota(self) -> None:
        """Simple quotas (Linux 6.7+) charge each extent to the subvolume that wrote it, without
        the back-reference walks of full qgroups; older kernels get full qgroups. Enabling twice
        is harmless."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                _ioctl(fd, QUOTA_CTL, _QuotaCtl(QUOTA_ENABLE_SIMPLE, 0), "enable simple quotas")
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                _ioctl(fd, QUOTA_CTL, _QuotaCtl(QUOTA_ENABLE, 0), "enable quotas")
        finally:
            os.close(fd)

    # -- subvolumes --------------------------------------------------------------------------------

    def create(self, sandbox_id: str, limit_mb: int) -> Path:
        """A subvolume for the sandbox whose qgroup is limited to limit_mb (made in the same call)."""
        name = _checked(sandbox_id)
        inherit = _limit(limit_mb)
        args = _VolArgsV2(
            flags=SUBVOL_QGROUP_INHERIT,
            size=ctypes.sizeof(inherit),
            qgroup_inherit=ctypes.addressof(inherit),
            name=name.encode(),
        )
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _ioctl(fd, SUBVOL_CREATE_V2, args, f"create subvolume {name}")
        finally:
            os.close(fd)
        return self.path / name

    def snapshot(self, source: str, target: str, limit_mb: int | None) -> Path:
        """A copy-on-write snapshot of subvolume source as target, in one ioctl (milliseconds,
        whatever the source holds): read-only without a limit (a snapshot of a sandbox), writable
        with its qgroup limited to limit_mb (a sandbox made from a snapshot). Nothing inside the
        source is read or followed on the host: the kernel copies the subvolume's root reference.
        FileNotFoundError if source has no subvolume."""
        src, dst = _checked(source), _checked(target)
        inherit = _limit(limit_mb) if limit_mb is not None else None
        parent = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            try:
                args = _VolArgsV2(fd=fd, name=dst.encode())
                if inherit is None:
                    args.flags = SUBVOL_RDONLY
                else:
                    args.flags = SUBVOL_QGROUP_INHERIT
                    args.size = ctypes.sizeof(inherit)
                    args.qgroup_inherit = ctypes.addressof(inherit)
                _ioctl(parent, SNAP_CREATE_V2, args, f"snapshot {src} as {dst}")
            finally:
                os.close(fd)
        finally:
            os.close(parent)
        return self.path / dst

    def simple_quotas(self) -> bool:
        """True when the volume's quotas are simple ones: an extent stays charged to the subvolume
        that wrote it, so a writable snapshot's qgroup starts near zero whatever it holds (and
        its limit bounds only what it writes itself). Full qgroups charge the snapshot all it
        references."""
        return self._qgroups().joinpath("mode").read_text().strip() == "squota"

    def used_bytes(self, name: str) -> int:
        """What the subvolume's own qgroup holds (as of the last commit: a snapshot commits)."""
        fd = os.open(self.path / _checked(name), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            lookup = _InoLookup(treeid=0, objectid=FIRST_FREE_OBJECTID)
            _ioctl(fd, INO_LOOKUP, lookup, f"subvolume id of {name}")
        finally:
            os.close(fd)
        return int(self._qgroups().joinpath(f"0_{lookup.treeid}", "referenced").read_text())

    def _qgroups(self) -> Path:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            info = _FsInfo()
            _ioctl(fd, FS_INFO, info, "filesystem info")
        finally:
            os.close(fd)
        fsid = bytes(info.fsid).hex()
        uuid = f"{fsid[:8]}-{fsid[8:12]}-{fsid[12:16]}-{fsid[16:20]}-{fsid[20:]}"
        return Path("/sys/fs/btrfs") / uuid / "qgroups"

    def remove(self, sandbox_id: str) -> None:
        """Deletes the sandbox's subvolume with all it holds. Its extents are freed in the
        background, then the kernel drops its qgroup."""
        if not _NAMES.match(sandbox_id):
            return  # create made none for it
        name = sandbox_id
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return
        try:
            _ioctl(fd, SNAP_DESTROY, _VolArgs(0, name.encode()), f"delete subvolume {name}")
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # a plain directory of that name, not a subvolume
                shutil.rmtree(self.path / name, ignore_errors=True)
            elif exc.errno != errno.ENOENT:
                raise
        finally:
            os.close(fd)

    def ids(self) -> set[str]:
        """The sandboxes that have a subvolume here."""
        try:
            return {name for name in os.listdir(self.path) if SANDBOX_NAME.match(name)}
        except FileNotFoundError:
            return set()

    def volume_ids(self) -> set[str]:
        """The named volumes that have a subvolume here."""
        try:
            return {name for name in os.listdir(self.path) if VOLUME_NAME.match(name)}
        except FileNotFoundError:
            return set()

    def snapshot_ids(self) -> set[str]:
        """The snapshots that have a subvolume here."""
        try:
            return {name for name in os.listdir(self.path) if SNAPSHOT_NAME.match(name)}
        except FileNotFoundError:
            return set()


_NAMES = re.compile("|".join(p.pattern for p in (SANDBOX_NAME, VOLUME_NAME, SNAPSHOT_NAME)))


def _limit(limit_mb: int) -> _QgroupInherit:
    limit = limit_mb << 20
    return _QgroupInherit(
        flags=QGROUP_INHERIT_SET_LIMITS,
        lim=_QgroupLimit(flags=LIMIT_MAX_RFER | LIMIT_MAX_EXCL, max_rfer=limit, max_excl=limit),
    )


def _checked(sandbox_id: str) -> str:
    if not _NAMES.match(sandbox_id):
        raise RuntimeFailure(f"invalid sandbox id {sandbox_id!r}")
    return sandbox_id
