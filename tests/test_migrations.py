"""The PostgreSQL migration runner and the declared schema in store/schema.sql."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from typing import Any

import psycopg
import pytest

from alertwarden.errors import StoreError
from alertwarden.store import postgres
from alertwarden.store.migrate import migrate, migration_files

ALL_VERSIONS = sorted(migration_files())

# Catalog queries of the parts the comparison covers. Day partitions and the runner's own
# bookkeeping table are left out: migrations create them, schema.sql does not.
_EXCLUDED = "('schema_migrations')"
_PARTITION = r"'^evaluation_history_[0-9]{8}$'"

SCHEMA_QUERIES: dict[str, str] = {
    "columns": f"""
        SELECT table_name, column_name, ordinal_position, data_type, udt_name, is_nullable,
               column_default, is_identity, identity_generation
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name NOT IN {_EXCLUDED}
          AND table_name !~ {_PARTITION}
        ORDER BY 1, 3""",
    "constraints": f"""
        SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        WHERE c.relnamespace = 'public'::regnamespace AND c.relname NOT IN {_EXCLUDED}
          AND c.relname !~ {_PARTITION}
        ORDER BY 1, 2""",
    "indexes": f"""
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename NOT IN {_EXCLUDED}
          AND tablename !~ {_PARTITION}
        ORDER BY 1, 2""",
    "comments": f"""
        SELECT c.relname, coalesce(a.attname, ''), d.description
        FROM pg_description d
        JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid
        WHERE c.relnamespace = 'public'::regnamespace AND c.relname NOT IN {_EXCLUDED}
        ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), p.prosrc,
               obj_description(p.oid, 'pg_proc')
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
        ORDER BY 1, 2""",
    "partitioning": """
        SELECT c.relname, pg_get_partkeydef(c.oid) FROM pg_partitioned_table t
        JOIN pg_class c ON c.oid = t.partrelid ORDER BY 1""",
}


async def schema_of(url: str) -> dict[str, list[tuple[Any, ...]]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        result = {}
        for name, query in SCHEMA_QUERIES.items():
            cursor = await conn.execute(query)  # type: ignore[arg-type]
            result[name] = list(await cursor.fetchall())
        return result


async def fetch(url: str, query: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(query)  # type: ignore[arg-type]
        return list(await cursor.fetchall())


async def test_migrate_from_empty(pg_url: str) -> None:
    applied = await migrate(pg_url)

    recorded = await fetch(pg_url, "SELECT version, name FROM schema_migrations ORDER BY 1")
    settings = dict(await fetch(pg_url, "SELECT name, value FROM alertwarden_settings"))

    assert applied == ALL_VERSIONS
    assert applied == list(range(1, len(applied) + 1))
    # Where a version has one file per history backend, the partitioned one was applied.
    assert recorded[:2] == [(1, "0001_core"), (2, "0002_history_partitioned")]
    assert [version for version, _ in recorded] == ALL_VERSIONS
    assert all(not name.endswith("_timescaledb") for _, name in recorded)
    assert settings == {
        "history_backend": "partitioned",
        "compress_after_s": "86400",
        "retention_s": "604800",
    }


async def test_migrate_rerun_noop(pg_url: str) -> None:
    await migrate(pg_url)
    before = await schema_of(pg_url)

    again = await migrate(pg_url)

    assert again == []
    assert await schema_of(pg_url) == before
    assert await fetch(pg_url, "SELECT count(*) FROM alertwarden_settings") == [(3,)]


async def test_migrate_concurrent_calls(pg_url: str) -> None:
    first, second = await asyncio.gather(migrate(pg_url), migrate(pg_url))

    assert sorted(first + second) == ALL_VERSIONS
    assert await fetch(pg_url, "SELECT count(*) FROM schema_migrations") == [(len(ALL_VERSIONS),)]


def test_migrate_concurrent_processes(pg_url: str) -> None:
    script = (
        "import asyncio, sys; from alertwarden.store.migrate import migrate;"
        " print(asyncio.run(migrate(sys.argv[1])))"
    )
    children = [
        subprocess.Popen([sys.executable, "-c", script, pg_url], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [child.communicate(timeout=60)[0] for child in children]

    assert [child.returncode for child in children] == [0, 0, 0]
    applied = sorted(v for out in outputs for v in eval(out))  # noqa: S307 - our own list output
    assert applied == ALL_VERSIONS
    recorded = asyncio.run(fetch(pg_url, "SELECT count(*) FROM schema_migrations"))
    assert recorded == [(len(ALL_VERSIONS),)]


async def test_migrated_equals_schema_sql(
    pg_url: str, pg_database_factory: Callable[[], str]
) -> None:
    declared_url = pg_database_factory()
    declared_sql = resources.files("alertwarden.store").joinpath("schema.sql").read_text()
    async with await psycopg.AsyncConnection.connect(declared_url, autocommit=True) as conn:
        await conn.execute(declared_sql)  # type: ignore[arg-type]

    await migrate(pg_url, history_backend="partitioned")
    migrated = await schema_of(pg_url)
    declared = await schema_of(declared_url)

    for part in SCHEMA_QUERIES:
        assert migrated[part] == declared[part], part
    assert len(migrated["columns"]) > 40
    assert len(migrated["comments"]) > 40


async def test_checksum_mismatch_rejected(pg_url: str) -> None:
    await migrate(pg_url)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")

    with pytest.raises(StoreError, match="checksum mismatch for applied migration 0001_core"):
        await migrate(pg_url)


async def test_unknown_version_rejected(pg_url: str) -> None:
    await migrate(pg_url)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (999, 'future', 'x')"
        )

    with pytest.raises(StoreError, match="migration 999"):
        await migrate(pg_url)


async def test_backend_mismatch_rejected(pg_url: str) -> None:
    await migrate(pg_url, history_backend="partitioned")

    with pytest.raises(StoreError, match="history_backend 'timescaledb' was requested"):
        await migrate(pg_url, history_backend="timescaledb")


async def test_timescaledb_unavailable_rejected(pg_url: str) -> None:
    available = await fetch(
        pg_url, "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    if available != [(0,)]:
        pytest.skip("this server has timescaledb, so the error path cannot run")

    with pytest.raises(StoreError, match="timescaledb extension is not available"):
        await migrate(pg_url, history_backend="timescaledb")
    assert await fetch(pg_url, "SELECT to_regclass('schema_migrations') IS NULL") == [(True,)]


@pytest.mark.parametrize(
    ("option", "value"),
    [("history_backend", "sqlite"), ("retention_s", 0), ("compress_after_s", 1.5)],
)
async def test_invalid_options_rejected(pg_url: str, option: str, value: object) -> None:
    with pytest.raises(StoreError, match=f"invalid {option}"):
        await migrate(pg_url, **{option: value})  # type: ignore[arg-type]


async def test_partition_creation_concurrent(pg_url: str) -> None:
    """Sessions creating the same day partition at once all succeed; exactly one creates it."""
    await migrate(pg_url, history_backend="partitioned")
    day = "2031-05-17"

    async def ensure() -> bool:
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            cursor = await conn.execute("SELECT alertwarden_ensure_history_partition(%s::date)", (day,))
            row = await cursor.fetchone()
            await conn.commit()
            assert row is not None
            return bool(row[0])

    created = await asyncio.gather(*(ensure() for _ in range(8)))

    assert created.count(True) == 1
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        cursor = await conn.execute("SELECT to_regclass('evaluation_history_20310517') IS NOT NULL")
        row = await cursor.fetchone()
    assert row == (True,)


async def test_migrate_silent_server_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # The URL sets no connect_timeout, so the store's default applies, shortened here.
    monkeypatch.setitem(postgres.CONNECTION_DEFAULTS, "connect_timeout", "1")
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]

        with pytest.raises(StoreError, match="timeout expired"):
            async with asyncio.timeout(15):
                await migrate(f"postgresql://postgres@127.0.0.1:{port}/none")
