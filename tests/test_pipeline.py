"""Pipeline behaviour around the store: outages, rule changes across restarts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from alertwarden.cluster.leases import LeaseLostError
from alertwarden.engine.evaluator import ClockMode, EngineSettings, Evaluator
from alertwarden.engine.records import FlushBatch, Transition
from alertwarden.errors import SinkError, StoreError
from alertwarden.events import Event, Signal
from alertwarden.pipeline import RuleGroupPipeline
from alertwarden.rules import CompiledRule, load_rules_text
from alertwarden.sinks import remote as remote_module
from alertwarden.sinks.base import Notification
from alertwarden.store.sqlite import SQLiteStore

T0 = 1_709_632_800.0  # 2024-03-05T10:00:00Z

RULES = """
- id: errors
  match: {field: severity, equals: error}
  group_by: [host]
  threshold: 3
  window: 5m
  bucket: 1m
  cooldown: 0
  renotify: 0
"""


class CollectingSink:
    def __init__(self) -> None:
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        self.sent.append(notification)

    async def close(self) -> None:
        return None


ALL_WRITES = frozenset({"record_transitions", "flush", "undelivered", "mark_delivered", "prune_history"})


class FlakyStore:
    """Wraps a store; while `down` is set, the methods named in `failing` raise StoreError."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.down = False
        self.failing: frozenset[str] = ALL_WRITES
        self.failed_calls = 0
        self.failed_batches: list[FlushBatch] = []
        self.written_batches: list[FlushBatch] = []

    def _check(self, method: str) -> None:
        if self.down and method in self.failing:
            self.failed_calls += 1
            raise StoreError("connection refused (simulated)")

    async def load(self, tenant: str, rule_group: str):  # noqa: ANN201
        return await self.inner.load(tenant, rule_group)

    async def record_transitions(
        self, tenant: str, rule_group: str, transitions: Sequence[Transition]
    ) -> list[int]:
        self._check("record_transitions")
        return await self.inner.record_transitions(tenant, rule_group, transitions)

    async def flush(self, tenant: str, rule_group: str, batch: FlushBatch) -> None:
        if self.down and "flush" in self.failing:
            self.failed_batches.append(batch)
        self._check("flush")
        await self.inner.flush(tenant, rule_group, batch)
        self.written_batches.append(batch)

    async def undelivered(self, tenant: str, rule_group: str, **page: Any):  # noqa: ANN201
        self._check("undelivered")
        return await self.inner.undelivered(tenant, rule_group, **page)

    async def mark_delivered(self, tenant: str, ids: Sequence[int]) -> None:
        self._check("mark_delivered")
        await self.inner.mark_delivered(tenant, ids)

    async def prune_history(self, tenant: str, before_s: float) -> int:
        self._check("prune_history")
        return await self.inner.prune_history(tenant, before_s)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def events() -> list[Event]:
    """Bursts for two hosts over 40 minutes: several fires and recoveries each."""
    out = []
    for minute in range(40):
        for host in ("web-1", "web-2"):
            if (minute // 6) % 2 == (0 if host == "web-1" else 1):
                for second in (5, 25, 45):
                    fields = {"severity": "error", "host": host}
                    out.append(Event(T0 + minute * 60 + second, fields, Signal.LOGS))
    return out


def make_pipeline(
    rules: list[CompiledRule], store: object, sink: CollectingSink, clock: FakeMonotonic | None = None
) -> RuleGroupPipeline:
    kwargs = {"monotonic": clock} if clock is not None else {}
    return RuleGroupPipeline(
        Evaluator(rules), rules, store, sink, source="test", **kwargs  # type: ignore[arg-type]
    )


def no_resume(source: str, offset: int) -> tuple[int, str | None]:
    return offset, None


def history_rows(records: list) -> list[tuple]:
    return sorted((r.at, r.rule_id, tuple(r.group.items()), r.kind, r.count) for r in records)


async def stored_groups(store: SQLiteStore) -> list:
    """Return the stored snapshots without `position`, which depends on when flushes ran."""
    stored = await store.load("default", "default")
    snapshots = [snap for snaps in stored.groups.values() for snap in snaps]
    return sorted((replace(snap, position=0) for snap in snapshots), key=lambda snap: snap.key)


async def run_clean(tmp_path: Path, stream: list[Event]) -> tuple[list[tuple], list[str], list]:
    rules = load_rules_text(RULES)
    store = SQLiteStore(tmp_path / "clean.sqlite")
    await store.open()
    sink = CollectingSink()
    pipeline = make_pipeline(rules, store, sink)
    await pipeline.start(no_resume)
    for offset, event in enumerate(stream):
        await pipeline.process(event, offset)
    await pipeline.finish(len(stream))
    rows = history_rows(await store.history("default"))
    groups = await stored_groups(store)
    await store.close()
    return rows, [n.transition_id for n in sink.sent], groups


async def test_store_outage_loses_nothing(tmp_path: Path) -> None:
    full = events()
    outage = range(len(full) // 4, len(full) // 2)
    # End shortly after the outage, so some groups changed only while the store was down.
    stream = full[: outage.stop + 3]
    reference_rows, reference_ids, reference_groups = await run_clean(tmp_path, stream)
    assert len(reference_rows) >= 4
    assert reference_groups

    rules = load_rules_text(RULES)
    inner = SQLiteStore(tmp_path / "flaky.sqlite")
    await inner.open()
    store = FlakyStore(inner)
    sink = CollectingSink()
    clock = FakeMonotonic()
    pipeline = make_pipeline(rules, store, sink, clock)
    await pipeline.start(no_resume)

    half = (outage.start + outage.stop) // 2
    for offset, event in enumerate(stream):
        store.down = offset in outage
        # First only flushes fail, so the evaluator must take drained changes back; then all.
        store.failing = frozenset({"flush"}) if offset < half else ALL_WRITES
        clock.now += 0.5
        await pipeline.process(event, offset)
        if offset in outage:
            assert not pipeline.ready
    await pipeline.finish(len(stream))
    assert pipeline.ready

    assert store.failed_calls > 0
    assert store.failed_batches
    # Every group a failed flush carried is written, or deleted, by a later flush.
    later = {(snap.rule_id, snap.key) for batch in store.written_batches for snap in batch.changed}
    later |= {item for batch in store.written_batches for item in batch.forgotten}
    for batch in store.failed_batches:
        for snap in batch.changed:
            assert (snap.rule_id, snap.key) in later
        for item in batch.forgotten:
            assert item in later
    assert history_rows(await inner.history("default")) == reference_rows
    # Alerts were not held back by the outage: every transition was sent exactly once.
    assert sorted(n.transition_id for n in sink.sent) == sorted(reference_ids)
    assert await inner.undelivered("default", "default") == []
    # Groups changed only during the outage were written by the first flush after it.
    assert await stored_groups(inner) == reference_groups
    await inner.close()


async def test_flush_backs_off_while_store_down(tmp_path: Path) -> None:
    rules = load_rules_text(RULES)
    inner = SQLiteStore(tmp_path / "down.sqlite")
    await inner.open()
    store = FlakyStore(inner)
    clock = FakeMonotonic()
    pipeline = make_pipeline(rules, store, CollectingSink(), clock)
    await pipeline.start(no_resume)
    store.down = True

    for offset, event in enumerate(events()[:60]):
        await pipeline.process(event, offset)
    # The clock did not move, so after the first failure every further flush waits.
    calls_while_waiting = store.failed_calls
    assert calls_while_waiting >= 1
    for offset, event in enumerate(events()[60:90], 60):
        await pipeline.process(event, offset)
    assert store.failed_calls == calls_while_waiting

    clock.now += 2.0
    store.down = False
    await pipeline.finish(90)
    assert pipeline.ready
    stored = await inner.load("default", "default")
    assert stored.checkpoint is not None
    assert stored.checkpoint.offset == 90
    await inner.close()


async def test_final_flush_failure_raises(tmp_path: Path) -> None:
    rules = load_rules_text(RULES)
    inner = SQLiteStore(tmp_path / "final.sqlite")
    await inner.open()
    store = FlakyStore(inner)
    pipeline = make_pipeline(rules, store, CollectingSink(), FakeMonotonic())
    await pipeline.start(no_resume)
    await pipeline.process(events()[0], 0)
    store.down = True

    with pytest.raises(StoreError, match="simulated"):
        await pipeline.finish(1)
    await inner.close()


async def test_final_flush_unstored_raises(tmp_path: Path) -> None:
    rules = load_rules_text(RULES)
    inner = SQLiteStore(tmp_path / "unstored.sqlite")
    await inner.open()
    store = FlakyStore(inner)
    sink = CollectingSink()
    pipeline = make_pipeline(rules, store, sink, FakeMonotonic())
    await pipeline.start(no_resume)
    store.down = True
    burst = [e for e in events() if e.fields["host"] == "web-1"][:3]
    for offset, event in enumerate(burst):
        await pipeline.process(event, offset)
    # The alert went out although the store is down, and the run must not end as a success.
    assert [n.kind for n in sink.sent] == ["fired"]

    with pytest.raises(StoreError, match="1 transitions could not be stored"):
        await pipeline.finish(len(burst))
    await inner.close()


WEB1_BURST = [e for e in events() if e.fields["host"] == "web-1"][:3]
"""Three errors of web-1, which fire the `errors` rule at the third."""


async def fire_web1(store: SQLiteStore, *, killed: bool = False) -> CollectingSink:
    """Run the `errors` rule over WEB1_BURST until it fires; return the sink.

    With `killed`, the run ends like a kill -9: with its first checkpoint written at the start,
    as serve writes it, and without the final flush.
    """
    sink = CollectingSink()
    pipeline = make_pipeline(load_rules_text(RULES), store, sink)
    await pipeline.start(no_resume)
    if killed:
        await pipeline.flush(0, force=True)
    for offset, event in enumerate(WEB1_BURST):
        await pipeline.process(event, offset)
    if not killed:
        await pipeline.finish(len(WEB1_BURST))
    assert [n.kind for n in sink.sent] == ["fired"]
    return sink


async def test_window_change_resolves_firing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.sqlite")
    await store.open()
    await fire_web1(store)

    changed = load_rules_text(RULES.replace("window: 5m", "window: 10m"))
    sink = CollectingSink()
    restarted = make_pipeline(changed, store, sink)
    report = await restarted.start(no_resume)

    assert report.reset_rules == {"errors"}
    assert [n.kind for n in sink.sent] == ["recovered"]
    assert sink.sent[0].group == {"host": "web-1"}
    assert sink.sent[0].reason is not None
    assert "window" in sink.sent[0].reason
    assert restarted.evaluator.group_count("errors") == 0
    # The firing row is gone at once, so a crash now would not reset the group again.
    assert (await store.load("default", "default")).groups.get("errors", []) == []
    await restarted.finish(len(WEB1_BURST))
    stored = await store.load("default", "default")
    assert stored.groups.get("errors", []) == []
    kinds = [r.kind for r in await store.history("default")]
    assert kinds == ["fired", "recovered"]
    await store.close()


async def test_window_change_after_crash_deletes_row(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "crash.sqlite")
    await store.open()
    await fire_web1(store, killed=True)
    # The firing row was written with its transition, at a position after the last checkpoint.
    stored = await store.load("default", "default")
    [row] = stored.groups["errors"]
    assert stored.checkpoint is not None
    assert row.position > stored.checkpoint.position

    changed = load_rules_text(RULES.replace("window: 5m", "window: 10m"))
    sink = CollectingSink()
    restarted = make_pipeline(changed, store, sink)
    await restarted.start(no_resume)

    assert [n.kind for n in sink.sent] == ["recovered"]
    assert (await store.load("default", "default")).groups.get("errors", []) == []
    await store.close()


async def test_removed_rule_rows_deleted_at_start(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "removed.sqlite")
    await store.open()
    await fire_web1(store)
    assert "errors" in (await store.load("default", "default")).groups

    renamed = load_rules_text(RULES.replace("id: errors", "id: error-burst"))
    restarted = make_pipeline(renamed, store, CollectingSink())
    report = await restarted.start(no_resume)

    assert report.dropped_unknown_rules == {"errors"}
    assert (await store.load("default", "default")).groups == {}
    await store.close()


async def test_window_change_keeps_regrown_group(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "regrown.sqlite")
    await store.open()
    await fire_web1(store)

    changed = load_rules_text(RULES.replace("window: 5m", "window: 10m"))
    restarted = make_pipeline(changed, store, CollectingSink())
    await restarted.start(no_resume)
    # The same group counts again under the new window before the first flush.
    later = WEB1_BURST[-1].time_s + 1
    offset = len(WEB1_BURST)
    await restarted.process(Event(later, {"severity": "error", "host": "web-1"}, Signal.LOGS), offset)
    await restarted.finish(offset + 1)

    # The flush that deletes the old row must not delete the new one written with it.
    stored = await store.load("default", "default")
    [group] = stored.groups["errors"]
    assert group.key == ("web-1",)
    assert group.window_s == 600
    assert sum(group.counts) == 1
    await store.close()


async def test_failed_flush_keeps_changes(tmp_path: Path) -> None:
    rules = load_rules_text(RULES)
    inner = SQLiteStore(tmp_path / "requeue.sqlite")
    await inner.open()
    store = FlakyStore(inner)
    store.failing = frozenset({"flush"})
    clock = FakeMonotonic()
    pipeline = make_pipeline(rules, store, CollectingSink(), clock)
    await pipeline.start(no_resume)

    # web-1 changes once, before the flush at the 10:01 boundary, which fails.
    await pipeline.process(Event(T0 + 5, {"severity": "error", "host": "web-1"}, Signal.LOGS), 0)
    store.down = True
    await pipeline.process(Event(T0 + 65, {"severity": "error", "host": "web-2"}, Signal.LOGS), 1)
    assert [snap.key for snap in store.failed_batches[0].changed] == [("web-1",)]
    assert not pipeline.ready

    # The store is back and the backoff has passed: the 10:02 flush must still carry web-1.
    store.down = False
    clock.now += 5.0
    await pipeline.process(Event(T0 + 125, {"severity": "error", "host": "web-2"}, Signal.LOGS), 2)
    assert pipeline.ready
    written = {snap.key for snap in store.written_batches[-1].changed}
    assert written == {("web-1",), ("web-2",)}
    stored = await inner.load("default", "default")
    assert sorted(snap.key for snap in stored.groups["errors"]) == [("web-1",), ("web-2",)]
    await inner.close()


class FailingRemoteSink:
    """A remote sink that fails its first `failures` sends, then records what it receives."""

    name = "fake-webhook"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.received: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise SinkError("connection refused (simulated)")
        self.received.append(notification)

    async def close(self) -> None:
        return None


def make_remote_pipeline(
    store: SQLiteStore, local: CollectingSink, remote: FailingRemoteSink, timeout_s: float
) -> RuleGroupPipeline:
    rules = load_rules_text(RULES)
    return RuleGroupPipeline(
        Evaluator(rules),
        rules,
        store,
        local,
        source="test",
        remote_sinks=[remote],
        delivery_timeout_s=timeout_s,
    )


@pytest.mark.parametrize("max_pending", [remote_module.MAX_PENDING, 2], ids=["queue", "outbox"])
async def test_remote_sink_retries_in_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_pending: int
) -> None:
    monkeypatch.setattr(remote_module, "RETRY_INITIAL_S", 0.01)
    # With a queue of 2, the failures fill it, and later transitions wait in the outbox until
    # the queue has drained.
    monkeypatch.setattr(remote_module, "MAX_PENDING", max_pending)
    store = SQLiteStore(tmp_path / "remote.sqlite")
    await store.open()
    local = CollectingSink()
    remote = FailingRemoteSink(failures=3)
    pipeline = make_remote_pipeline(store, local, remote, timeout_s=5.0)
    await pipeline.start(no_resume)

    stream = events()
    for offset, event in enumerate(stream):
        await pipeline.process(event, offset)
    await pipeline.finish(len(stream))

    sent_locally = [n.transition_id for n in local.sent]
    assert len(sent_locally) >= 8
    assert len(set(sent_locally)) == len(sent_locally)
    # The remote sink got every transition once, in order, after its failures, in this run.
    assert [n.transition_id for n in remote.received] == sent_locally
    assert remote.attempts == len(sent_locally) + 3
    assert await store.undelivered("default", "default") == []
    await store.close()


async def test_dead_remote_sink_does_not_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_module, "RETRY_INITIAL_S", 0.01)
    monkeypatch.setattr(remote_module, "RETRY_MAX_S", 0.02)
    store = SQLiteStore(tmp_path / "dead.sqlite")
    await store.open()
    local = CollectingSink()
    remote = FailingRemoteSink(failures=10**9)
    pipeline = make_remote_pipeline(store, local, remote, timeout_s=0.2)
    await pipeline.start(no_resume)

    stream = events()
    for offset, event in enumerate(stream):
        await pipeline.process(event, offset)
    await pipeline.finish(len(stream))

    # Evaluation and the local output went on; every transition waits in the outbox.
    assert len(local.sent) >= 8
    assert remote.received == []
    undelivered = await store.undelivered("default", "default")
    assert sorted(r.transition_id for r in undelivered) == sorted(n.transition_id for n in local.sent)
    await store.close()


def wall_pipeline(store: SQLiteStore, sink: CollectingSink, wall_s: float) -> RuleGroupPipeline:
    rules = load_rules_text(RULES)
    evaluator = Evaluator(rules, EngineSettings(clock=ClockMode.WALL))
    return RuleGroupPipeline(
        evaluator, rules, store, sink, source="stdin", wall_clock=lambda: wall_s
    )


@pytest.mark.parametrize(
    ("downtime_s", "expected"),
    [
        # The three events left the 5-minute window during the downtime: recovered now.
        (3600.0, [("recovered", 0)]),
        # Still inside the window: the group keeps firing, nothing is sent.
        (30.0, []),
    ],
    ids=["window-emptied", "window-still-full"],
)
async def test_wall_restart_evaluates_now(
    tmp_path: Path, downtime_s: float, expected: list[tuple[str, int]]
) -> None:
    store = SQLiteStore(tmp_path / "wall.sqlite")
    await store.open()
    first = wall_pipeline(store, CollectingSink(), T0)
    await first.start(no_resume, replayable=False)
    for offset, second in enumerate((5, 10, 15)):
        fields = {"severity": "error", "host": "web-1"}
        await first.process(Event(T0 + second, fields, Signal.LOGS), offset, arrival_s=T0 + second)
    await first.finish(3)
    assert [n.kind for n in first.sink.sent] == ["fired"]  # type: ignore[attr-defined]

    sink = CollectingSink()
    restart_s = T0 + 15 + downtime_s
    second_run = wall_pipeline(store, sink, restart_s)
    await second_run.start(no_resume, replayable=False)

    assert [(n.kind, n.count) for n in sink.sent] == expected
    assert all(n.at == restart_s for n in sink.sent)
    assert second_run.evaluator.now == restart_s
    await second_run.finish(0)
    await store.close()


class CallLog:
    """Wraps a store and records the order of its transition and flush writes."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.calls: list[tuple[str, object]] = []

    async def load(self, tenant: str, rule_group: str):  # noqa: ANN201
        return await self.inner.load(tenant, rule_group)

    async def record_transitions(
        self, tenant: str, rule_group: str, transitions: Sequence[Transition]
    ) -> list[int]:
        self.calls.append(("record", list(transitions)))
        return await self.inner.record_transitions(tenant, rule_group, transitions)

    async def flush(self, tenant: str, rule_group: str, batch: FlushBatch) -> None:
        self.calls.append(("flush", batch.checkpoint.position))
        await self.inner.flush(tenant, rule_group, batch)

    async def undelivered(self, tenant: str, rule_group: str, **page: Any):  # noqa: ANN201
        return await self.inner.undelivered(tenant, rule_group, **page)

    async def mark_delivered(self, tenant: str, ids: Sequence[int]) -> None:
        self.calls.append(("mark", list(ids)))
        await self.inner.mark_delivered(tenant, ids)

    async def prune_history(self, tenant: str, before_s: float) -> int:
        return await self.inner.prune_history(tenant, before_s)

    def count(self, kind: str) -> int:
        return sum(1 for name, _ in self.calls if name == kind)


def deferring_pipeline(rules: list[CompiledRule], store: object, sink: CollectingSink) -> RuleGroupPipeline:
    return RuleGroupPipeline(
        Evaluator(rules), rules, store, sink, source="test", defer_transitions=True  # type: ignore[arg-type]
    )


def host_bursts() -> list[Event]:
    """Five hosts that fire in the same minute, every 6 minutes, and recover in between."""
    out = []
    for minute in range(24):
        if minute % 6 >= 2:
            continue
        for second in (5, 25, 45):
            for host in range(5):
                fields = {"severity": "error", "host": f"db-{host}"}
                out.append(Event(T0 + minute * 60 + second, fields, Signal.LOGS))
    return out


async def test_deferred_transitions_match_direct(tmp_path: Path) -> None:
    stream = host_bursts()
    reference_rows, reference_ids, reference_groups = await run_clean(tmp_path, stream)
    assert len(reference_ids) >= 20

    rules = load_rules_text(RULES)
    inner = SQLiteStore(tmp_path / "deferred.sqlite")
    await inner.open()
    store = CallLog(inner)
    sink = CollectingSink()
    pipeline = deferring_pipeline(rules, store, sink)
    await pipeline.start(no_resume)
    for offset, event in enumerate(stream):
        await pipeline.process(event, offset)
        if offset % 10 == 9:
            await pipeline.emit_deferred()
    await pipeline.finish(len(stream))

    assert history_rows(await inner.history("default")) == reference_rows
    assert await stored_groups(inner) == reference_groups
    assert [n.transition_id for n in sink.sent] == reference_ids
    assert await inner.undelivered("default", "default") == []
    # Several transitions share each store call, and each mark covers a call's transitions.
    assert store.count("record") < len(reference_ids)
    assert store.count("mark") == store.count("record")
    await inner.close()


async def test_process_nowait_matches_process(tmp_path: Path) -> None:
    stream = host_bursts()
    reference_rows, reference_ids, reference_groups = await run_clean(tmp_path, stream)

    rules = load_rules_text(RULES)
    inner = SQLiteStore(tmp_path / "nowait.sqlite")
    await inner.open()
    store = CallLog(inner)
    sink = CollectingSink()
    pipeline = deferring_pipeline(rules, store, sink)
    await pipeline.start(no_resume)
    declined = 0
    for offset, event in enumerate(stream):
        if not pipeline.process_nowait(event, offset):
            declined += 1
            await pipeline.process(event, offset)
    flushes_while_processing = store.count("flush")
    await pipeline.finish(len(stream))

    assert history_rows(await inner.history("default")) == reference_rows
    assert await stored_groups(inner) == reference_groups
    assert [n.transition_id for n in sink.sent] == reference_ids
    # The bursts cover 8 distinct minutes, so the first record of each of the last 7 flushes.
    # process_nowait declines those and the very first record, which starts the clock.
    assert flushes_while_processing == 7
    assert declined == 1 + flushes_while_processing
    await inner.close()


async def test_process_nowait_declines_without_deferral(tmp_path: Path) -> None:
    rules = load_rules_text(RULES)
    store = SQLiteStore(tmp_path / "direct.sqlite")
    await store.open()
    pipeline = RuleGroupPipeline(Evaluator(rules), rules, store, CollectingSink(), source="test")
    await pipeline.start(no_resume)
    stream = events()
    await pipeline.process(stream[0], 0)
    # Without deferral a transition is stored as it happens, which needs an await.
    assert pipeline.process_nowait(stream[1], 1) is False
    assert pipeline.evaluator.stats.events == 1
    await store.close()


async def test_flush_stores_deferred_transitions_first(tmp_path: Path) -> None:
    rules = load_rules_text(RULES)
    inner = SQLiteStore(tmp_path / "order.sqlite")
    await inner.open()
    store = CallLog(inner)
    pipeline = deferring_pipeline(rules, store, CollectingSink())
    await pipeline.start(no_resume)
    # No emit_deferred() call: only the flushes store the transitions.
    stream = events()
    for offset, event in enumerate(stream):
        await pipeline.process(event, offset)
    await pipeline.finish(len(stream))

    recorded = [t for name, value in store.calls if name == "record" for t in value]  # type: ignore[attr-defined]
    assert len(recorded) >= 8
    stored_before: set[str] = set()
    flushes = 0
    for name, value in store.calls:
        if name == "record":
            stored_before |= {t.transition_id("default", "default") for t in value}  # type: ignore[attr-defined]
        elif name == "flush":
            flushes += 1
            # A flush at checkpoint position P comes after every transition at a step <= P.
            due = {t.transition_id("default", "default") for t in recorded if t.snapshot.position <= value}
            assert due <= stored_before, f"flush at position {value} before its transitions"
    assert flushes >= 10
    await inner.close()


async def test_deferred_replay_after_kill(tmp_path: Path) -> None:
    stream = events()
    reference_rows, reference_ids, reference_groups = await run_clean(tmp_path, stream)
    rules = load_rules_text(RULES)
    path = tmp_path / "killed.sqlite"
    sink = CollectingSink()

    for kill_at in (len(stream) // 3, 2 * len(stream) // 3):
        store = SQLiteStore(path)
        await store.open()
        pipeline = deferring_pipeline(rules, store, sink)
        await pipeline.start(no_resume)
        for offset in range(pipeline.resume_offset, kill_at):
            await pipeline.process(stream[offset], offset)
        # A kill: deferred transitions and changes since the last flush are lost.
        await store.close()

    store = SQLiteStore(path)
    await store.open()
    pipeline = deferring_pipeline(rules, store, sink)
    await pipeline.start(no_resume)
    assert pipeline.resume_offset < len(stream)
    for offset in range(pipeline.resume_offset, len(stream)):
        await pipeline.process(stream[offset], offset)
    await pipeline.finish(len(stream))

    assert history_rows(await store.history("default")) == reference_rows
    assert await stored_groups(store) == reference_groups
    # At least once: every transition was sent, some of them again after a kill.
    assert set(n.transition_id for n in sink.sent) == set(reference_ids)
    assert await store.undelivered("default", "default") == []
    await store.close()


class LeaseLosingStore(CallLog):
    """A store whose lease is lost: every write of transitions or flush raises LeaseLostError."""

    async def record_transitions(
        self, tenant: str, rule_group: str, transitions: Sequence[Transition]
    ) -> list[int]:
        raise LeaseLostError("lease lost (simulated)")

    async def flush(self, tenant: str, rule_group: str, batch: FlushBatch) -> None:
        raise LeaseLostError("lease lost (simulated)")


async def test_lost_lease_stops_before_sending(tmp_path: Path) -> None:
    rules = load_rules_text(RULES)
    inner = SQLiteStore(tmp_path / "lease.sqlite")
    await inner.open()
    sink = CollectingSink()
    pipeline = deferring_pipeline(rules, LeaseLosingStore(inner), sink)
    await pipeline.start(no_resume)
    burst = [e for e in events() if e.fields["host"] == "web-1"][:3]
    for offset, event in enumerate(burst):
        await pipeline.process(event, offset)

    # Unlike an outage, a lost lease is not ridden out: the node holding it now sends the alert.
    with pytest.raises(LeaseLostError):
        await pipeline.emit_deferred()
    assert sink.sent == []
    with pytest.raises(LeaseLostError):
        await pipeline.flush(len(burst), force=True)
    assert (await inner.load("default", "default")).checkpoint is None
    await inner.close()
