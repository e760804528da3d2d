"""Where a store's statements run: the async engine's greenlets (PostgreSQL), or one thread of its
own holding one SQLite connection.

The store writes each call as a plain function of a ``sa.Connection``; a runner runs it in a
transaction (``write``) or outside one (``read``). SQLite gets a thread rather than aiosqlite:
aiosqlite hops to its thread and back for every cursor call (about five per query), which cost
0.5 ms a read and 1.3 ms a write here, against 0.1 ms for one hop with the whole call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

T = TypeVar("T")
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _unwrap(fn: Callable[[sa.Connection], T]) -> Callable[[sa.Connection], T]:
    """A value the store's column types refuse (a naive datetime) raises its own ValueError."""

    def call(conn: sa.Connection) -> T:
        try:
            return fn(conn)
        except sa.exc.StatementError as e:
            if not isinstance(e, sa.exc.DBAPIError) and isinstance(e.orig, ValueError):
                raise e.orig from None
            raise

    return call


class Runner(Protocol):
    dialect: str

    async def read(self, fn: Callable[[sa.Connection], T]) -> T: ...

    async def write(self, fn: Callable[[sa.Connection], T]) -> T: ...

    async def write_one(self, fn: Callable[[sa.Connection], T]) -> T:
        """``fn`` runs one statement that writes: atomic by itself, it needs no transaction around."""

    async def close(self) -> None: ...


class AsyncRunner:
    def __init__(self, url: sa.URL, **options: Any) -> None:
        self.engine: AsyncEngine = create_async_engine(url, **options)
        # Reads and single-statement writes run outside a transaction: they skip a BEGIN and a
        # COMMIT/ROLLBACK, two of the three round trips they would otherwise take.
        self._reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.dialect = self.engine.dialect.name

    async def read(self, fn: Callable[[sa.Connection], T]) -> T:
        async with self._reader.connect() as conn:
            return await conn.run_sync(_unwrap(fn))

    async def write(self, fn: Callable[[sa.Connection], T]) -> T:
        async with self.engine.begin() as conn:
            return await conn.run_sync(_unwrap(fn))

    async def write_one(self, fn: Callable[[sa.Connection], T]) -> T:
        return await self.read(fn)

    async def close(self) -> None:
        await self.engine.dispose()


class ThreadRunner:
    """A SQLite engine used only from its own thread: its connections never change threads, calls
    run one at a time (SQLite takes one writer at a time anyway), and a wait on another process's
    write lock (busy_timeout) holds that thread, never the event loop."""

    def __init__(self, url: sa.URL, *, transactional_ddl: bool = False) -> None:
        self.dialect = "sqlite"
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandboxd-sqlite")
        # One connection, kept: its thread is the only one to use it (no pool checkout per call).
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self._conn: sa.Connection | None = None

        @sa.event.listens_for(self.engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            if transactional_ddl:
                conn.isolation_level = None  # else the driver commits before any DDL
            cursor = conn.cursor()
            # WAL: readers never wait for the writer. NORMAL: no fsync per commit; a power cut may
            # lose the last commits but never corrupts the file.
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}"):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        if transactional_ddl:

            @sa.event.listens_for(self.engine, "begin")
            def _begin(conn: sa.Connection) -> None:
                # The write lock from the start: two servers migrating one file take turns.
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _connection(self) -> sa.Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
        return self._conn

    async def read(self, fn: Callable[[sa.Connection], T]) -> T:
        def call() -> T:
            conn = self._connection()
            try:
                return _unwrap(fn)(conn)
            finally:
                conn.rollback()  # ends SQLAlchemy's transaction; sqlite3 itself began none for a read

        return await self._run(call)

    async def write(self, fn: Callable[[sa.Connection], T]) -> T:
        def call() -> T:
            conn = self._connection()
            with conn.begin():
                return _unwrap(fn)(conn)

        return await self._run(call)

    async def write_one(self, fn: Callable[[sa.Connection], T]) -> T:
        return await self.write(fn)  # sqlite3 opens a transaction before any write all the same

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.engine.dispose()

        await self._run(close)
        self._thread.shutdown(wait=True)


def runner(url: sa.URL, *, migrating: bool = False) -> Runner:
    if url.get_backend_name() == "sqlite":
        return ThreadRunner(url, transactional_ddl=migrating)
    if migrating:
        return AsyncRunner(url, poolclass=sa.pool.NullPool)
    return AsyncRunner(url)
