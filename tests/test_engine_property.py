"""Property tests: the evaluator against the brute-force model, and a crash-and-restart replay."""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from model import MISSING, Model, ModelRule, ModelTransition

from alertwarden.engine.evaluator import ClockMode, EngineSettings, Evaluator
from alertwarden.engine.records import Transition
from alertwarden.events import Event, Signal
from alertwarden.pipeline import RuleGroupPipeline
from alertwarden.rules import CompiledRule, RuleDefinition, compile_rule
from alertwarden.sinks.base import Notification
from alertwarden.store.sqlite import SQLiteStore

TENANT = "t"
RULE_GROUP = "g"
RULE_ID = "r"
START_S = 1_700_000_000.0
KEY_VALUES = ("a", "b", "c", 7, MISSING, None, "")


@dataclass(frozen=True, slots=True)
class EventStep:
    time_s: float
    key_value: object
    arrival_s: float | None = None


@dataclass(frozen=True, slots=True)
class AdvanceStep:
    now_s: float


Step = EventStep | AdvanceStep


# ------------------------------------------------------------------ strategies


@st.composite
def model_rules(draw: st.DrawFn) -> ModelRule:
    renotify_s = draw(st.one_of(st.just(0), st.integers(1, 30)))
    return ModelRule(
        threshold=draw(st.integers(1, 6)),
        bucket_s=draw(st.integers(1, 5)),
        n_buckets=draw(st.integers(1, 6)),
        cooldown_s=draw(st.integers(0, 20)),
        renotify_s=renotify_s,
        group_by=draw(st.sampled_from([(), ("k",)])),
    )


# Mostly small steps forward, some jitter backwards, a few gaps of minutes to days.
_unusual_time_deltas = st.one_of(
    st.integers(0, 4).map(float),
    st.sampled_from([0.5, 1.25, 2.75]),
    st.integers(-15, -1).map(float),
    st.integers(0, 40).map(float),
    st.sampled_from([300.0, 3_600.0, 86_400.0 * 3 + 0.5]),
)
_next_time_delta = st.integers(0, 19).flatmap(
    lambda roll: _unusual_time_deltas if roll == 0 else st.integers(-3, 4).map(float)
)


@st.composite
def streams(draw: st.DrawFn) -> list[Step]:
    size = draw(st.integers(1, 40))
    cursor_s = START_S + draw(st.integers(0, 9))
    steps: list[Step] = []
    for _ in range(size):
        delta_s = draw(_next_time_delta)
        if draw(st.integers(0, 9)) == 0:
            cursor_s += abs(delta_s)
            steps.append(AdvanceStep(cursor_s))
            continue
        time_s = cursor_s + delta_s
        steps.append(EventStep(time_s, draw(st.sampled_from(KEY_VALUES))))
        cursor_s = max(cursor_s, time_s)
    return steps


@st.composite
def live_streams(draw: st.DrawFn) -> list[Step]:
    """Build streams with arrival times, in which some events are stamped far ahead of arrival."""
    steps: list[Step] = []
    for step in draw(streams()):
        if isinstance(step, AdvanceStep):
            steps.append(step)
            continue
        arrival_s = step.time_s + draw(st.integers(0, 5))
        if draw(st.integers(0, 5)) == 0:
            future_s = step.time_s + draw(st.sampled_from([61.0, 500.0, 86_400.0]))
            steps.append(EventStep(future_s, step.key_value, arrival_s))
        else:
            steps.append(EventStep(step.time_s, step.key_value, arrival_s))
    return steps


# ---------------------------------------------------------------- conversions


def compile_model_rule(rule: ModelRule) -> CompiledRule:
    definition = RuleDefinition.model_validate(
        {
            "id": RULE_ID,
            "threshold": rule.threshold,
            "window": rule.window_s,
            "bucket": rule.bucket_s,
            "cooldown": rule.cooldown_s,
            "renotify": rule.renotify_s,
            "group_by": list(rule.group_by),
            "on_missing_key": "skip" if rule.skip_missing_key else "group",
        }
    )
    return compile_rule(definition)


def event_of(step: EventStep, index: int) -> Event:
    fields = {} if step.key_value is MISSING else {"k": step.key_value}
    return Event(step.time_s, fields, Signal.LOGS, f"e{index}")


def fields_of(step: EventStep) -> dict[str, object]:
    return {} if step.key_value is MISSING else {"k": step.key_value}


def as_model(transition: Transition) -> ModelTransition:
    return ModelTransition(transition.at, transition.key, transition.kind.value, transition.count)


def run_model(rule: ModelRule, steps: list[Step]) -> Model:
    model = Model(rule)
    for step in steps:
        if isinstance(step, EventStep):
            model.event(step.time_s, fields_of(step), step.arrival_s)
        else:
            model.advance(step.now_s)
    return model


def new_evaluator(rule: CompiledRule) -> Evaluator:
    # The skew limit is ModelRule's default, so both sides classify the same events as skewed.
    settings = EngineSettings(clock=ClockMode.EVENT, max_future_skew_s=60.0)
    return Evaluator([rule], settings, tenant=TENANT, rule_group=RULE_GROUP)


# ------------------------------------------------------------- engine vs model


@settings(max_examples=400, deadline=None)
@given(rule=model_rules(), steps=streams())
def test_evaluator_matches_model(rule: ModelRule, steps: list[Step]) -> None:
    evaluator = new_evaluator(compile_model_rule(rule))
    got: list[ModelTransition] = []
    for index, step in enumerate(steps):
        if isinstance(step, EventStep):
            got.extend(as_model(t) for t in evaluator.ingest(event_of(step, index), index))
        else:
            got.extend(as_model(t) for t in evaluator.advance(step.now_s, index))

    model = run_model(rule, steps)
    assert Counter(got) == Counter(model.transitions)
    stats = evaluator.stats.rules[RULE_ID]
    assert stats.late == model.counters.late
    assert stats.missing_key == model.counters.missing_key


@settings(max_examples=200, deadline=None)
@given(rule=model_rules(), steps=streams())
def test_evaluator_skip_missing_key_matches_model(rule: ModelRule, steps: list[Step]) -> None:
    skip_rule = ModelRule(
        threshold=rule.threshold,
        bucket_s=rule.bucket_s,
        n_buckets=rule.n_buckets,
        cooldown_s=rule.cooldown_s,
        renotify_s=rule.renotify_s,
        group_by=("k",),
        skip_missing_key=True,
    )
    evaluator = new_evaluator(compile_model_rule(skip_rule))
    got: list[ModelTransition] = []
    for index, step in enumerate(steps):
        if isinstance(step, EventStep):
            got.extend(as_model(t) for t in evaluator.ingest(event_of(step, index), index))
        else:
            got.extend(as_model(t) for t in evaluator.advance(step.now_s, index))

    model = run_model(skip_rule, steps)
    assert Counter(got) == Counter(model.transitions)
    stats = evaluator.stats.rules[RULE_ID]
    assert stats.late == model.counters.late
    assert stats.skipped_missing_key == model.counters.skipped_missing_key


@settings(max_examples=300, deadline=None)
@given(rule=model_rules(), steps=live_streams())
def test_evaluator_live_skew_matches_model(rule: ModelRule, steps: list[Step]) -> None:
    evaluator = new_evaluator(compile_model_rule(rule))
    got: list[ModelTransition] = []
    for index, step in enumerate(steps):
        if isinstance(step, EventStep):
            event = event_of(step, index)
            got.extend(as_model(t) for t in evaluator.ingest(event, index, step.arrival_s))
        else:
            got.extend(as_model(t) for t in evaluator.advance(step.now_s, index))

    model = run_model(rule, steps)
    assert Counter(got) == Counter(model.transitions)
    assert evaluator.stats.clock_skew == model.counters.clock_skew
    assert evaluator.stats.rules[RULE_ID].late == model.counters.late
    assert evaluator.now == model.now


# ------------------------------------------------------------ crash and restart


class SimulatedCrash(Exception):
    """Raised by the sink to stop a run the way a killed process would, mid-delivery."""


class RecordingSink:
    """Records every notification; raises SimulatedCrash instead of delivering the n-th one."""

    def __init__(self, crash_on_send: int | None = None) -> None:
        self.received: list[Notification] = []
        self.crash_on_send = crash_on_send
        self.attempts = 0

    async def send(self, notification: Notification) -> None:
        self.attempts += 1
        if self.crash_on_send is not None and self.attempts == self.crash_on_send:
            raise SimulatedCrash(f"crash on delivery attempt {self.attempts}")
        self.received.append(notification)

    async def close(self) -> None:
        return None


async def feed(pipeline: RuleGroupPipeline, steps: list[Step], first: int, last: int) -> None:
    for index in range(first, last):
        step = steps[index]
        if isinstance(step, EventStep):
            await pipeline.process(event_of(step, index), index)
        else:
            await pipeline.tick(step.now_s, index)


async def start_pipeline(
    rule: CompiledRule, store: SQLiteStore, sink: RecordingSink
) -> RuleGroupPipeline:
    pipeline = RuleGroupPipeline(
        new_evaluator(rule), [rule], store, sink, source="stream", history_retention_s=math.inf
    )
    await pipeline.start(lambda source, offset: (offset, None))
    return pipeline


HistoryRow = tuple[float, str, tuple[tuple[str, str | None], ...], str, int]


async def history_rows(store: SQLiteStore) -> list[HistoryRow]:
    records = await store.history(TENANT, limit=10_000)
    rows = [(r.at, r.rule_id, tuple(r.group.items()), r.kind, r.count) for r in records]
    return sorted(rows, key=repr)


async def run_uninterrupted(rule: CompiledRule, steps: list[Step], path: Path) -> list[HistoryRow]:
    store = SQLiteStore(path)
    await store.open()
    try:
        pipeline = await start_pipeline(rule, store, RecordingSink())
        await feed(pipeline, steps, 0, len(steps))
        await pipeline.finish(len(steps))
        return await history_rows(store)
    finally:
        await store.close()


@dataclass(slots=True)
class CrashedRun:
    rows: list[HistoryRow]
    sent: list[Notification]
    resume_offset: int
    crashed_in_delivery: bool


async def run_with_crash(
    rule: CompiledRule, steps: list[Step], path: Path, crash_step: int, crash_on_send: int | None
) -> CrashedRun:
    """Run until the crash, then start a new pipeline on the same file and feed the rest."""
    first_sink = RecordingSink(crash_on_send)
    crashed_in_delivery = False
    store = SQLiteStore(path)
    await store.open()
    try:
        pipeline = await start_pipeline(rule, store, first_sink)
        try:
            await feed(pipeline, steps, 0, crash_step)
        except SimulatedCrash:
            crashed_in_delivery = True
    finally:
        # Closing the connection is what a killed process leaves: only committed transactions.
        await store.close()

    second_sink = RecordingSink()
    store = SQLiteStore(path)
    await store.open()
    try:
        pipeline = await start_pipeline(rule, store, second_sink)
        resume_offset = pipeline.resume_offset
        await feed(pipeline, steps, resume_offset, len(steps))
        await pipeline.finish(len(steps))
        rows = await history_rows(store)
    finally:
        await store.close()
    sent = first_sink.received + second_sink.received
    return CrashedRun(rows, sent, resume_offset, crashed_in_delivery)


def model_rows(rule: ModelRule, steps: list[Step]) -> list[HistoryRow]:
    model = run_model(rule, steps)
    group_by = rule.group_by
    rows = [
        (t.at, RULE_ID, tuple(zip(group_by, t.key)), t.kind, t.count) for t in model.transitions
    ]
    return sorted(rows, key=repr)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule=model_rules(),
    steps=streams(),
    crash_fraction=st.floats(0, 1),
    crash_on_send=st.one_of(st.none(), st.integers(1, 4)),
)
def test_restart_replays_history_exactly(
    rule: ModelRule, steps: list[Step], crash_fraction: float, crash_on_send: int | None
) -> None:
    compiled = compile_model_rule(rule)
    crash_step = round(crash_fraction * len(steps))
    with tempfile.TemporaryDirectory() as directory:
        clean = asyncio.run(run_uninterrupted(compiled, steps, Path(directory) / "clean.db"))
        crashed = asyncio.run(
            run_with_crash(compiled, steps, Path(directory) / "crash.db", crash_step, crash_on_send)
        )

    event(f"resumed from a checkpoint: {crashed.resume_offset > 0}")
    event(f"crashed during a delivery: {crashed.crashed_in_delivery}")
    assert clean == model_rows(rule, steps)
    assert crashed.rows == clean
    sent_ids = [n.transition_id for n in crashed.sent]
    assert len(sent_ids) == len(set(sent_ids)), "a transition was delivered twice"
    assert len(sent_ids) == len(clean), "a stored transition was never delivered"
