"""Rows per second of PostgresStore.flush against a plain COPY of the same rows.

Usage: python bench/flush_throughput.py [--url URL] [--rows N] [--repeat R]

URL names a server database used to create a scratch database (aw_bench_<hex>), which is
dropped at the end. Each repetition flushes N changed groups with 10-bucket counts under a new
tenant (all inserts), flushes them again with a later position (all updates), and COPYs the
same rows into an empty UNLOGGED table with the rule_state columns. The flush timings include
building the parameter arrays in Python, because that is part of every real flush.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import psycopg
from psycopg import sql

from alertwarden.engine.records import Checkpoint, FlushBatch, GroupSnapshot, GroupStatus
from alertwarden.store.migrate import migrate
from alertwarden.store.postgres import PostgresStore

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"

_COPY_TABLE = """
CREATE UNLOGGED TABLE copy_target (
    tenant_id text, rule_group text, rule_id text, group_key text, window_s integer,
    bucket_s integer, counts integer[], head_bucket bigint, last_seen_at double precision,
    last_fired_at double precision, last_notified_at double precision, status text,
    suppressed boolean, position bigint
)
"""


def make_snapshots(rows: int, position: int) -> list[GroupSnapshot]:
    return [
        GroupSnapshot(
            rule_id="bench",
            key=(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",),
            window_s=600,
            bucket_s=60,
            counts=tuple((i + b) % 7 for b in range(10)),
            head_bucket=28_333_333 + position,
            last_seen_at=1_700_000_000.0 + i / 1000,
            last_fired_at=None,
            last_notified_at=None,
            status=GroupStatus.OK,
            suppressed=False,
            position=position,
        )
        for i in range(rows)
    ]


async def time_flush(store: PostgresStore, tenant: str, snaps: list[GroupSnapshot]) -> float:
    position = snaps[0].position
    batch = FlushBatch(snaps, [], Checkpoint("bench", position, position, None, {}))
    started = time.perf_counter()
    await store.flush(tenant, "g", batch)
    return time.perf_counter() - started


async def time_copy(url: str, tenant: str, snaps: list[GroupSnapshot]) -> float:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("TRUNCATE copy_target")
        started = time.perf_counter()
        async with conn.transaction():
            async with conn.cursor().copy(
                "COPY copy_target FROM STDIN"
            ) as copy:
                for s in snaps:
                    await copy.write_row(
                        (
                            tenant, "g", s.rule_id, f'["{s.key[0]}"]', s.window_s, s.bucket_s,
                            list(s.counts), s.head_bucket, s.last_seen_at, s.last_fired_at,
                            s.last_notified_at, s.status.value, s.suppressed, s.position,
                        )
                    )
        return time.perf_counter() - started


async def run(admin_url: str, rows: int, repeat: int) -> None:
    name = f"aw_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    info["dbname"] = name
    url = psycopg.conninfo.make_conninfo(**{k: v for k, v in info.items() if v is not None})
    try:
        await migrate(url, history_backend="partitioned")
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(_COPY_TABLE)
        store = PostgresStore(url, pool_max=1)
        await store.open()
        inserts: list[float] = []
        updates: list[float] = []
        copies: list[float] = []
        try:
            first, second = make_snapshots(rows, 1), make_snapshots(rows, 2)
            for _ in range(repeat):
                tenant = f"bench-{uuid.uuid4().hex[:8]}"
                inserts.append(rows / await time_flush(store, tenant, first))
                updates.append(rows / await time_flush(store, tenant, second))
                copies.append(rows / await time_copy(url, tenant, first))
        finally:
            await store.close()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

    print(f"rows per flush: {rows}, repetitions: {repeat}")
    print(f"{'case':<22}{'best rows/s':>14}{'median rows/s':>16}{'median / COPY':>15}")
    copy_median = statistics.median(copies)
    for label, rates in (
        ("flush upsert (insert)", inserts),
        ("flush upsert (update)", updates),
        ("COPY, unlogged", copies),
    ):
        median = statistics.median(rates)
        print(f"{label:<22}{max(rates):>14,.0f}{median:>16,.0f}{median / copy_median:>14.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="server database for CREATE DATABASE")
    parser.add_argument("--rows", type=int, default=100_000, help="changed groups per flush")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each case")
    args = parser.parse_args()
    asyncio.run(run(args.url, args.rows, args.repeat))


if __name__ == "__main__":
    main()
