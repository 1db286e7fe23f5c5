"""Pytest plugin with PostgreSQL databases for the store tests.

ALERTWARDEN_PG_URL names a server database to connect to for CREATE DATABASE (default
postgresql://postgres@127.0.0.1:5432/test). Each database the fixtures create is named
aw_test_<hex> and is dropped at the end of the session. When the server cannot be reached the
tests fail, unless ALERTWARDEN_SKIP_POSTGRES=1 turns that into a skip.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import sql

from alertwarden.store.migrate import migrate

URL_ENV = "ALERTWARDEN_PG_URL"
SKIP_ENV = "ALERTWARDEN_SKIP_POSTGRES"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _admin_url() -> str:
    return os.environ.get(URL_ENV, DEFAULT_URL)


def database_url(admin_url: str, name: str) -> str:
    """Return admin_url with its database name replaced by `name`."""
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in info.items() if v is not None})


@pytest.fixture(scope="session")
def pg_database_factory() -> Iterator[Callable[[], str]]:
    """Yield a function that creates an empty database and returns its URL."""
    admin_url = _admin_url()
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {admin_url} not reachable ({exc}); set {URL_ENV}"
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(message)
        pytest.fail(f"{message}, or {SKIP_ENV}=1 to skip the PostgreSQL tests", pytrace=False)
    created: list[str] = []

    def create() -> str:
        name = f"aw_test_{uuid.uuid4().hex[:16]}"
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return database_url(admin_url, name)

    try:
        yield create
    finally:
        for name in created:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        admin.close()


@pytest.fixture
def pg_url(pg_database_factory: Callable[[], str]) -> str:
    """URL of a new empty database."""
    return pg_database_factory()


@pytest.fixture(scope="session")
def pg_store_url(pg_database_factory: Callable[[], str]) -> str:
    """URL of one database migrated on the partitioned path, shared by the session.

    Tests that share it use their own tenant names.
    """
    url = pg_database_factory()
    asyncio.run(migrate(url, history_backend="partitioned"))
    return url


@pytest.fixture(scope="session")
def timescale_store_url(timescale_url: str) -> str:
    """URL of the session's TimescaleDB server, migrated on the timescaledb path."""
    asyncio.run(migrate(timescale_url, history_backend="timescaledb"))
    return timescale_url


def migrate_partitioned(url: str) -> None:
    """Migrate the database at `url` with day-partitioned history, even where TimescaleDB exists."""
    # A worker thread has its own event loop slot, so asyncio.run there leaves the loop of an
    # async test that requested the fixture untouched.
    with ThreadPoolExecutor(max_workers=1) as executor:
        executor.submit(asyncio.run, migrate(url, history_backend="partitioned")).result()


def drop_database(url: str) -> None:
    """Drop the database that `url` names, closing the connections still open to it."""
    name = str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
    with psycopg.connect(_admin_url(), autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_migrated_database_factory(
    pg_database_factory: Callable[[], str],
) -> Callable[[], str]:
    """Return a function that creates a migrated database and returns its URL.

    The databases live until the end of the session, for fixtures wider than one test.
    """

    def create() -> str:
        url = pg_database_factory()
        migrate_partitioned(url)
        return url

    return create


@pytest.fixture
def pg_migrated_url(pg_database_factory: Callable[[], str]) -> Iterator[str]:
    """URL of a new database migrated on the partitioned path, dropped when the test ends."""
    url = pg_database_factory()
    migrate_partitioned(url)
    yield url
    drop_database(url)
