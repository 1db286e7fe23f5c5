"""Measure the bytes the stores use per live group and per history row.

    .venv/bin/python bench/storage_size.py [--groups 100000] [--buckets 10] [--history 100000]
        [--url postgresql://postgres@127.0.0.1:5432/test]

For each store it writes `--groups` snapshots with `--buckets` bucket counts through the store's
own flush, and `--history` transitions through record_transitions, then reads the size the
database reports: SQLite from dbstat (pages of each table and index), PostgreSQL from
pg_total_relation_size (table, indexes and TOAST). Sizes depend on key and value lengths: the
keys here are IPv4 addresses.

NOTE: the compressed size of TimescaleDB history is not measured. Filling the PGlite TimescaleDB
server of the test suite from this script stalled, so no figure is given for it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from alertwarden.engine.records import (
    Checkpoint,
    FlushBatch,
    GroupSnapshot,
    GroupStatus,
    Transition,
    TransitionKind,
)
from alertwarden.store.migrate import migrate
from alertwarden.store.postgres import PostgresStore
from alertwarden.store.sqlite import SQLiteStore

TENANT = "tenant-a"
RULE_GROUP = "default"
RULE_ID = "ssh-failed-password"


def make_snapshots(count: int, buckets: int, now_s: float) -> list[GroupSnapshot]:
    rng = random.Random(7)
    head = int(now_s // 60)
    return [
        GroupSnapshot(
            rule_id=RULE_ID,
            key=(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",),
            window_s=buckets * 60,
            bucket_s=60,
            counts=tuple(rng.randint(0, 9) for _ in range(buckets)),
            head_bucket=head,
            last_seen_at=now_s - rng.random() * 60,
            last_fired_at=None,
            last_notified_at=None,
            status=GroupStatus.OK,
            suppressed=False,
            position=2,
        )
        for i in range(count)
    ]


def make_transitions(count: int, buckets: int, now_s: float) -> list[Transition]:
    snapshots = make_snapshots(min(count, 1000), buckets, now_s)
    kinds = list(TransitionKind)
    transitions = []
    for i in range(count):
        snap = snapshots[i % len(snapshots)]
        transitions.append(
            Transition(
                # Spread over the last 20 hours so every row lands in one or two day chunks.
                at=now_s - (count - i) * (72_000 / count),
                rule_id=RULE_ID,
                group=(("src_ip", snap.key[0]),),
                kind=kinds[i % len(kinds)],
                count=5 + i % 7,
                threshold=5,
                window_s=snap.window_s,
                snapshot=snap,
            )
        )
    return transitions


def checkpoint(now_s: float) -> Checkpoint:
    return Checkpoint(source="bench", offset=1, position=2, now=now_s, ticked={RULE_ID: int(now_s // 60)})


async def fill(store: object, snapshots: list[GroupSnapshot], transitions: list[Transition], now_s: float) -> None:
    await store.flush(TENANT, RULE_GROUP, FlushBatch(snapshots, [], checkpoint(now_s)))  # type: ignore[attr-defined]
    for start in range(0, len(transitions), 5000):
        batch = transitions[start : start + 5000]
        await store.record_transitions(TENANT, RULE_GROUP, batch)  # type: ignore[attr-defined]


async def measure_sqlite(args: argparse.Namespace, now_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.sqlite"
        store = SQLiteStore(path)
        await store.open()
        await fill(store, make_snapshots(args.groups, args.buckets, now_s), make_transitions(args.history, args.buckets, now_s), now_s)
        await store.close()
        conn = sqlite3.connect(path)
        conn.execute("VACUUM")
        sizes = dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
        conn.close()
    group_bytes = sum(v for k, v in sizes.items() if k == "groups" or k.startswith("sqlite_autoindex_groups"))
    history_bytes = sum(v for k, v in sizes.items() if "history" in k)
    return {"group": group_bytes / args.groups, "history": history_bytes / args.history}


async def measure_postgres(url: str, args: argparse.Namespace, now_s: float) -> dict[str, float]:
    await migrate(url)
    store = PostgresStore(url)
    await store.open()
    await fill(store, make_snapshots(args.groups, args.buckets, now_s), make_transitions(args.history, args.buckets, now_s), now_s)
    backend = store.settings.history_backend
    await store.close()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("VACUUM ANALYZE rule_state")
        cursor = await conn.execute("SELECT pg_total_relation_size('rule_state')")
        group_bytes = (await cursor.fetchone())[0]  # type: ignore[index]
        if backend == "timescaledb":
            cursor = await conn.execute("SELECT total_bytes FROM hypertable_detailed_size('evaluation_history')")
            history_bytes = (await cursor.fetchone())[0]  # type: ignore[index]
            await conn.execute("SELECT compress_chunk(c, true) FROM show_chunks('evaluation_history') c")
            cursor = await conn.execute("SELECT total_bytes FROM hypertable_detailed_size('evaluation_history')")
            compressed_bytes = (await cursor.fetchone())[0]  # type: ignore[index]
        else:
            cursor = await conn.execute(
                "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
                " WHERE inhparent = 'evaluation_history'::regclass"
            )
            history_bytes = (await cursor.fetchone())[0]  # type: ignore[index]
            compressed_bytes = None
    result = {"group": group_bytes / args.groups, "history": history_bytes / args.history}
    if compressed_bytes is not None:
        result["history compressed"] = compressed_bytes / args.history
    return result


async def measure_postgres_fresh(args: argparse.Namespace, now_s: float) -> dict[str, float]:
    name = f"aw_bench_{uuid.uuid4().hex[:10]}"
    base = args.url.rsplit("/", 1)[0]
    async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')  # name is generated above, not input
    try:
        return await measure_postgres(f"{base}/{name}", args, now_s)
    finally:
        async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=100_000)
    parser.add_argument("--buckets", type=int, default=10)
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    now_s = time.time()

    rows = [("SQLite", asyncio.run(measure_sqlite(args, now_s)))]
    rows.append(("PostgreSQL, partitioned history", asyncio.run(measure_postgres_fresh(args, now_s))))

    print(f"{args.groups:,} live groups with {args.buckets} buckets, {args.history:,} history rows")
    print("| store | bytes per live group | bytes per history row | compressed history row |")
    print("|---|---:|---:|---:|")
    for name, result in rows:
        compressed = result.get("history compressed")
        compressed_text = f"{compressed:.0f}" if compressed is not None else "n/a (no TimescaleDB)"
        print(f"| {name} | {result['group']:.0f} | {result['history']:.0f} | {compressed_text} |")


if __name__ == "__main__":
    main()
