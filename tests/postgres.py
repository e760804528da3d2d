"""A PostgreSQL server of the tests' own: Debian's PostgreSQL 15, initdb'd in a temp dir.

It listens on a free port of 127.0.0.1 (password auth) and on a unix socket in its own directory,
runs as the ``postgres`` OS user (the server refuses to run as root), and leaves nothing behind:
``stop`` ends it and removes the directory. Used by the store contract suite and any suite that
wants a server on PostgreSQL::

    with PostgresServer() as pg:
        url = pg.create_database("scenario")   # postgresql://postgres:…@127.0.0.1:port/scenario
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

BIN = Path(os.environ.get("SANDBOXD_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self) -> None:
        self.dir: Path | None = None
        self.port = 0
        self.password = secrets.token_hex(16)
        self.url = ""  # of the database "sandboxd", once started

    def _as_postgres(self, *argv: str) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", OS_USER, "--", *argv] if os.geteuid() == 0 else list(argv)
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)

    def _check(self, *argv: str) -> str:
        done = self._as_postgres(*argv)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stdout}{done.stderr}{self._log()}")
        return done.stdout

    def _log(self) -> str:
        log = self.dir / "server.log" if self.dir else None
        return "\n" + log.read_text()[-4000:] if log and log.exists() else ""

    def start(self) -> PostgresServer:
        if not (BIN / "initdb").exists():
            raise RuntimeError(f"no PostgreSQL at {BIN}: apt-get install postgresql (scripts/bootstrap does)")
        self.dir = Path(tempfile.mkdtemp(prefix="sandboxd-pg-"))
        try:
            if os.geteuid() == 0:
                user = pwd.getpwnam(OS_USER)
                os.chown(self.dir, user.pw_uid, user.pw_gid)
            pwfile = self.dir / "pwfile"
            pwfile.write_text(self.password + "\n")
            if os.geteuid() == 0:
                os.chown(pwfile, user.pw_uid, user.pw_gid)
            pwfile.chmod(0o600)
            self._check(
                str(BIN / "initdb"),
                "-D",
                str(self.dir / "data"),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "-E",
                "UTF8",
                "--no-sync",
            )
            pwfile.unlink()
            self._start_server()
            self.url = self.create_database("sandboxd")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_server(self) -> None:
        assert self.dir is not None
        for _ in range(5):  # a free port can be taken by someone else before the server binds it
            self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir}"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            done = self._as_postgres(
                str(BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "server.log"),
                "-w", "-t", "60", "-o", options, "start",
            )  # fmt: skip
            if done.returncode == 0:
                return
        raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}{self._log()}")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Runs ``sql`` as the superuser over the unix socket."""
        assert self.dir is not None
        return self._check(
            str(BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.dir), "-p", str(self.port),
            "-U", "postgres", "-d", database, "-tA", "-c", sql,
        )  # fmt: skip

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"bad database name {name!r}")
        self.psql(f"CREATE DATABASE {name}")
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.dir is None:
            return
        if (self.dir / "data" / "postmaster.pid").exists():
            self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-w", "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
