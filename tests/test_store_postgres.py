"""PostgresStore against a real PostgreSQL server (see tests/pg_fixture.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import psycopg
import pytest

from alertwarden.engine.evaluator import Evaluator
from alertwarden.engine.records import (
    Checkpoint,
    FlushBatch,
    GroupSnapshot,
    GroupStatus,
    Transition,
    TransitionKind,
)
from alertwarden.errors import InvalidValueError, StoreError
from alertwarden.events import Event, Signal
from alertwarden.pipeline import RuleGroupPipeline
from alertwarden.rules import load_rules_text
from alertwarden.sinks.base import Notification
from alertwarden.store.migrate import migrate
from alertwarden.store.postgres import PostgresStore

HOSTILE = [
    "it's \"quoted\"",
    "'; DROP TABLE rule_state; --",
    "Grüße 🚨 ‮ zwölf",
    "x" * 10_240,
    "back\\slash {braces,} [1]",
]


def snapshot(
    rule_id: str = "r1",
    key: tuple[str | None, ...] = ("10.0.0.1",),
    *,
    position: int = 0,
    counts: tuple[int, ...] = (0, 1, 2, 3),
    status: GroupStatus = GroupStatus.OK,
    last_seen_at: float = 1_700_000_000.1,
) -> GroupSnapshot:
    return GroupSnapshot(
        rule_id=rule_id,
        key=key,
        window_s=240,
        bucket_s=60,
        counts=counts,
        head_bucket=28_333_333,
        last_seen_at=last_seen_at,
        last_fired_at=None,
        last_notified_at=1_700_000_000.3 if status is GroupStatus.FIRING else None,
        status=status,
        suppressed=False,
        position=position,
    )


def transition(
    rule_id: str = "r1",
    value: str | None = "10.0.0.1",
    *,
    at: float = 1_700_000_000.25,
    kind: TransitionKind = TransitionKind.FIRED,
    position: int = 7,
    captures: dict[str, object] | None = None,
) -> Transition:
    snap = snapshot(rule_id, (value,), position=position, status=GroupStatus.FIRING)
    return Transition(
        at=at,
        rule_id=rule_id,
        group=(("source.ip", value),),
        kind=kind,
        count=5,
        threshold=5,
        window_s=240,
        snapshot=snap,
        captures=captures or {"user": "root"},
    )


def checkpoint(position: int = 10, *, source: str = "file:1:2", now: float | None = 1.5e9) -> Checkpoint:
    return Checkpoint(source=source, offset=position // 2, position=position, now=now, ticked={"r1": 3})


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def store(pg_store_url: str) -> AsyncIterator[PostgresStore]:
    pg_store = PostgresStore(pg_store_url, pool_max=2, maintain_interval_s=0)
    await pg_store.open()
    try:
        yield pg_store
    finally:
        await pg_store.close()


async def count_rows(url: str, query: str, *params: object) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(query, params)  # type: ignore[arg-type]
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


# ------------------------------------------------------------------ state


async def test_flush_load_roundtrip_exact(store: PostgresStore) -> None:
    tenant = unique()
    snaps = [
        snapshot("r1", ("a",), position=4),
        snapshot("r1", (None, "b"), position=4, last_seen_at=0.1 + 0.2),
        snapshot("r2", (), position=4, counts=(2**31 - 1, 0, 0, 0), last_seen_at=1e-300),
        snapshot("r2", ("firing",), position=4, status=GroupStatus.FIRING,
                 last_seen_at=math.nextafter(1.7e9, math.inf)),
    ]
    point = checkpoint(4)

    await store.flush(tenant, "g", FlushBatch(snaps, [], point))
    loaded = await store.load(tenant, "g")

    assert loaded.checkpoint == point
    assert sorted(loaded.groups) == ["r1", "r2"]
    stored = [s for group in loaded.groups.values() for s in group]
    assert sorted(stored, key=repr) == sorted(snaps, key=repr)


async def test_load_empty_scope(store: PostgresStore) -> None:
    loaded = await store.load(unique(), "g")

    assert loaded.groups == {}
    assert loaded.checkpoint is None


async def test_flush_position_guard(store: PostgresStore) -> None:
    tenant = unique()
    newer = snapshot(position=12, counts=(9, 9, 9, 9))
    await store.record_transitions(tenant, "g", [transition(position=12)])
    await store.flush(tenant, "g", FlushBatch([newer], [], checkpoint(12)))

    await store.flush(tenant, "g", FlushBatch([snapshot(position=5)], [], checkpoint(5)))
    kept = (await store.load(tenant, "g")).groups["r1"]
    await store.flush(tenant, "g", FlushBatch([snapshot(position=14)], [], checkpoint(14)))
    replaced = (await store.load(tenant, "g")).groups["r1"]

    assert kept == [newer]
    assert replaced == [snapshot(position=14)]


async def test_flush_deletes_forgotten(store: PostgresStore) -> None:
    tenant = unique()
    old = snapshot("r1", ("old",), position=4)
    ahead = snapshot("r1", ("ahead",), position=30)
    await store.flush(tenant, "g", FlushBatch([old, ahead], [], checkpoint(4)))

    forgotten = [("r1", ("old",)), ("r1", ("ahead",)), ("r1", ("never",))]
    await store.flush(tenant, "g", FlushBatch([], forgotten, checkpoint(20)))
    loaded = await store.load(tenant, "g")

    assert loaded.groups == {"r1": [ahead]}
    assert loaded.checkpoint == checkpoint(20)


async def test_flush_deletes_obsolete_at_any_position(store: PostgresStore) -> None:
    tenant = unique()
    ahead = snapshot("r1", ("ahead",), position=30)
    behind = snapshot("r1", ("behind",), position=4)
    await store.flush(tenant, "g", FlushBatch([ahead, behind], [], checkpoint(4)))

    obsolete = [("r1", ("ahead",)), ("r1", ("never",))]
    await store.flush(tenant, "g", FlushBatch([], [], checkpoint(20), obsolete))
    loaded = await store.load(tenant, "g")

    assert loaded.groups == {"r1": [behind]}
    assert loaded.checkpoint == checkpoint(20)


async def test_flush_duplicate_group_keeps_latest(store: PostgresStore) -> None:
    tenant = unique()
    first = snapshot(position=6, counts=(1, 1, 1, 1))
    second = snapshot(position=6, counts=(2, 2, 2, 2))
    older = snapshot(position=2, counts=(3, 3, 3, 3))

    await store.flush(tenant, "g", FlushBatch([first, second, older], [], checkpoint(6)))

    assert (await store.load(tenant, "g")).groups == {"r1": [second]}


async def test_tenant_isolation(store: PostgresStore) -> None:
    tenant_a, tenant_b = unique("a"), unique("b")
    await store.flush(tenant_a, "g", FlushBatch([snapshot(position=1)], [], checkpoint(2)))
    await store.flush(tenant_b, "g", FlushBatch([snapshot(position=3)], [], checkpoint(4)))
    (id_a,) = await store.record_transitions(tenant_a, "g", [transition()])
    (id_b,) = await store.record_transitions(tenant_b, "g", [transition()])

    await store.flush(tenant_a, "g", FlushBatch([], [("r1", ("10.0.0.1",))], checkpoint(100)))
    await store.mark_delivered(tenant_a, [id_b])

    assert (await store.load(tenant_a, "g")).groups == {}
    assert (await store.load(tenant_b, "g")).groups["r1"][0].position == 7
    assert [r.id for r in await store.undelivered(tenant_b, "g")] == [id_b]
    assert [r.id for r in await store.history(tenant_a)] == [id_a]
    assert id_a != id_b


# ------------------------------------------------------------------ transitions


async def test_record_transitions_idempotent(store: PostgresStore) -> None:
    tenant = unique()
    batch = [transition(value="a"), transition(value="b", kind=TransitionKind.RECOVERED)]

    first = await store.record_transitions(tenant, "g", batch)
    again = await store.record_transitions(tenant, "g", [batch[1], batch[0], batch[1]])
    rows = await store.history(tenant)

    assert again == [first[1], first[0], first[1]]
    assert len(rows) == 2
    assert {r.group["source.ip"] for r in rows} == {"a", "b"}
    assert rows[0].details["captures"] == {"user": "root"}
    assert rows[0].at == 1_700_000_000.25
    assert (await store.load(tenant, "g")).groups["r1"][0].status is GroupStatus.FIRING


async def test_record_transitions_atomic(
    pg_database_factory: Callable[[], str],
) -> None:
    url = pg_database_factory()
    await migrate(url, history_backend="partitioned")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("ALTER TABLE rule_state ADD CONSTRAINT no_boom CHECK (rule_id <> 'boom')")
    pg_store = PostgresStore(url, pool_max=1)
    await pg_store.open()
    try:
        with pytest.raises(StoreError, match="record_transitions failed"):
            await pg_store.record_transitions("t", "g", [transition("ok"), transition("boom")])
    finally:
        await pg_store.close()

    assert await count_rows(url, "SELECT count(*) FROM evaluation_history") == 0
    assert await count_rows(url, "SELECT count(*) FROM rule_state") == 0


async def test_outbox_mark_delivered(store: PostgresStore) -> None:
    tenant = unique()
    ids = await store.record_transitions(
        tenant, "g", [transition(value=str(i), at=1.7e9 + i) for i in range(3)]
    )

    await store.mark_delivered(tenant, [ids[0], ids[2], 10**15])
    pending = await store.undelivered(tenant, "g")

    assert [r.id for r in pending] == [ids[1]]
    assert pending[0].delivered is False
    assert [r.delivered for r in await store.history(tenant)] == [True, False, True]


async def test_outbox_pages_after_id(store: PostgresStore) -> None:
    tenant = unique()
    ids = await store.record_transitions(
        tenant, "g", [transition(value=str(i), at=1.7e9 + i) for i in range(5)]
    )
    await store.mark_delivered(tenant, [ids[2]])

    first = await store.undelivered(tenant, "g", limit=2)
    second = await store.undelivered(tenant, "g", after_id=first[-1].id, limit=2)
    last = await store.undelivered(tenant, "g", after_id=second[-1].id, limit=2)

    assert [r.id for r in first] == ids[:2]
    assert [r.id for r in second] == ids[3:]
    assert last == []


async def test_history_filters(store: PostgresStore) -> None:
    tenant = unique()
    await store.record_transitions(
        tenant,
        "g",
        [
            transition("r1", "a", at=100.0),
            transition("r2", "b", at=200.0, kind=TransitionKind.RECOVERED),
            transition("r1", "c", at=300.5),
        ],
    )

    by_rule = await store.history(tenant, rule_id="r1")
    by_kind = await store.history(tenant, kind="recovered")
    by_time = await store.history(tenant, since_s=200.0, until_s=300.5)
    limited = await store.history(tenant, limit=1)

    assert [r.at for r in by_rule] == [100.0, 300.5]
    assert [r.rule_id for r in by_kind] == ["r2"]
    assert [r.at for r in by_time] == [200.0]
    assert [r.at for r in limited] == [100.0]
    with pytest.raises(ValueError, match="limit"):
        await store.history(tenant, limit=0)


# ------------------------------------------------------------------ hostile input


@pytest.mark.parametrize("text", HOSTILE, ids=["quotes", "injection", "unicode", "10kb", "braces"])
async def test_hostile_strings_roundtrip(store: PostgresStore, text: str) -> None:
    tenant = text + unique()
    group = text
    snap = snapshot(text, (text, None), position=2)
    trans = transition(text, text, captures={text: text})

    await store.flush(tenant, group, FlushBatch([snap], [], checkpoint(2, source=text)))
    (history_id,) = await store.record_transitions(tenant, group, [trans])
    await store.mark_delivered(tenant, [history_id])
    loaded = await store.load(tenant, group)
    records = await store.history(tenant, rule_id=text)
    await store.sync_rules(tenant, group, [(text, {"id": text}, True)])
    forgotten = [(text, (text, None)), (text, (text,))]
    await store.flush(tenant, group, FlushBatch([], forgotten, checkpoint(10)))

    assert snap in loaded.groups[text]
    assert len(loaded.groups[text]) == 2
    assert loaded.checkpoint is not None and loaded.checkpoint.source == text
    assert records[0].group == {"source.ip": text}
    assert records[0].details["captures"] == {text: text}
    assert records[0].delivered is True
    assert (await store.load(tenant, group)).groups == {}


def store_url(pg_store: PostgresStore) -> str:
    return pg_store._url


@pytest.mark.parametrize(
    "call",
    [
        "load_tenant",
        "flush_rule",
        "flush_key",
        "flush_source",
        "forgotten_key",
        "transition_value",
        "transition_capture",
        "history_rule",
        "sync_rule",
        "ensure_tenant",
    ],
)
async def test_nul_rejected(store: PostgresStore, call: str) -> None:
    bad = "a\x00b"
    calls = {
        "load_tenant": lambda: store.load(bad, "g"),
        "flush_rule": lambda: store.flush("t", "g", FlushBatch([snapshot(bad)], [], checkpoint())),
        "flush_key": lambda: store.flush("t", "g", FlushBatch([snapshot(key=(bad,))], [], checkpoint())),
        "flush_source": lambda: store.flush("t", "g", FlushBatch([], [], checkpoint(source=bad))),
        "forgotten_key": lambda: store.flush("t", "g", FlushBatch([], [("r", (bad,))], checkpoint())),
        "transition_value": lambda: store.record_transitions("t", "g", [transition(value=bad)]),
        "transition_capture": lambda: store.record_transitions(
            "t", "g", [transition(captures={"x": bad})]
        ),
        "history_rule": lambda: store.history("t", rule_id=bad),
        "sync_rule": lambda: store.sync_rules("t", "g", [("r", {"x": bad}, True)]),
        "ensure_tenant": lambda: store.ensure_tenant(bad),
    }

    with pytest.raises(StoreError, match="NUL"):
        await calls[call]()


@pytest.mark.parametrize(
    ("call", "field", "value"),
    [
        ("token_name", "token name", "ci\x00"),
        ("tenant_surrogate", "tenant", "t\ud800"),
        ("history_limit", "limit", 0),
        ("cursor_id", "cursor id", 2**64 - 1),
        ("cursor_at", "cursor at", math.inf),
    ],
)
async def test_invalid_value_error_names_value(
    store: PostgresStore, call: str, field: str, value: object
) -> None:
    calls = {
        "token_name": lambda: store.insert_api_token(
            unique(), "0123456789abcdef", "ci\x00", b"salt", b"digest"
        ),
        "tenant_surrogate": lambda: store.tenant_flag("t\ud800"),
        "history_limit": lambda: store.history_page(unique(), limit=0),
        "cursor_id": lambda: store.history_page(unique(), after=(1.0, 2**64 - 1)),
        "cursor_at": lambda: store.history_page(unique(), after=(math.inf, 1)),
    }

    with pytest.raises(InvalidValueError) as raised:
        await calls[call]()

    assert isinstance(raised.value, StoreError)
    assert raised.value.field == field
    assert raised.value.value == value


async def test_closed_store_error_not_invalid_value(pg_store_url: str) -> None:
    pg_store = PostgresStore(pg_store_url)

    with pytest.raises(StoreError) as raised:
        await pg_store.tenant_flag("t")

    assert not isinstance(raised.value, InvalidValueError)


async def test_invalid_count_rejected(store: PostgresStore) -> None:
    with pytest.raises(StoreError, match="bucket count 2147483648"):
        await store.flush(
            "t", "g", FlushBatch([snapshot(counts=(2**31, 0, 0, 0))], [], checkpoint())
        )


async def test_bool_count_rejected(store: PostgresStore) -> None:
    with pytest.raises(StoreError, match="bucket count True"):
        await store.flush(
            "t", "g", FlushBatch([snapshot(counts=(True, 0, 0, 0))], [], checkpoint())
        )


async def test_flush_count_lengths_roundtrip(store: PostgresStore) -> None:
    tenant = unique()
    snaps = [
        dataclasses.replace(snapshot("r1", (str(n),), position=3, counts=tuple(range(n))),
                            last_fired_at=1_700_000_000.5 if n % 2 else None)
        for n in (1, 4, 60, 2, 7)
    ]

    await store.flush(tenant, "g", FlushBatch(snaps, [], checkpoint(3)))
    loaded = await store.load(tenant, "g")

    assert sorted(loaded.groups["r1"], key=repr) == sorted(snaps, key=repr)


async def test_flush_int_subclass_stored(store: PostgresStore) -> None:
    class Bucket(enum.IntEnum):
        FIVE = 5

    tenant = unique()
    snaps = [snapshot(position=2, counts=(Bucket.FIVE, 0, 1, 2))]

    await store.flush(tenant, "g", FlushBatch(snaps, [], checkpoint(2)))
    (stored,) = (await store.load(tenant, "g")).groups["r1"]

    assert stored.counts == (5, 0, 1, 2)
    assert type(stored.counts[0]) is int


async def test_closed_store_raises(pg_store_url: str) -> None:
    pg_store = PostgresStore(pg_store_url)

    with pytest.raises(StoreError, match="call open"):
        await pg_store.load("t", "g")


async def test_unmigrated_database_raises(pg_url: str) -> None:
    pg_store = PostgresStore(pg_url)

    with pytest.raises(StoreError, match="alertwarden migrate"):
        await pg_store.open()


# ------------------------------------------------------------------ tenants, rules, sweep


async def test_sync_rules_disables_missing(store: PostgresStore) -> None:
    tenant = unique()
    first = await store.sync_rules(tenant, "g", [("r1", {"t": 1}, True), ("r2", {"t": 2}, True)])
    same = await store.sync_rules(tenant, "g", [("r1", {"t": 1}, True), ("r2", {"t": 2}, True)])
    changed = await store.sync_rules(tenant, "g", [("r1", {"t": 9}, True)])

    rows = await _rule_rows(store_url(store), tenant)

    assert (first.inserted, first.updated, first.disabled) == (2, 0, 0)
    assert (same.inserted, same.updated, same.disabled) == (0, 0, 0)
    assert (changed.inserted, changed.updated, changed.disabled) == (0, 1, 1)
    assert rows == [("r1", True, 2, {"t": 9}), ("r2", False, 2, {"t": 2})]


async def test_rule_version_kept_across_delete(store: PostgresStore) -> None:
    tenant = unique()
    await store.create_tenant(tenant)
    for threshold in (1, 2):
        await store.put_api_rule(tenant, "r1", "g", {"threshold": threshold}, True)
    await store.delete_rule_definition(tenant, "r1")
    await store.sync_rules(tenant, "g", [("r1", {"threshold": 3}, True)])
    await store.delete_rule_definition(tenant, "r1", expected_version=3)

    recreated = await store.put_api_rule(tenant, "r1", "g", {"threshold": 4}, True)

    assert recreated == 4
    assert await _rule_rows(store_url(store), tenant) == [("r1", True, 4, {"threshold": 4})]


async def test_rule_version_concurrent_delete_create(store: PostgresStore) -> None:
    tenant = unique()
    await store.create_tenant(tenant)
    seen = [await store.put_api_rule(tenant, "r1", "g", {"round": 0}, True)]

    for round_number in range(1, 21):
        _, created = await asyncio.gather(
            store.delete_rule_definition(tenant, "r1"),
            store.put_api_rule(tenant, "r1", "g", {"round": round_number}, True),
        )
        seen.append(created)

    # Whichever ran first, the creation continues from the version before it.
    assert seen == sorted(set(seen))


async def _rule_rows(url: str, tenant: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT rule_id, enabled, version, definition FROM rule_definitions"
            " WHERE tenant_id = %s ORDER BY rule_id",
            (tenant,),
        )
        return list(await cursor.fetchall())


async def test_sweep_removes_unkept_state(store: PostgresStore) -> None:
    kept, flag_off, unmanaged = unique("kept"), unique("off"), unique("free")
    for tenant in (kept, flag_off, unmanaged):
        batch = [snapshot("r1", ("a",), position=1), snapshot("gone", ("a",), position=1)]
        await store.flush(tenant, "g", FlushBatch(batch, [], checkpoint(2)))
        other = [snapshot("r3", ("a",), position=1)]
        await store.flush(tenant, "off-group", FlushBatch(other, [], checkpoint(2)))
    for tenant in (kept, flag_off):
        await store.set_feature(tenant, tenant == kept)
        await store.sync_rules(tenant, "g", [("r1", {}, True), ("gone", {}, False)])
        await store.sync_rules(tenant, "off-group", [("r3", {}, False)])

    report = await store.sweep()
    kept_g = await store.load(kept, "g")
    kept_off = await store.load(kept, "off-group")
    off_g = await store.load(flag_off, "g")
    free_g = await store.load(unmanaged, "g")

    assert report.rule_state_rows >= 5
    assert report.checkpoint_rows >= 3
    assert sorted(kept_g.groups) == ["r1"]
    assert kept_g.checkpoint is not None
    assert kept_off.groups == {}
    assert kept_off.checkpoint is None
    assert off_g.groups == {}
    assert off_g.checkpoint is None
    assert sorted(free_g.groups) == ["gone", "r1"]
    assert await store.ensure_tenant(kept) is True
    assert await store.ensure_tenant(flag_off) is False


# ------------------------------------------------------------------ partitions


def day_start(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


async def _partitions(url: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'evaluation_history'::regclass ORDER BY 1"
        )
        return [name for (name,) in await cursor.fetchall()]


async def test_maintain_creates_and_drops(pg_database_factory: Callable[[], str]) -> None:
    url = pg_database_factory()
    await migrate(url, history_backend="partitioned", retention_s=2 * 86400)
    pg_store = PostgresStore(url, pool_max=1, partitions_ahead_days=2)
    await pg_store.open()
    try:
        first = await pg_store.maintain(day_start("2024-03-01") + 3600)
        await pg_store.record_transitions("t", "g", [transition(at=day_start("2024-03-02") + 5)])
        second = await pg_store.maintain(day_start("2024-03-05") + 3600)
    finally:
        await pg_store.close()

    assert first.created == (
        "evaluation_history_20240301",
        "evaluation_history_20240302",
        "evaluation_history_20240303",
    )
    assert first.dropped == ()
    assert second.created == (
        "evaluation_history_20240305",
        "evaluation_history_20240306",
        "evaluation_history_20240307",
    )
    assert second.dropped == ("evaluation_history_20240301", "evaluation_history_20240302")
    assert second.dropped_rows == 1
    assert await _partitions(url) == [
        "evaluation_history_20240303",
        "evaluation_history_20240305",
        "evaluation_history_20240306",
        "evaluation_history_20240307",
    ]


async def test_old_row_gets_partition(store: PostgresStore) -> None:
    tenant = unique()
    at = day_start("2001-09-09") + 1.5

    (history_id,) = await store.record_transitions(tenant, "g", [transition(at=at)])

    assert "evaluation_history_20010909" in await _partitions(store_url(store))
    assert [r.id for r in await store.history(tenant)] == [history_id]


# ------------------------------------------------------------------ crash safety

_FLUSH_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from alertwarden.engine.records import Checkpoint, FlushBatch, GroupSnapshot, GroupStatus
    from alertwarden.store.postgres import PostgresStore

    async def main(url, rows, generation):
        store = PostgresStore(url, pool_max=1)
        await store.open()
        while True:
            generation += 1
            snaps = [
                GroupSnapshot("r", (str(i),), 40, 10, (generation,) * 4, generation, 1.0,
                              None, None, GroupStatus.OK, False, generation)
                for i in range(rows)
            ]
            point = Checkpoint("s", generation, generation, 1.0, {})
            await store.flush("crash", "g", FlushBatch(snaps, [], point))
            print(generation, flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
)


@pytest.mark.slow
async def test_kill_during_flush_atomic(pg_database_factory: Callable[[], str]) -> None:
    url = pg_database_factory()
    await migrate(url, history_backend="partitioned")
    rows = 20_000
    rng = random.Random(7)
    # Each child continues from the stored generation. A child that started again at 1 would
    # have its older snapshots rejected by the position guard, so rows and checkpoint would
    # differ without any torn flush.
    checkpoint_position = 0
    for _ in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", _FLUSH_CHILD, url, str(rows), str(checkpoint_position)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        child.stdout.readline()  # one flush done, so a snapshot exists
        time.sleep(rng.uniform(0.0, 0.6))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        await asyncio.sleep(0.2)  # let the server notice the dropped connection

        async with await psycopg.AsyncConnection.connect(url) as conn:
            cursor = await conn.execute(
                "SELECT min(counts[1]), max(counts[4]), min(position), max(position), count(*)"
                " FROM rule_state WHERE tenant_id = 'crash'"
            )
            low_count, high_count, low_position, high_position, total = await cursor.fetchone()  # type: ignore[misc]
            cursor = await conn.execute(
                "SELECT position FROM input_checkpoints WHERE tenant_id = 'crash'"
            )
            (checkpoint_position,) = await cursor.fetchone()  # type: ignore[misc]

        assert total == rows
        assert low_position == high_position == checkpoint_position
        assert low_count == high_count == checkpoint_position


# ------------------------------------------------------------------ eight days of churn


class CountingSink:
    def __init__(self) -> None:
        self.received = 0

    async def send(self, notification: Notification) -> None:
        self.received += 1

    async def close(self) -> None:
        return None


EIGHT_DAY_RULE = """
- id: churn
  threshold: 3
  window: 2h
  bucket: 10m
  group_by: [user]
"""


async def run_eight_days(
    pg_store: PostgresStore, *, keys: int = 100_000, run_jobs: Callable[[float], object] | None = None
) -> tuple[Evaluator, float]:
    """Drive the evaluator over 8 days ending now with `keys` churning keys; return it and now."""
    rules = load_rules_text(EIGHT_DAY_RULE, "churn.yaml")
    evaluator = Evaluator(rules, tenant="churn", rule_group="g")
    pipeline = RuleGroupPipeline(
        evaluator, rules, pg_store, CountingSink(), source="gen", history_retention_s=7 * 86400
    )
    await pipeline.start(lambda source, offset: (offset, None))

    end_s = math.floor(time.time())
    start_s = end_s - 8 * 86400
    step_s = 8 * 86400 / keys
    offset = 0
    next_hour = start_s
    for i in range(keys):
        at = start_s + i * step_s
        if at >= next_hour:
            if run_jobs is not None:
                await run_jobs(at)  # type: ignore[misc]
            else:
                await pg_store.maintain(at)
            next_hour += 3600
        # Every 50th key reaches the threshold, the rest stop at two events.
        for repeat in range(3 if i % 50 == 0 else 2):
            event = Event(at + repeat, {"user": f"u{i}"}, Signal.LOGS, None)
            await pipeline.process(event, offset)
            offset += 1
    await pipeline.tick(end_s, offset)
    await pipeline.finish(offset)
    return evaluator, float(end_s)


@pytest.mark.slow
async def test_eight_days_partitioned(pg_database_factory: Callable[[], str]) -> None:
    url = pg_database_factory()
    await migrate(url, history_backend="partitioned")
    pg_store = PostgresStore(url, pool_max=2, maintain_interval_s=math.inf)
    await pg_store.open()
    try:
        evaluator, end_s = await run_eight_days(pg_store)
        await pg_store.maintain(end_s)
        stored = await pg_store.load("churn", "g")
    finally:
        await pg_store.close()

    live = evaluator.group_count("churn")
    stored_rows = await count_rows(url, "SELECT count(*) FROM rule_state")
    oldest = await count_rows(url, "SELECT coalesce(min(at_s), 0)::bigint FROM evaluation_history")
    history_rows = await count_rows(url, "SELECT count(*) FROM evaluation_history")

    assert stored_rows == live
    assert sum(len(v) for v in stored.groups.values()) == live
    # About 520 new keys an hour stay for the 2 h window, far below the 100,000 seen.
    assert 0 < live < 5000
    assert oldest >= end_s - 7 * 86400 - 86400
    assert history_rows > 0
    assert len(await _partitions(url)) <= 8 + 3


# ------------------------------------------------------------------ TimescaleDB path
# The PGlite server of timescale_url serves one connection at a time and hands its session to
# the next client, so the store gets one connection without server-side prepared statements,
# and the checks run after the store closed.


def timescale_store(url: str) -> PostgresStore:
    return PostgresStore(url, pool_min=1, pool_max=1, prepare_threshold=None)


async def test_timescale_roundtrip(timescale_store_url: str) -> None:
    tenant = unique()
    snaps = [snapshot("r1", ("a",), position=4), snapshot("r2", (None,), position=4)]
    pg_store = timescale_store(timescale_store_url)
    await pg_store.open()
    try:
        await pg_store.flush(tenant, "g", FlushBatch(snaps, [], checkpoint(4)))
        first = await pg_store.record_transitions(tenant, "g", [transition(position=9)])
        again = await pg_store.record_transitions(tenant, "g", [transition(position=9)])
        await pg_store.mark_delivered(tenant, first)
        loaded = await pg_store.load(tenant, "g")
        records = await pg_store.history(tenant)
        pruned = await pg_store.prune_history(tenant, 0.0)
    finally:
        await pg_store.close()

    assert again == first
    assert loaded.checkpoint == checkpoint(4)
    assert loaded.groups["r2"] == [snaps[1]]
    assert loaded.groups["r1"][0].position == 9
    assert [(r.id, r.delivered) for r in records] == [(first[0], True)]
    assert pruned == 0


@pytest.mark.slow
async def test_eight_days_timescale(timescale_store_url: str) -> None:
    pg_store = timescale_store(timescale_store_url)
    await pg_store.open()

    async def run_jobs(at_s: float) -> None:
        await pg_store.run_history_jobs()

    try:
        evaluator, end_s = await run_eight_days(pg_store, run_jobs=run_jobs)
        job_ids = await pg_store.run_history_jobs()
    finally:
        await pg_store.close()

    async with await psycopg.AsyncConnection.connect(
        timescale_store_url, prepare_threshold=None
    ) as conn:
        cursor = await conn.execute(
            "SELECT (SELECT count(*) FROM rule_state WHERE tenant_id = 'churn'),"
            " (SELECT coalesce(min(at_s), 0) FROM evaluation_history WHERE tenant_id = 'churn'),"
            " (SELECT count(*) FROM evaluation_history WHERE tenant_id = 'churn'),"
            " (SELECT count(*) FROM timescaledb_information.chunks"
            "  WHERE hypertable_name = 'evaluation_history' AND is_compressed)"
        )
        stored_rows, oldest, history_rows, compressed = await cursor.fetchone()  # type: ignore[misc]

    assert len(job_ids) == 2
    assert stored_rows == evaluator.group_count("churn")
    assert history_rows > 0
    assert oldest >= end_s - 7 * 86400 - 86400
    assert compressed > 0


async def test_ping_times_out_without_connection(pg_store_url: str) -> None:
    pg_store = PostgresStore(pg_store_url, pool_max=1, maintain_interval_s=0)
    await pg_store.open()
    try:
        # The only connection is busy, as every one is while the server does not respond.
        async with pg_store._connection("hold"):
            with pytest.raises(StoreError, match=r"PostgreSQL did not respond within 0\.2 s"):
                await pg_store.ping(timeout_s=0.2)
        await pg_store.ping()
    finally:
        await pg_store.close()
