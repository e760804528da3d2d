"""The store's contract runs on both backends: SQLite in a temp file, PostgreSQL started here."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandboxd.store.base import Store
from sandboxd.store.sql import open_store
from tests.postgres import PostgresServer

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresServer) -> str:
    return postgres.url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each backend for each test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sandboxd.db"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"contract_{next(_databases)}")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await open_store(database_url)
    await opened.ensure_default_tenant()
    yield opened
    await opened.close()
