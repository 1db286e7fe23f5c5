"""Tests of the SQLite state store against real database files."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alertwarden.engine.records import (
    Checkpoint,
    FlushBatch,
    GroupKey,
    GroupSnapshot,
    GroupStatus,
    Transition,
    TransitionKind,
)
from alertwarden.errors import StoreError
from alertwarden.store import sqlite as sqlite_store
from alertwarden.store.base import StoredState
from alertwarden.store.sqlite import SQLiteStore
from alertwarden.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

TENANT = "acme"
RULE_GROUP = "auth"


def snapshot(
    rule_id: str = "ssh-brute-force",
    key: GroupKey = ("10.0.0.1",),
    *,
    position: int = 10,
    counts: tuple[int, ...] = (0, 2, 5),
    head_bucket: int = 172_800,
    last_seen_at: float = 1_700_000_000.125,
    last_fired_at: float | None = None,
    last_notified_at: float | None = None,
    status: GroupStatus = GroupStatus.OK,
    suppressed: bool = False,
) -> GroupSnapshot:
    return GroupSnapshot(
        rule_id=rule_id,
        key=key,
        window_s=30,
        bucket_s=10,
        counts=counts,
        head_bucket=head_bucket,
        last_seen_at=last_seen_at,
        last_fired_at=last_fired_at,
        last_notified_at=last_notified_at,
        status=status,
        suppressed=suppressed,
        position=position,
    )


def transition(
    state: GroupSnapshot,
    *,
    kind: TransitionKind = TransitionKind.FIRED,
    at: float = 1_700_000_000.5,
    fields: tuple[str, ...] | None = None,
) -> Transition:
    names = fields if fields is not None else tuple(f"field{i}" for i in range(len(state.key)))
    return Transition(
        at=at,
        rule_id=state.rule_id,
        group=tuple(zip(names, state.key, strict=True)),
        kind=kind,
        count=sum(state.counts),
        threshold=5,
        window_s=state.window_s,
        snapshot=state,
        captures={"user": "root"},
    )


def checkpoint(position: int = 100, *, source: str = "dev=2049,ino=77", now: float | None = 1.5):
    return Checkpoint(
        source=source,
        offset=position * 64,
        position=position,
        now=now,
        ticked={"ssh-brute-force": 56_666_666},
    )


def by_identity(state: StoredState) -> dict[tuple[str, GroupKey], GroupSnapshot]:
    return {(s.rule_id, s.key): s for snapshots in state.groups.values() for s in snapshots}


def raw_connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.sqlite"


@pytest.fixture
async def store(db_path: Path):
    opened = SQLiteStore(db_path)
    await opened.open()
    yield opened
    await opened.close()


# Schema and migrations.


async def test_open_creates_schema(store: SQLiteStore, db_path: Path) -> None:
    conn = raw_connect(db_path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        journal_mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    assert version == SCHEMA_VERSION
    assert {"groups", "checkpoints", "history"} <= tables
    assert {"history_tenant_at", "history_tenant_rule_at"} <= tables
    assert journal_mode == "wal"


async def test_reopen_keeps_data_and_version(store: SQLiteStore, db_path: Path) -> None:
    state = snapshot()
    await store.flush(TENANT, RULE_GROUP, FlushBatch([state], [], checkpoint()))
    await store.open()  # a second open on the same instance does nothing
    await store.close()

    for _ in range(2):
        reopened = SQLiteStore(db_path)
        await reopened.open()
        loaded = await reopened.load(TENANT, RULE_GROUP)
        await reopened.close()
        assert loaded.groups == {state.rule_id: [state]}
        assert loaded.checkpoint == checkpoint()

    conn = raw_connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


async def test_open_applies_new_step_once(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = SQLiteStore(db_path)
    await first.open()
    await first.close()

    extended = (*MIGRATIONS, ("CREATE TABLE notes (tenant TEXT NOT NULL, body TEXT)",))
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", extended)
    monkeypatch.setattr(sqlite_store, "SCHEMA_VERSION", len(extended))
    # A second run of the new step would fail with "table notes already exists".
    for _ in range(2):
        upgraded = SQLiteStore(db_path)
        await upgraded.open()
        await upgraded.close()

    conn = raw_connect(db_path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert version == len(extended)
    assert "notes" in tables


async def test_failed_migration_rolls_back(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = (*MIGRATIONS, ("CREATE TABLE notes (body TEXT)", "CREATE TABLE groups (x INT)"))
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", broken)
    monkeypatch.setattr(sqlite_store, "SCHEMA_VERSION", len(broken))

    with pytest.raises(StoreError, match="migrate failed.*already exists"):
        await SQLiteStore(db_path).open()

    conn = raw_connect(db_path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert version == 0
    assert "notes" not in tables
    assert "history" not in tables


async def test_open_rejects_newer_schema(db_path: Path) -> None:
    conn = raw_connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()

    newer = SQLiteStore(db_path)
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        await newer.open()
    with pytest.raises(StoreError, match="not open"):
        await newer.load(TENANT, RULE_GROUP)


async def test_open_missing_directory(tmp_path: Path) -> None:
    missing = SQLiteStore(tmp_path / "absent" / "state.sqlite")
    with pytest.raises(StoreError, match="open failed") as raised:
        await missing.open()
    assert isinstance(raised.value.__cause__, sqlite3.Error)


async def test_memory_store_round_trip() -> None:
    memory = SQLiteStore(":memory:")
    await memory.open()
    await memory.flush(TENANT, RULE_GROUP, FlushBatch([snapshot()], [], checkpoint()))
    loaded = await memory.load(TENANT, RULE_GROUP)
    await memory.close()
    assert loaded.groups == {"ssh-brute-force": [snapshot()]}


async def test_closed_store_rejects_calls(store: SQLiteStore) -> None:
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="call open"):
        await store.flush(TENANT, RULE_GROUP, FlushBatch([], [], checkpoint()))


# Flush and load.


async def test_load_empty(store: SQLiteStore) -> None:
    loaded = await store.load(TENANT, RULE_GROUP)
    assert loaded.groups == {}
    assert loaded.checkpoint is None


async def test_flush_load_round_trip(store: SQLiteStore) -> None:
    snapshots = [
        snapshot("ssh-brute-force", ("10.0.0.1",)),
        snapshot("ssh-brute-force", (None,), counts=()),
        snapshot(
            "sudo-failures",
            ("web-1", None, "root"),
            counts=(4_294_967_295, 0, 1),
            last_seen_at=1_700_000_123.456789,
            last_fired_at=1_700_000_100.25,
            last_notified_at=1_700_000_110.75,
            status=GroupStatus.FIRING,
            suppressed=True,
            head_bucket=-3,
        ),
        snapshot("sudo-failures", ("web-1", "", "root"), position=2**62),
        snapshot("empty-key", ()),
    ]
    await store.flush(TENANT, RULE_GROUP, FlushBatch(snapshots, [], checkpoint()))

    loaded = await store.load(TENANT, RULE_GROUP)

    assert set(loaded.groups) == {"ssh-brute-force", "sudo-failures", "empty-key"}
    assert by_identity(loaded) == {(s.rule_id, s.key): s for s in snapshots}
    for rule_id, group in loaded.groups.items():
        assert all(s.rule_id == rule_id for s in group)
    firing = by_identity(loaded)[("sudo-failures", ("web-1", None, "root"))]
    assert type(firing.counts) is tuple
    assert type(firing.key) is tuple
    assert firing.status is GroupStatus.FIRING
    assert firing.suppressed is True
    assert loaded.checkpoint == checkpoint()


async def test_checkpoint_round_trip(store: SQLiteStore) -> None:
    first = Checkpoint(source="a", offset=0, position=0, now=None, ticked={})
    await store.flush(TENANT, RULE_GROUP, FlushBatch([], [], first))
    assert (await store.load(TENANT, RULE_GROUP)).checkpoint == first

    second = Checkpoint(
        source="dev=1,ino=2,sha=ab",
        offset=4096,
        position=8193,
        now=17.125,
        ticked={"r": 3, "s": -1},
    )
    await store.flush(TENANT, RULE_GROUP, FlushBatch([], [], second))
    loaded = await store.load(TENANT, RULE_GROUP)
    assert loaded.checkpoint == second
    assert loaded.groups == {}


async def test_flush_deletes_forgotten(store: SQLiteStore) -> None:
    kept = snapshot(key=("kept",))
    dropped = snapshot(key=("dropped",))
    other_rule = snapshot("other-rule", ("dropped",))
    first_batch = FlushBatch([kept, dropped, other_rule], [], checkpoint())
    await store.flush(TENANT, RULE_GROUP, first_batch)

    forgotten = [("ssh-brute-force", ("dropped",)), ("no-such-rule", ("x",))]
    await store.flush(TENANT, RULE_GROUP, FlushBatch([], forgotten, checkpoint(101)))

    loaded = by_identity(await store.load(TENANT, RULE_GROUP))
    assert set(loaded) == {("ssh-brute-force", ("kept",)), ("other-rule", ("dropped",))}


async def test_flush_never_lowers_position(store: SQLiteStore) -> None:
    ahead = snapshot(position=50, counts=(9, 9, 9), status=GroupStatus.FIRING)
    await store.record_transitions(TENANT, RULE_GROUP, [transition(ahead)])

    stale = snapshot(position=40, counts=(1, 1, 1))
    await store.flush(TENANT, RULE_GROUP, FlushBatch([stale], [], checkpoint(40)))
    assert by_identity(await store.load(TENANT, RULE_GROUP))[(ahead.rule_id, ahead.key)] == ahead

    same_step = snapshot(position=50, counts=(9, 9, 8), status=GroupStatus.FIRING)
    await store.flush(TENANT, RULE_GROUP, FlushBatch([same_step], [], checkpoint(50)))
    loaded = by_identity(await store.load(TENANT, RULE_GROUP))
    assert loaded[(ahead.rule_id, ahead.key)] == same_step

    newer = snapshot(position=60, counts=(0, 0, 0))
    await store.flush(TENANT, RULE_GROUP, FlushBatch([newer], [], checkpoint(60)))
    loaded_state = await store.load(TENANT, RULE_GROUP)
    assert by_identity(loaded_state)[(ahead.rule_id, ahead.key)] == newer
    assert loaded_state.checkpoint == checkpoint(60)


async def test_forget_skips_newer_row(store: SQLiteStore) -> None:
    ahead = snapshot(position=50)
    await store.record_transitions(TENANT, RULE_GROUP, [transition(ahead)])

    await store.flush(
        TENANT, RULE_GROUP, FlushBatch([], [(ahead.rule_id, ahead.key)], checkpoint(49))
    )
    assert by_identity(await store.load(TENANT, RULE_GROUP)) == {(ahead.rule_id, ahead.key): ahead}

    await store.flush(
        TENANT, RULE_GROUP, FlushBatch([], [(ahead.rule_id, ahead.key)], checkpoint(50))
    )
    assert (await store.load(TENANT, RULE_GROUP)).groups == {}


async def test_flush_failure_keeps_previous(store: SQLiteStore, db_path: Path) -> None:
    before = [snapshot(key=("a",), position=10), snapshot(key=("b",), position=10)]
    await store.flush(TENANT, RULE_GROUP, FlushBatch(before, [], checkpoint(10)))

    # The trigger makes the checkpoint write fail after the group upserts and deletes have run.
    conn = raw_connect(db_path)
    for event in ("INSERT", "UPDATE"):
        conn.execute(
            f"CREATE TRIGGER fail_checkpoint_{event.lower()} BEFORE {event} ON checkpoints"
            " WHEN NEW.source = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned checkpoint'); END"
        )
    conn.close()

    after = [
        snapshot(key=("a",), position=20, counts=(7, 7, 7)),
        snapshot(key=("c",), position=20),
    ]
    failing = FlushBatch(after, [("ssh-brute-force", ("b",))], checkpoint(20, source="poison"))
    with pytest.raises(StoreError, match="poisoned checkpoint") as raised:
        await store.flush(TENANT, RULE_GROUP, failing)
    assert isinstance(raised.value.__cause__, sqlite3.IntegrityError)

    loaded = await store.load(TENANT, RULE_GROUP)
    assert by_identity(loaded) == {(s.rule_id, s.key): s for s in before}
    assert loaded.checkpoint == checkpoint(10)

    # The failed transaction was rolled back, so the next flush commits normally.
    await store.flush(TENANT, RULE_GROUP, FlushBatch(after, [], checkpoint(20)))
    assert (await store.load(TENANT, RULE_GROUP)).checkpoint == checkpoint(20)


# Transitions, outbox and history.


async def test_record_transitions_writes_both(store: SQLiteStore) -> None:
    state = snapshot(key=("10.0.0.9", None), status=GroupStatus.FIRING, position=33)
    fired = transition(state, fields=("src_ip", "user"))

    ids = await store.record_transitions(TENANT, RULE_GROUP, [fired])

    assert len(ids) == 1
    assert by_identity(await store.load(TENANT, RULE_GROUP)) == {(state.rule_id, state.key): state}
    [record] = await store.undelivered(TENANT, RULE_GROUP)
    assert record.id == ids[0]
    assert record.tenant == TENANT
    assert record.rule_group == RULE_GROUP
    assert record.transition_id == fired.transition_id(TENANT, RULE_GROUP)
    assert record.at == fired.at
    assert record.rule_id == "ssh-brute-force"
    assert record.group == {"src_ip": "10.0.0.9", "user": None}
    assert record.kind == "fired"
    assert record.count == 7
    assert record.details == {**fired.as_dict(), "captures": {"user": "root"}}
    assert record.delivered is False


async def test_record_transitions_idempotent(store: SQLiteStore) -> None:
    first = transition(snapshot(key=("a",)), at=100.0)
    second = transition(snapshot(key=("b",)), at=101.0)
    ids = await store.record_transitions(TENANT, RULE_GROUP, [first, second])
    again = await store.record_transitions(TENANT, RULE_GROUP, [second, first])

    assert len(set(ids)) == 2
    assert again == [ids[1], ids[0]]
    assert [r.id for r in await store.history(TENANT)] == ids
    assert await store.record_transitions(TENANT, RULE_GROUP, []) == []


async def test_record_transitions_atomic(store: SQLiteStore, db_path: Path) -> None:
    conn = raw_connect(db_path)
    conn.execute(
        "CREATE TRIGGER fail_history BEFORE INSERT ON history WHEN NEW.rule_id = 'poison'"
        " BEGIN SELECT RAISE(ABORT, 'poisoned history'); END"
    )
    conn.close()

    good = transition(snapshot(key=("a",)))
    bad = transition(snapshot("poison", ("b",)))
    with pytest.raises(StoreError, match="poisoned history"):
        await store.record_transitions(TENANT, RULE_GROUP, [good, bad])

    assert await store.history(TENANT) == []
    assert (await store.load(TENANT, RULE_GROUP)).groups == {}


async def test_record_transitions_rejects_foreign_snapshot(store: SQLiteStore) -> None:
    mismatched = Transition(
        at=1.0,
        rule_id="rule-a",
        group=(("ip", "1.1.1.1"),),
        kind=TransitionKind.FIRED,
        count=5,
        threshold=5,
        window_s=30,
        snapshot=snapshot("rule-b", ("1.1.1.1",)),
    )
    with pytest.raises(StoreError, match="snapshot of another group"):
        await store.record_transitions(TENANT, RULE_GROUP, [mismatched])
    assert await store.history(TENANT) == []


async def test_undelivered_and_mark_delivered(store: SQLiteStore) -> None:
    transitions = [transition(snapshot(key=(str(i),)), at=1000.0 - i) for i in range(4)]
    ids = await store.record_transitions(TENANT, RULE_GROUP, transitions)
    other_group_ids = await store.record_transitions(TENANT, "other", [transition(snapshot())])

    assert [r.id for r in await store.undelivered(TENANT, RULE_GROUP)] == ids

    await store.mark_delivered(TENANT, [ids[0], ids[2]])
    await store.mark_delivered(TENANT, [])
    pending = await store.undelivered(TENANT, RULE_GROUP)
    assert [r.id for r in pending] == [ids[1], ids[3]]
    assert [r.id for r in await store.undelivered(TENANT, "other")] == other_group_ids
    delivered = {r.id: r.delivered for r in await store.history(TENANT)}
    assert delivered[ids[0]] is True
    assert delivered[ids[1]] is False


async def test_undelivered_pages_after_id(store: SQLiteStore) -> None:
    ids = await store.record_transitions(
        TENANT, RULE_GROUP, [transition(snapshot(key=(str(i),)), at=1000.0 + i) for i in range(5)]
    )
    await store.mark_delivered(TENANT, [ids[2]])

    first = await store.undelivered(TENANT, RULE_GROUP, limit=2)
    second = await store.undelivered(TENANT, RULE_GROUP, after_id=first[-1].id, limit=2)
    last = await store.undelivered(TENANT, RULE_GROUP, after_id=second[-1].id, limit=2)

    assert [r.id for r in first] == ids[:2]
    assert [r.id for r in second] == ids[3:]
    assert last == []


async def test_prune_keeps_undelivered_and_recent(store: SQLiteStore) -> None:
    old_delivered = transition(snapshot(key=("a",)), at=100.0)
    old_pending = transition(snapshot(key=("b",)), at=100.0)
    recent_delivered = transition(snapshot(key=("c",)), at=500.0)
    ids = await store.record_transitions(
        TENANT, RULE_GROUP, [old_delivered, old_pending, recent_delivered]
    )
    await store.mark_delivered(TENANT, [ids[0], ids[2]])

    assert await store.prune_history(TENANT, before_s=200.0) == 1
    assert [r.id for r in await store.history(TENANT)] == [ids[1], ids[2]]
    assert await store.prune_history(TENANT, before_s=200.0) == 0


async def test_history_filters(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [
        transition(snapshot("rule-a", ("1",)), kind=TransitionKind.FIRED, at=30.0),
        transition(snapshot("rule-a", ("1",)), kind=TransitionKind.RECOVERED, at=10.0),
        transition(snapshot("rule-b", ("1",)), kind=TransitionKind.FIRED, at=20.0),
        transition(snapshot("rule-b", ("2",)), kind=TransitionKind.FIRED, at=20.0),
    ]
    ids = await store.record_transitions(TENANT, RULE_GROUP, rows)

    assert [r.id for r in await store.history(TENANT)] == [ids[1], ids[2], ids[3], ids[0]]
    assert [r.id for r in await store.history(TENANT, rule_id="rule-a")] == [ids[1], ids[0]]
    assert [r.id for r in await store.history(TENANT, kind="recovered")] == [ids[1]]
    assert [r.id for r in await store.history(TENANT, since_s=20.0)] == [ids[2], ids[3], ids[0]]
    assert [r.id for r in await store.history(TENANT, until_s=20.0)] == [ids[1]]
    assert [r.id for r in await store.history(TENANT, limit=2)] == [ids[1], ids[2]]
    combined = await store.history(TENANT, rule_id="rule-b", kind="fired", since_s=15, until_s=25)
    assert [r.id for r in combined] == [ids[2], ids[3]]

    monkeypatch.setattr(sqlite_store, "HISTORY_LIMIT_MAX", 3)
    assert len(await store.history(TENANT, limit=1_000_000)) == 3
    with pytest.raises(ValueError, match="invalid history limit 0"):
        await store.history(TENANT, limit=0)


# Tenant isolation and hostile input.


async def test_tenants_isolated(store: SQLiteStore) -> None:
    state_a = snapshot(counts=(1, 1, 1))
    state_b = snapshot(counts=(2, 2, 2))
    await store.flush("tenant-a", RULE_GROUP, FlushBatch([state_a], [], checkpoint(1)))
    await store.flush("tenant-b", RULE_GROUP, FlushBatch([state_b], [], checkpoint(2)))
    ids_a = await store.record_transitions("tenant-a", RULE_GROUP, [transition(state_a)])
    ids_b = await store.record_transitions("tenant-b", RULE_GROUP, [transition(state_b)])
    await store.mark_delivered("tenant-a", ids_a)

    assert ids_a != ids_b
    loaded_b = await store.load("tenant-b", RULE_GROUP)
    assert loaded_b.groups == {state_b.rule_id: [state_b]}
    assert loaded_b.checkpoint == checkpoint(2)

    # Writes under tenant-a never reach tenant-b rows with the same rule, key and id.
    await store.mark_delivered("tenant-a", ids_b)
    assert await store.prune_history("tenant-a", before_s=1e12) == 1
    await store.flush(
        "tenant-a", RULE_GROUP, FlushBatch([], [(state_a.rule_id, state_a.key)], checkpoint(30))
    )

    assert (await store.load("tenant-a", RULE_GROUP)).groups == {}
    assert (await store.load("tenant-b", RULE_GROUP)).groups == {state_b.rule_id: [state_b]}
    assert [r.id for r in await store.undelivered("tenant-b", RULE_GROUP)] == ids_b
    assert await store.history("tenant-a") == []
    assert [r.tenant for r in await store.history("tenant-b")] == ["tenant-b"]


HOSTILE_STRINGS = [
    "O'Brien",
    '"quoted" and `backticked`',
    "'; DROP TABLE groups; --",
    "x'); DELETE FROM history; --",
    "%_ LIKE wildcards \\ and \n newlines \t tabs",
    "ünïcødé 日本語 مرحبا 🚨",
    "é" + "x" * 10_240,
    " ",
    "",
]


@pytest.mark.parametrize("text", HOSTILE_STRINGS, ids=range(len(HOSTILE_STRINGS)))
async def test_hostile_strings_round_trip(store: SQLiteStore, db_path: Path, text: str) -> None:
    # Tenant and rule group ids must not be empty; every other field takes "" as well.
    scope = text or "scope"
    state = snapshot(text, (text, None, "plain"))
    marker = Checkpoint(source=text, offset=1, position=2, now=None, ticked={text: 3})
    await store.flush(scope, scope, FlushBatch([state], [], marker))
    fired = transition(state, fields=(text, "b", "c"))
    await store.record_transitions(scope, scope, [fired])

    loaded = await store.load(scope, scope)
    assert loaded.groups == {text: [state]}
    assert loaded.checkpoint == marker
    [record] = await store.history(scope, rule_id=text)
    assert record.tenant == scope
    assert record.rule_group == scope
    assert record.group == {text: text, "b": None, "c": "plain"}

    conn = raw_connect(db_path)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        history_rows = conn.execute("SELECT count(*) FROM history").fetchone()[0]
    finally:
        conn.close()
    assert {"groups", "checkpoints", "history"} <= tables
    assert history_rows == 1


@pytest.mark.parametrize(("tenant", "rule_group"), [("", RULE_GROUP), (TENANT, "")], ids=["tenant", "rule_group"])
async def test_empty_scope_rejected(store: SQLiteStore, tenant: str, rule_group: str) -> None:
    with pytest.raises(StoreError, match="must not be empty"):
        await store.flush(tenant, rule_group, FlushBatch([], [], checkpoint()))
    with pytest.raises(StoreError, match="must not be empty"):
        await store.load(tenant, rule_group)


NUL_CASES = {
    "tenant": lambda s: s.flush("a\x00b", RULE_GROUP, FlushBatch([], [], checkpoint())),
    "rule_group": lambda s: s.flush(TENANT, "a\x00", FlushBatch([], [], checkpoint())),
    "rule_id": lambda s: s.flush(
        TENANT, RULE_GROUP, FlushBatch([snapshot("r\x00")], [], checkpoint())
    ),
    "group value": lambda s: s.flush(
        TENANT, RULE_GROUP, FlushBatch([snapshot(key=("ok", "\x00"))], [], checkpoint())
    ),
    "forgotten key": lambda s: s.flush(
        TENANT, RULE_GROUP, FlushBatch([], [("r", ("\x00",))], checkpoint())
    ),
    "source": lambda s: s.flush(
        TENANT, RULE_GROUP, FlushBatch([], [], checkpoint(source="dev\x00"))
    ),
    "group field": lambda s: s.record_transitions(
        TENANT, RULE_GROUP, [transition(snapshot(), fields=("src\x00ip",))]
    ),
    "history tenant": lambda s: s.history("\x00"),
}


@pytest.mark.parametrize("case", list(NUL_CASES))
async def test_nul_byte_rejected(store: SQLiteStore, case: str) -> None:
    with pytest.raises(StoreError, match="contains a NUL byte"):
        await NUL_CASES[case](store)
    assert (await store.load(TENANT, RULE_GROUP)).checkpoint is None
    assert await store.history(TENANT) == []


async def test_lone_surrogate_rejected(store: SQLiteStore) -> None:
    with pytest.raises(StoreError, match="not encodable as UTF-8"):
        await store.flush(
            TENANT, RULE_GROUP, FlushBatch([snapshot(key=("\ud800",))], [], checkpoint())
        )
    assert (await store.load(TENANT, RULE_GROUP)).checkpoint is None


@pytest.mark.parametrize(
    ("bad_snapshot", "message"),
    [
        (snapshot(counts=(1, 2**32)), "invalid bucket count 4294967296"),
        (snapshot(counts=(-1,)), "invalid bucket count -1"),
        (snapshot(last_seen_at=float("nan")), "invalid last_seen_at nan"),
        (snapshot(last_fired_at=float("inf")), "invalid last_fired_at inf"),
        (snapshot(position=2**63), "invalid position"),
        (snapshot(suppressed=1), "invalid suppressed 1"),  # type: ignore[arg-type]
        (snapshot(status="paused"), "invalid status 'paused'"),  # type: ignore[arg-type]
        (snapshot(key=["list"]), "expected a tuple"),  # type: ignore[arg-type]
    ],
)
async def test_invalid_snapshot_rejected(
    store: SQLiteStore, bad_snapshot: GroupSnapshot, message: str
) -> None:
    good = snapshot(key=("good",))
    with pytest.raises(StoreError, match=message):
        await store.flush(TENANT, RULE_GROUP, FlushBatch([good, bad_snapshot], [], checkpoint()))
    assert await store.load(TENANT, RULE_GROUP) == StoredState()


# Property test: any valid snapshot round-trips exactly.

_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)
_time = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)
_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_snapshots = st.builds(
    GroupSnapshot,
    rule_id=_text,
    key=st.lists(st.none() | _text, max_size=4).map(tuple),
    window_s=_int64,
    bucket_s=_int64,
    counts=st.lists(st.integers(0, 2**32 - 1), max_size=64).map(tuple),
    head_bucket=_int64,
    last_seen_at=_time,
    last_fired_at=st.none() | _time,
    last_notified_at=st.none() | _time,
    status=st.sampled_from(GroupStatus),
    suppressed=st.booleans(),
    position=_int64,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tenant=_text.filter(bool), snapshots=st.lists(_snapshots, max_size=6))
def test_snapshot_round_trip_property(tenant: str, snapshots: list[GroupSnapshot]) -> None:
    # One row per identity, because a later duplicate in a batch replaces the earlier one.
    unique = list({(s.rule_id, s.key): s for s in snapshots}.values())

    async def round_trip() -> StoredState:
        memory = SQLiteStore(":memory:")
        await memory.open()
        try:
            await memory.flush(tenant, RULE_GROUP, FlushBatch(unique, [], checkpoint()))
            return await memory.load(tenant, RULE_GROUP)
        finally:
            await memory.close()

    loaded = asyncio.run(round_trip())
    assert by_identity(loaded) == {(s.rule_id, s.key): s for s in unique}


# Crash safety with a real process.

CRASH_GROUPS = 1500
CRASH_BUCKETS = 60

# The child flushes batch after batch. Batch N writes position N into every group, replaces the
# marker group of batch N - 1 with its own and stores checkpoint N, so a loaded state that mixes
# two batches is visible.
CRASH_CHILD = f"""
import asyncio, sys
from alertwarden.engine.records import Checkpoint, FlushBatch, GroupSnapshot, GroupStatus
from alertwarden.store.sqlite import SQLiteStore

def group(rule_id, key, step):
    return GroupSnapshot(
        rule_id=rule_id, key=key, window_s=600, bucket_s=10,
        counts=(step,) * {CRASH_BUCKETS}, head_bucket=step, last_seen_at=step + 0.25,
        last_fired_at=None, last_notified_at=None, status=GroupStatus.OK, suppressed=False,
        position=step,
    )

async def main(path):
    store = SQLiteStore(path)
    await store.open()
    state = await store.load("t", "g")
    step = state.checkpoint.position + 1 if state.checkpoint else 1
    first = True
    while True:
        changed = [
            group(f"rule-{{i % 7}}", (f"k{{i}}", None), step) for i in range({CRASH_GROUPS})
        ]
        changed.append(group("marker", (str(step),), step))
        checkpoint = Checkpoint(
            source="s", offset=step * 100, position=step, now=step + 0.5, ticked={{"rule-0": step}}
        )
        forgotten = [("marker", (str(step - 1),))]
        await store.flush("t", "g", FlushBatch(changed, forgotten, checkpoint))
        if first:
            print("flushed", flush=True)
            first = False
        step += 1

asyncio.run(main(sys.argv[1]))
"""


def assert_one_complete_batch(state: StoredState) -> int:
    assert state.checkpoint is not None
    step = state.checkpoint.position
    assert state.checkpoint.offset == step * 100
    assert state.checkpoint.now == step + 0.5
    assert state.checkpoint.ticked == {"rule-0": step}

    groups = by_identity(state)
    assert len(groups) == CRASH_GROUPS + 1
    assert [key for rule_id, key in groups if rule_id == "marker"] == [(str(step),)]
    assert {s.position for s in groups.values()} == {step}
    assert {s.counts for s in groups.values()} == {(step,) * CRASH_BUCKETS}
    return step


@pytest.mark.slow
async def test_sigkill_leaves_one_complete_batch(db_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    last_step = 0

    for _ in range(6):
        with subprocess.Popen(
            [sys.executable, "-c", CRASH_CHILD, str(db_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as child:
            assert child.stdout is not None
            started = child.stdout.readline()
            if started != b"flushed\n":
                child.kill()
                _, stderr = child.communicate()
                pytest.fail(f"child failed before its first flush: {stderr.decode()}")
            time.sleep(rng.uniform(0.0, 0.3))
            child.send_signal(signal.SIGKILL)
            child.communicate()
        assert child.returncode == -signal.SIGKILL, f"seed {seed}"

        reader = SQLiteStore(db_path)
        await reader.open()
        try:
            state = await reader.load("t", "g")
        finally:
            await reader.close()
        step = assert_one_complete_batch(state)
        assert step > last_step, f"seed {seed}: no batch committed after step {last_step}"
        last_step = step

    conn = raw_connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


async def test_exclusive_store_rejects_second_opener(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    first = SQLiteStore(path, exclusive=True)
    await first.open()

    second = SQLiteStore(path, exclusive=True)
    with pytest.raises(StoreError, match="in use by another alertwarden process") as raised:
        await second.open()
    assert str(os.getpid()) in str(raised.value)

    await first.close()
    await second.open()  # the lock is free once the first store is closed
    await second.close()
