"""Unpacking a tar stream from somewhere hostile (a sandbox's agent, a registry, an image file) on
the host, without trusting a single path in it and without depending on the Python patch level.

Python's own ``filter="data"`` checks each member with ``os.path.realpath`` and then lets the kernel
resolve the path again when it writes. The two disagree whenever realpath gives up (past PATH_MAX it
stops expanding symlinks: CVE-2025-4517) or when a later member changes what an earlier, already
checked symlink means. Here nothing is ever resolved by path: every member is reached component by
component from an open directory fd with ``O_NOFOLLOW`` (``openat``, ``mkdirat``, ``symlinkat``,
``linkat``, ``mknodat``), so a symlink on the way, from the archive or already on disk, is refused
rather than followed, and a name is split and judged as text before anything is touched.

The rules:
- a member's name is relative, with no ".." component; every directory on its way is a real
  directory (a symlink or a file there refuses the member, whoever put it there);
- whatever is already at a member's own name is removed first, never written through (a planted
  hard link or symlink stays untouched);
- a hard link points to a regular file this same archive made earlier, reached the same way;
- under ``Rules.contained_links`` (the default) a symlink's target is relative and climbs at most to
  the destination (its ".." all come first, no more than the link's depth). No ".." after a name:
  "x/.." means something else once a later member makes x a symlink, so a target that only stays
  inside as text is not accepted. With every link climbing only from where it physically is, no
  chain of them leaves the destination whatever comes later;
- device nodes and fifos are refused (a root filesystem may drop its /dev entries instead);
  setuid, setgid and sticky bits are cleared and owners not kept unless the rules say so;
- extended headers (long names, pax records) are bounded, and so is the total size if asked.

It lives in the client distribution (sandboxd_sdk) because the CLI unpacks `cp ID:/dir` with it;
the server uses the same code through sandboxd.tarsafe. Standard library only.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

MAX_HEADER_BYTES = 1 << 20  # a long name or a pax record set; tarfile reads it whole into memory
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_HEADER_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class UnsafeArchive(Exception):
    """A member the rules refuse. ``member`` is its name as the archive gave it."""

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"refused {member!r}: {reason}")
        self.member = member
        self.reason = reason


@dataclass(frozen=True)
class Rules:
    keep_owners: bool = False  # chown to the member's numeric uid/gid (a root filesystem, as root)
    keep_special_bits: bool = False  # setuid, setgid, sticky, group/other write
    contained_links: bool = True  # False: symlink targets are not interpreted on this host
    fifos: bool = False
    drop_devices_under: str | None = None  # a top directory whose device nodes are skipped, not refused
    # Device nodes, fifos and symlinks leading out of the destination are skipped, not refused.
    skip_special: bool = False
    replace_dirs: bool = False  # a non-directory member may replace a whole directory tree
    max_bytes: int | None = None  # total of regular files' sizes


# A sandbox's tree copied to this host (Files.download_dir, `sandboxd cp ID:/ .`): its device nodes
# (the runtime's /dev) and fifos cannot be copied as files, and a symlink out of the copy (an
# absolute one: /etc/alternatives/*, /dev/core -> /proc/kcore) would point at this host's files, so
# these are left out rather than failing the whole copy; everything else keeps the default rules.
DOWNLOAD = Rules(skip_special=True)


# git archive writes one global header of about 52 bytes; nothing legitimate needs more than this.
MAX_GLOBAL_HEADER_BYTES = 64 * 1024


class BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses an extended header (long name, pax records) bigger than
    MAX_HEADER_BYTES before tarfile reads it into memory."""

    def _proc_member(self, archive: tarfile.TarFile) -> Any:
        if self.type in _HEADER_TYPES and self.size > MAX_HEADER_BYTES:
            raise UnsafeArchive(self.name, f"an extended header of {self.size} bytes")
        if self.type == tarfile.XGLTYPE:
            # Global pax records stay in memory for the whole archive (tarfile merges them into
            # pax_headers and walks them for every later member): their total is bounded too.
            seen = getattr(archive, "_sandboxd_global_bytes", 0) + self.size
            if seen > MAX_GLOBAL_HEADER_BYTES:
                raise UnsafeArchive(self.name, f"global extended headers of more than {MAX_GLOBAL_HEADER_BYTES} bytes")
            setattr(archive, "_sandboxd_global_bytes", seen)  # noqa: B010 - a TarFile has no slot for it
        return super()._proc_member(archive)  # type: ignore[misc]


def open_stream(fileobj: IO[bytes]) -> tarfile.TarFile:
    """A tar read front to back from fileobj (plain or compressed), with bounded headers."""
    return tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=BoundedTarInfo)


def members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members in order, without tarfile keeping every one of them in memory."""
    while (member := tar.next()) is not None:
        getattr(tar, "members").clear()  # noqa: B009 - not in the type stubs; next() only appends to it
        yield member


def split_name(name: str) -> tuple[str, ...]:
    """A member's name as components, refused if it is absolute or has a ".." component."""
    if name.startswith("/"):
        raise UnsafeArchive(name, "an absolute name, outside the destination")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(name, "a '..' component, outside the destination")
    return parts


def extract(fileobj: IO[bytes], dest: str | os.PathLike[str], rules: Rules | None = None) -> tuple[int, int, int]:
    """Unpacks the tar stream in fileobj into the existing directory dest. Returns what it wrote:
    (entries other than directories, bytes of regular files, members left out by skip_special)."""
    with open_stream(fileobj) as tar, Extractor(dest, rules or Rules()) as out:
        for member in members(tar):
            out.extract(tar, member)
    return out.files, out._bytes, out.skipped


@dataclass
class _PendingDir:
    parts: tuple[str, ...]
    mode: int
    uid: int
    gid: int
    mtime: float


class Extractor:
    """Members written into one destination directory, each by the rules above. Directory modes,
    owners and times are applied at the end (a read-only directory must still take its files)."""

    def __init__(self, dest: str | os.PathLike[str], rules: Rules) -> None:
        self.rules = rules
        self.root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._made: set[tuple[int, int]] = set()  # regular files this archive wrote: hard link targets
        self._dirs: list[_PendingDir] = []
        self._bytes = 0
        self.files = 0  # entries written other than directories (a report's count)
        self.skipped = 0  # members skip_special left out

    def __enter__(self) -> Extractor:
        return self

    def __exit__(self, kind: object, *_rest: object) -> None:
        try:
            if kind is None:
                self.finish()
        finally:
            os.close(self.root)

    # -- walking without following -----------------------------------------------------------------

    def directory(self, parts: Sequence[str], member: str, create: bool = True) -> int:
        """An fd of the directory root/parts (the caller closes it), made if missing and create.
        A symlink or a non-directory on the way refuses the member."""
        fd = os.dup(self.root)
        try:
            for part in parts:
                child = self._step(fd, part, member, create)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _step(self, parent: int, name: str, member: str, create: bool) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(name, 0o755, dir_fd=parent)
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            kind = "a symlink" if stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode) else "a non-directory"
            raise UnsafeArchive(member, f"its path goes through {kind} ({name!r})") from None

    def remove(self, parent: int, name: str, member: str, keep_dir: bool = False) -> bool:
        """Clears name in parent without following it; True if a directory was kept."""
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)
        elif keep_dir:
            return True
        elif self.rules.replace_dirs:
            shutil.rmtree(name, dir_fd=parent)  # the fd-based rmtree: it never follows a link
        else:
            try:
                os.rmdir(name, dir_fd=parent)
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
                raise UnsafeArchive(member, "would replace a directory that is not empty") from None
        return False

    # -- members -----------------------------------------------------------------------------------

    def extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        try:
            self._extract(tar, member)
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            raise UnsafeArchive(member.name, "a name component longer than the filesystem takes") from None

    def _extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = split_name(member.name)
        if member.isdir():
            self._dir(member, parts)
            return
        if not parts:
            raise UnsafeArchive(member.name, "a non-directory member for the destination itself")
        if self.rules.skip_special and (member.ischr() or member.isblk() or member.isfifo()):
            self.skipped += 1
            return  # nothing is made for it
        if member.ischr() or member.isblk():
            if self.rules.drop_devices_under is not None and parts[0] == self.rules.drop_devices_under:
                return  # the sandbox gets its own /dev
            raise UnsafeArchive(member.name, "device nodes are not allowed")
        if member.isfifo() and not self.rules.fifos:
            raise UnsafeArchive(member.name, "fifos are not allowed")
        if not (member.isreg() or member.issym() or member.islnk() or member.isfifo()):
            raise UnsafeArchive(member.name, f"unsupported member type {member.type!r}")
        if member.issym():
            try:
                self._check_symlink(member, parts)
            except UnsafeArchive:
                if self.rules.skip_special:
                    self.skipped += 1
                    return  # nothing is made for it: no link out of the copy on this host
                raise
        *above, name = parts
        parent = self.directory(above, member.name)
        try:
            if member.islnk():
                self._hardlink(member, parent, name)
                self.files += 1
                return
            self.remove(parent, name, member.name)
            if member.isreg():
                self._file(tar, member, parent, name)
            elif member.issym():
                os.symlink(member.linkname, name, dir_fd=parent)
                self._attrs(None, member, parent, name)
            else:
                os.mkfifo(name, self._mode(member), dir_fd=parent)
                self._attrs(None, member, parent, name)
            self.files += 1
        finally:
            os.close(parent)

    def _dir(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        if parts:
            *above, name = parts
            parent = self.directory(above, member.name)
            try:
                if not self.remove(parent, name, member.name, keep_dir=True):
                    os.mkdir(name, 0o700, dir_fd=parent)
            finally:
                os.close(parent)
        elif not self.rules.keep_owners:
            return  # the destination itself: the caller's directory, its mode is not the archive's
        pending = _PendingDir(parts, self._mode(member), member.uid, member.gid, member.mtime)
        self._dirs.append(pending)

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, name: str) -> None:
        self._bytes += member.size
        if self.rules.max_bytes is not None and self._bytes > self.rules.max_bytes:
            raise UnsafeArchive(member.name, f"the archive holds more than {self.rules.max_bytes} bytes")
        source = tar.extractfile(member)
        assert source is not None  # a regular file always has a data stream
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        with open(fd, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
            out.flush()
            self._attrs(out.fileno(), member, parent, name)
            st = os.fstat(out.fileno())
        self._made.add((st.st_dev, st.st_ino))

    def _hardlink(self, member: tarfile.TarInfo, parent: int, name: str) -> None:
        def refuse(why: str) -> UnsafeArchive:
            return UnsafeArchive(member.name, f"a hard link to {member.linkname!r}: {why}")

        try:
            *above, target = split_name(member.linkname) or ("",)
        except UnsafeArchive:
            raise refuse("outside the destination") from None
        if not target:
            raise refuse("no target")
        try:
            source = self.directory(above, member.name, create=False)
        except FileNotFoundError:
            raise refuse("not a file this archive made earlier") from None
        try:
            try:
                st = os.lstat(target, dir_fd=source)
            except FileNotFoundError:
                raise refuse("not a file this archive made earlier") from None
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) not in self._made:
                raise refuse("not a file this archive made earlier")
            existing = _lstat(parent, name)
            if existing is not None and (existing.st_dev, existing.st_ino) == (st.st_dev, st.st_ino):
                return  # already that file
            self.remove(parent, name, member.name)
            os.link(target, name, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(source)

    def _check_symlink(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        target = member.linkname
        if not target:
            raise UnsafeArchive(member.name, "a symlink with no target")
        if not self.rules.contained_links:
            return
        if target.startswith("/"):
            raise UnsafeArchive(member.name, f"a symlink to the absolute path {target!r}")
        steps = [step for step in target.split("/") if step not in ("", ".")]
        ups = 0
        while ups < len(steps) and steps[ups] == "..":
            ups += 1
        if ".." in steps[ups:]:
            raise UnsafeArchive(member.name, f"a symlink to {target!r}: '..' after a name is not accepted")
        if ups > len(parts) - 1:
            raise UnsafeArchive(member.name, f"a symlink to {target!r}, outside the destination")

    # -- attributes --------------------------------------------------------------------------------

    def _mode(self, member: tarfile.TarInfo) -> int:
        mode = member.mode & 0o7777
        if self.rules.keep_special_bits:
            return mode
        mode &= 0o755  # no setuid/setgid/sticky, no group/other write (like tarfile's "data" filter)
        if member.isdir():
            return mode | 0o700
        if member.isreg():
            return mode | 0o600
        return mode

    def _attrs(self, fd: int | None, member: tarfile.TarInfo, parent: int, name: str) -> None:
        """Owner, then mode (chown clears setuid), then times; on fd, or on the name not followed."""
        times = (member.mtime, member.mtime)
        if fd is not None:
            if self.rules.keep_owners:
                os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, self._mode(member))
            os.utime(fd, times)
            return
        if self.rules.keep_owners:
            os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        if not member.issym():  # a symlink's own mode means nothing on Linux
            os.chmod(name, self._mode(member), dir_fd=parent)
        os.utime(name, times, dir_fd=parent, follow_symlinks=False)

    def finish(self) -> None:
        """Directories' own attributes, deepest first; one a later member replaced is skipped."""
        for pending in sorted(self._dirs, key=lambda d: len(d.parts), reverse=True):
            try:
                fd = self.directory(pending.parts, "/".join(pending.parts), create=False)
            except (UnsafeArchive, FileNotFoundError):
                continue
            try:
                if self.rules.keep_owners:
                    os.fchown(fd, pending.uid, pending.gid)
                os.fchmod(fd, pending.mode)
                os.utime(fd, (pending.mtime, pending.mtime))
            finally:
                os.close(fd)
        self._dirs.clear()


def _lstat(parent: int, name: str) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        return None
