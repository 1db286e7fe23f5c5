"""Behaviour cases in tests/cases/*.json, run through the pipeline with each state store.

Case format: `rule` (threshold, window_seconds, bucket_seconds, group_by, cooldown_seconds,
renotify_seconds, filter of field -> required value), optional `engine_settings`, `steps`
(event, advance_to, generate, restart), `expected` (every transition ever stored) and
`must_not` (failure modes in words; the checkable ones have a check in CASE_CHECKS).

The harness plays the input source: every new event gets the next offset, and after a restart
the source redelivers every record from the stored checkpoint offset on, as a file source does.

The PostgreSQL variant moves every case time by whole days, to two days ago. That store's
maintenance drops history day partitions older than its 7-day retention by the wall clock, so
fixed 2024 times would lose their history once it runs (this harness never prunes).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alertwarden.engine.evaluator import EngineSettings, Evaluator
from alertwarden.events import Event, Signal
from alertwarden.pipeline import RuleGroupPipeline
from alertwarden.rules import CompiledRule, load_rules_text
from alertwarden.sinks.base import Notification
from alertwarden.store.base import HistoryRecord, StateStore
from alertwarden.store.postgres import PostgresStore
from alertwarden.store.sqlite import SQLiteStore

CASES_DIR = Path(__file__).parent / "cases"
CASE_FILES = sorted(CASES_DIR.glob("*.json"))
TENANT = "cases"
RULE_GROUP = "cases"
DAY_S = 86400
# Every case time lies on this UTC day or the next one.
CASES_DAY = date(2024, 3, 5)


class StoreKind(enum.StrEnum):
    SQLITE = "sqlite"
    POSTGRES = "postgres"


def parse_time(text: str, shift_s: int = 0) -> float:
    return datetime.fromisoformat(text).timestamp() + shift_s


def case_shift_s(store_kind: StoreKind) -> int:
    """Return the whole days, in seconds, that move CASES_DAY to two days before today (UTC).

    Whole days keep every bucket boundary in place when the bucket divides a day, which
    CaseRun.open checks.
    """
    if store_kind is StoreKind.SQLITE:
        return 0
    target = datetime.now(UTC).date() - timedelta(days=2)
    return (target - CASES_DAY).days * DAY_S


# ------------------------------------------------------------------ rule + settings


def compile_case_rule(case: dict[str, Any]) -> CompiledRule:
    spec = case["rule"]
    conditions = [
        {"field": name, "equals": value, "case_sensitive": True}
        for name, value in spec["filter"].items()
    ]
    definition = {
        "id": case["name"],
        "threshold": spec["threshold"],
        "window": spec["window_seconds"],
        "bucket": spec["bucket_seconds"],
        "cooldown": spec["cooldown_seconds"],
        "renotify": spec["renotify_seconds"],
        "group_by": spec["group_by"],
        "match": {"all": conditions} if conditions else None,
    }
    # JSON is valid YAML, so the rule goes through the same loader as a rule file.
    (rule,) = load_rules_text(json.dumps([definition]), f"{case['name']}.json")
    return rule


def engine_settings(case: dict[str, Any]) -> EngineSettings:
    options = case.get("engine_settings", {})
    if "max_future_skew_seconds" in options:
        return EngineSettings(max_future_skew_s=float(options["max_future_skew_seconds"]))
    return EngineSettings()


def case_event(body: dict[str, Any], shift_s: int) -> Event:
    fields = {name: value for name, value in body.items() if name not in ("ts", "id")}
    return Event(parse_time(body["ts"], shift_s), fields, Signal.LOGS, body["id"])


def generated_events(spec: dict[str, Any], shift_s: int) -> list[Event]:
    """Build the events of a `generate` step as its `note` defines them."""
    count = spec["count"]
    start_s = int(parse_time(spec["ts_from"], shift_s))
    span_s = int(parse_time(spec["ts_to"], shift_s)) - start_s
    events: list[Event] = []
    for i in range(count):
        value = spec["vary_format"].format(a=(i // 250) % 256, b=i % 250 + 1)
        fields = {**spec["template"], spec["vary_field"]: value}
        events.append(Event(float(start_s + span_s * i // count), fields, Signal.LOGS, f"gen-{i}"))
    return events


# ------------------------------------------------------------------ the run


class RecordingSink:
    def __init__(self) -> None:
        self.received: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        self.received.append(notification)

    async def close(self) -> None:
        return None


@dataclass(slots=True)
class Record:
    offset: int
    event: Event
    arrival_s: float


@dataclass
class CaseRun:
    """Player of one case: the source (offsets, redelivery), the pipeline and what it produced.

    new_store opens the same stored state on every call, and shift_s is added to every case time.
    """

    case: dict[str, Any]
    new_store: Callable[[], StateStore]
    shift_s: int = 0
    rule: CompiledRule = field(init=False)
    store: StateStore = field(init=False)
    pipeline: RuleGroupPipeline = field(init=False)
    sink: RecordingSink = field(default_factory=RecordingSink)
    sent_records: list[Record] = field(default_factory=list)
    offsets_by_id: dict[str, int] = field(default_factory=dict)
    # Records from the checkpoint on that the source still has to redeliver after a restart.
    pending: list[Record] = field(default_factory=list)
    restarts: int = 0

    @property
    def evaluator(self) -> Evaluator:
        return self.pipeline.evaluator

    @property
    def next_offset(self) -> int:
        return len(self.sent_records)

    def time(self, text: str) -> float:
        return parse_time(text, self.shift_s)

    async def open(self) -> None:
        self.rule = compile_case_rule(self.case)
        if self.shift_s % self.rule.bucket_s:
            raise AssertionError(
                f"shift_s {self.shift_s} is not a whole number of {self.rule.bucket_s} s buckets"
            )
        self.store = self.new_store()
        await self.store.open()
        await self._start_pipeline()

    async def _start_pipeline(self) -> None:
        evaluator = Evaluator(
            [self.rule], engine_settings(self.case), tenant=TENANT, rule_group=RULE_GROUP
        )
        self.pipeline = RuleGroupPipeline(
            evaluator, [self.rule], self.store, self.sink,
            source="case", history_retention_s=math.inf,
        )
        await self.pipeline.start(lambda source, offset: (offset, None))

    async def deliver(self, event: Event, arrival_s: float, redelivery: bool) -> None:
        if redelivery:
            await self._redeliver(event, arrival_s)
            return
        await self._flush_pending()
        offset = self.next_offset
        self.offsets_by_id.setdefault(event.event_id or "", offset)
        self.sent_records.append(Record(offset, event, arrival_s))
        await self.pipeline.process(event, offset, arrival_s)

    async def _redeliver(self, event: Event, arrival_s: float) -> None:
        offset = self.offsets_by_id[event.event_id or ""]
        if not any(record.offset == offset for record in self.pending):
            # Before the checkpoint: a source resuming there does not send it again.
            # NOTE: this also drops a `duplicate` step sent without a restart, so such a step
            # would not test deduplication in the engine, which has none by event id.
            return
        while self.pending and self.pending[0].offset < offset:
            record = self.pending.pop(0)
            await self.pipeline.process(record.event, record.offset, record.arrival_s)
        self.pending = [record for record in self.pending if record.offset != offset]
        await self.pipeline.process(event, offset, arrival_s)

    async def _flush_pending(self) -> None:
        pending, self.pending = self.pending, []
        for record in pending:
            await self.pipeline.process(record.event, record.offset, record.arrival_s)

    async def advance(self, now_s: float) -> None:
        await self._flush_pending()
        await self.pipeline.tick(now_s, self.next_offset)

    async def restart(self, at_s: float) -> None:
        """Tick to `at_s`, drop the pipeline without finishing it, and start a new one."""
        await self.advance(at_s)
        await self.store.close()
        self.restarts += 1
        self.store = self.new_store()
        await self.store.open()
        await self._start_pipeline()
        resume_offset = self.pipeline.resume_offset
        self.pending = [record for record in self.sent_records if record.offset >= resume_offset]

    async def play(self) -> None:
        for step in self.case["steps"]:
            if "event" in step:
                event = case_event(step["event"], self.shift_s)
                arrival_s = self.time(step["at"]) if "at" in step else event.time_s
                redelivery = bool(step.get("replay") or step.get("duplicate"))
                await self.deliver(event, arrival_s, redelivery)
            elif "advance_to" in step:
                await self.advance(self.time(step["advance_to"]))
            elif "generate" in step:
                for event in generated_events(step["generate"], self.shift_s):
                    await self.deliver(event, event.time_s, redelivery=False)
            elif step.get("restart"):
                await self.restart(self.time(step["at"]))
            else:
                raise AssertionError(
                    f"unknown step {step!r}: use event, advance_to, generate or restart"
                )
        await self._flush_pending()
        await self.pipeline.finish(self.next_offset)

    async def history(self) -> list[HistoryRecord]:
        return await self.store.history(TENANT, limit=10_000)


# ------------------------------------------------------------------ checks

Row = tuple[float, tuple[tuple[str, str | None], ...], str, int]


def expected_rows(case: dict[str, Any], shift_s: int) -> list[Row]:
    rows = [
        (parse_time(item["at"], shift_s), tuple(item["group"].items()), item["kind"], item["count"])
        for item in case["expected"]
    ]
    return sorted(rows, key=repr)


def stored_rows(records: list[HistoryRecord]) -> list[Row]:
    rows = [(r.at, tuple(r.group.items()), r.kind, r.count) for r in records]
    return sorted(rows, key=repr)


async def check_missing_key_counted(run: CaseRun) -> None:
    stats = run.evaluator.stats.rules[run.rule.id]
    assert stats.missing_key == 8
    assert stats.skipped_missing_key == 0


async def check_late_event_counted(run: CaseRun) -> None:
    assert run.evaluator.stats.rules[run.rule.id].late == 1


async def check_skewed_event(run: CaseRun) -> None:
    evaluator = run.evaluator
    assert evaluator.stats.clock_skew == 1
    # The clock ends at the last advance_to, not at the skewed event's 2024-03-06 timestamp.
    assert evaluator.now == run.time("2024-03-05T10:11:00Z")
    assert evaluator.stats.rules[run.rule.id].late == 0


async def check_groups_forgotten(run: CaseRun) -> None:
    assert run.evaluator.group_count(run.rule.id) == 0
    stored = await run.store.load(TENANT, RULE_GROUP)
    assert stored.groups.get(run.rule.id, []) == []
    assert run.evaluator.stats.rules[run.rule.id].capped == 0


async def check_restart_happened(run: CaseRun) -> None:
    assert run.restarts == 1


CASE_CHECKS: dict[str, Callable[[CaseRun], Any]] = {
    "missing-groupby-field": check_missing_key_counted,
    "late-and-out-of-order-events": check_late_event_counted,
    "future-timestamp-does-not-advance-clock": check_skewed_event,
    "high-cardinality-groups-bounded": check_groups_forgotten,
    "pending-counts-survive-restart": check_restart_happened,
    "no-duplicate-fire-after-crash": check_restart_happened,
}


@pytest.fixture
def new_store(
    store_kind: StoreKind, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[[], StateStore]:
    """Return a function that opens one test's state store again: a SQLite file or a database."""
    if store_kind is StoreKind.SQLITE:
        path = tmp_path / "state.db"
        return lambda: SQLiteStore(path)
    # Looked up only here, so the SQLite variants run without a PostgreSQL server.
    url = request.getfixturevalue("pg_migrated_url")
    return lambda: PostgresStore(url)


@pytest.mark.parametrize("path", CASE_FILES, ids=[path.stem for path in CASE_FILES])
@pytest.mark.parametrize("store_kind", list(StoreKind), ids=str)
async def test_case(
    path: Path, store_kind: StoreKind, new_store: Callable[[], StateStore]
) -> None:
    case = json.loads(path.read_text())
    run = CaseRun(case, new_store, case_shift_s(store_kind))
    await run.open()
    try:
        await run.play()
        records = await run.history()

        assert stored_rows(records) == expected_rows(case, run.shift_s)
        sent_ids = [n.transition_id for n in run.sink.received]
        assert len(sent_ids) == len(set(sent_ids)), "a transition was delivered twice"
        assert set(sent_ids) == {r.transition_id for r in records}
        assert await run.store.undelivered(TENANT, RULE_GROUP) == []
        check = CASE_CHECKS.get(case["name"])
        if check is not None:
            await check(run)
    finally:
        await run.store.close()


def test_case_files_present() -> None:
    names = {json.loads(path.read_text())["name"] for path in CASE_FILES}
    assert len(CASE_FILES) >= 9
    assert set(CASE_CHECKS) <= names
