"""Named table cases of the evaluator's state machine: steps in, exact transitions and metrics out.

Times are seconds after T0, which is a multiple of 60, so bucket boundaries fall on round
offsets for every bucket size used here (bucket b of size s starts at T0 + b * s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from alertwarden.engine.evaluator import ClockMode, EngineSettings, Evaluator
from alertwarden.engine.records import Transition
from alertwarden.events import Event, Signal
from alertwarden.rules import CompiledRule, RuleDefinition, compile_rule

T0 = 1_699_999_980.0
DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class Ev:
    """An event at T0 + t with these fields, live when `arrival` (seconds after T0) is set."""

    t: float
    fields: dict[str, Any] = field(default_factory=dict)
    arrival: float | None = None


@dataclass(frozen=True, slots=True)
class Adv:
    """Move the clock to T0 + t."""

    t: float


@dataclass(frozen=True, slots=True)
class Check:
    """Assert a metric at this point: a RuleStats counter, clock_skew, group_count or now."""

    metric: str
    value: float | int
    rule: str = "r"


Step = Ev | Adv | Check
Key = tuple[str | None, ...]
Expected = tuple[float, Key, str, int] | tuple[float, Key, str, int, str]
"""(time after T0, group key, kind, count), plus the rule id when it is not "r"."""


def key_field(value: Any) -> dict[str, Any]:
    return {"k": value}


def events_a(*times: float) -> list[Ev]:
    """Events at T0 + each time, all for group key "a"."""
    return [Ev(t, key_field("a")) for t in times]


def rule(rule_id: str = "r", **overrides: Any) -> CompiledRule:
    spec: dict[str, Any] = {
        "id": rule_id,
        "threshold": 3,
        "window": 30,
        "bucket": 10,
        "cooldown": 0,
        "renotify": 0,
        "group_by": ["k"],
    }
    spec.update(overrides)
    return compile_rule(RuleDefinition.model_validate(spec))


@dataclass(frozen=True, slots=True)
class Case:
    rules: list[CompiledRule]
    steps: list[Step]
    expected: list[Expected]
    max_future_skew_s: float = 60.0


CASES: dict[str, Case] = {
    "fire": Case(
        [rule()],
        [*events_a(1, 2, 3), Check("matched", 3)],
        [(3, ("a",), "fired", 3)],
    ),
    "no second fire while firing": Case(
        [rule()],
        [*events_a(1, 2, 3, 4, 5, 6)],
        [(3, ("a",), "fired", 3)],
    ),
    "cooldown_hit once per episode": Case(
        [rule(threshold=2, window=20, cooldown=100)],
        [*events_a(1, 2), Adv(21), *events_a(22, 23, 24)],
        [(2, ("a",), "fired", 2), (20, ("a",), "recovered", 0), (23, ("a",), "cooldown_hit", 2)],
    ),
    "new cooldown episode after dip": Case(
        [rule(threshold=2, window=20, cooldown=100)],
        [
            *events_a(1, 2, 22, 23),
            # The window is empty at the boundary at 40, which ends the suppressed episode.
            *events_a(41, 42),
        ],
        [
            (2, ("a",), "fired", 2),
            (20, ("a",), "recovered", 0),
            (23, ("a",), "cooldown_hit", 2),
            (42, ("a",), "cooldown_hit", 2),
        ],
    ),
    "cooldown over then event fires": Case(
        [rule(threshold=2, window=20, cooldown=30)],
        [*events_a(1, 2, 25, 26, 32)],
        [
            (2, ("a",), "fired", 2),
            (20, ("a",), "recovered", 0),
            (26, ("a",), "cooldown_hit", 2),
            (32, ("a",), "fired", 3),
        ],
    ),
    "cooldown over then tick fires": Case(
        [rule(threshold=2, window=20, cooldown=28)],
        [*events_a(1, 2, 25, 26), Adv(35)],
        [
            (2, ("a",), "fired", 2),
            (20, ("a",), "recovered", 0),
            (26, ("a",), "cooldown_hit", 2),
            (30, ("a",), "fired", 2),
        ],
    ),
    "renotify due at ticks": Case(
        [rule(threshold=2, window=60, renotify=15)],
        [*events_a(1, 2), Adv(25), Adv(45)],
        [(2, ("a",), "fired", 2), (20, ("a",), "renotified", 2), (40, ("a",), "renotified", 2)],
    ),
    "renotify zero never renotifies": Case(
        [rule(threshold=2, window=60, renotify=0)],
        [*events_a(1, 2), Adv(55), Ev(56, key_field("a"))],
        [(2, ("a",), "fired", 2)],
    ),
    "recover at boundary count drops": Case(
        [rule()],
        [*events_a(5, 12, 25), Adv(45)],
        [(25, ("a",), "fired", 3), (30, ("a",), "recovered", 2)],
    ),
    "late event dropped and counted": Case(
        [rule()],
        [
            Ev(100, key_field("a")),
            # Bucket 7 is the newest bucket outside the window of buckets 8..10.
            Ev(79.9, key_field("a")),
            Check("late", 1),
            Ev(80, key_field("a")),
            Ev(81, key_field("a")),
            Check("late", 1),
            Check("now", T0 + 100),
        ],
        [(100, ("a",), "fired", 3)],
    ),
    "out of order event counted": Case(
        [rule()],
        [*events_a(20, 10, 15), Check("late", 0)],
        [(20, ("a",), "fired", 3)],
    ),
    "skewed event counted at now": Case(
        [rule()],
        [
            Ev(100, key_field("a"), arrival=100),
            Ev(10_000, key_field("a"), arrival=101),
            Check("clock_skew", 1),
            Check("now", T0 + 100),
            Ev(105, key_field("a"), arrival=105),
            Adv(135),
        ],
        [(105, ("a",), "fired", 3), (130, ("a",), "recovered", 0)],
    ),
    "skewed first event counted at arrival": Case(
        [rule()],
        [
            Ev(DAY_S, key_field("a"), arrival=100),
            Check("clock_skew", 1),
            Check("now", T0 + 100),
            Ev(101, key_field("a"), arrival=101),
            Ev(102, key_field("a"), arrival=102),
        ],
        [(102, ("a",), "fired", 3)],
        max_future_skew_s=300,
    ),
    "missing key grouped as None": Case(
        [rule()],
        [
            Ev(1, {}), Ev(2, key_field(None)), Ev(3, key_field("")),
            Check("missing_key", 3), Check("group_count", 1),
        ],
        [(3, (None,), "fired", 3)],
    ),
    "missing key skipped": Case(
        [rule(on_missing_key="skip")],
        [
            Ev(1, {}), Ev(2, key_field(None)), Ev(3, key_field("")),
            Check("skipped_missing_key", 3), Check("missing_key", 0), Check("group_count", 0),
        ],
        [],
    ),
    "multi-field key": Case(
        [rule(group_by=["host", "port"])],
        [
            Ev(1, {"host": "h1", "port": 22}),
            Ev(2, {"host": "h1", "port": 23}),
            Ev(3, {"host": "h2", "port": 22}),
            Ev(4, {"host": "h1", "port": 22}),
            Ev(5, {"host": "h1", "port": 22}),
            Check("group_count", 3),
        ],
        [(5, ("h1", "22"), "fired", 3)],
    ),
    "empty group_by one group": Case(
        [rule(group_by=[])],
        [
            Ev(1, key_field("a")), Ev(2, key_field("b")), Ev(3, {}),
            Check("group_count", 1), Check("missing_key", 0),
        ],
        [(3, (), "fired", 3)],
    ),
    "group cap drops new keys": Case(
        [rule(max_groups=2)],
        [
            Ev(1, key_field("a")), Ev(2, key_field("b")), Ev(3, key_field("c")),
            Check("capped", 1), Check("group_count", 2),
            Ev(4, key_field("a")), Ev(5, key_field("c")),
            Ev(6, key_field("a")), Ev(7, key_field("c")),
            Check("capped", 3),
        ],
        [(6, ("a",), "fired", 3)],
    ),
    "forgotten after window empties": Case(
        [rule(threshold=5)],
        [
            Ev(1, key_field("a")), Ev(2, key_field("b")),
            Check("group_count", 2),
            Adv(25),
            Check("group_count", 2),
            Adv(30),
            Check("group_count", 0),
        ],
        [],
    ),
    "eviction keeps cooldown state": Case(
        [rule(threshold=2, window=20, cooldown=100)],
        [
            *events_a(1, 2),
            Adv(45),
            # The window is empty but the cooldown runs until 102, so the group stays.
            Check("group_count", 1),
            *events_a(50, 51),
            Adv(200),
            Check("group_count", 0),
            *events_a(201, 202),
        ],
        [
            (2, ("a",), "fired", 2),
            (20, ("a",), "recovered", 0),
            (51, ("a",), "cooldown_hit", 2),
            (202, ("a",), "fired", 2),
        ],
    ),
    "gap of days": Case(
        [rule(threshold=2)],
        [
            *events_a(1, 2),
            Ev(3 * DAY_S + 5, key_field("a")),
            Check("group_count", 1),
            Ev(3 * DAY_S + 6, key_field("a")),
            Adv(7 * DAY_S),
            Check("group_count", 0),
        ],
        [
            (2, ("a",), "fired", 2),
            (30, ("a",), "recovered", 0),
            (3 * DAY_S + 6, ("a",), "fired", 2),
            (3 * DAY_S + 30, ("a",), "recovered", 0),
        ],
    ),
    "two bucket sizes interleaved": Case(
        [
            rule("slow", threshold=2, window=40, bucket=20, group_by=[]),
            rule("fast", threshold=2, window=10, bucket=5, group_by=[]),
        ],
        [Ev(1), Ev(2), Ev(33), Ev(34), Adv(100)],
        [
            (2, (), "fired", 2, "slow"),
            (2, (), "fired", 2, "fast"),
            (10, (), "recovered", 0, "fast"),
            (34, (), "fired", 2, "fast"),
            (40, (), "recovered", 0, "fast"),
            (60, (), "recovered", 0, "slow"),
        ],
    ),
    "regex capture as group_by": Case(
        [
            rule(
                group_by=["user"],
                match={"field": "message", "regex": r"login failed for (?P<user>\w+)"},
            )
        ],
        [
            Ev(1, {"message": "login failed for alice"}),
            Ev(2, {"message": "login failed for bob"}),
            Ev(3, {"message": "login ok for alice"}),
            Ev(4, {"message": "login failed for alice"}),
            Ev(5, {"message": "login failed for alice"}),
            Check("matched", 4),
            Check("group_count", 2),
        ],
        [(5, ("alice",), "fired", 3)],
    ),
}


def run_steps(case: Case) -> tuple[Evaluator, list[Transition]]:
    settings = EngineSettings(clock=ClockMode.EVENT, max_future_skew_s=case.max_future_skew_s)
    evaluator = Evaluator(case.rules, settings, tenant="t", rule_group="g")
    out: list[Transition] = []
    for offset, step in enumerate(case.steps):
        if isinstance(step, Ev):
            arrival_s = None if step.arrival is None else T0 + step.arrival
            event = Event(T0 + step.t, dict(step.fields), Signal.LOGS, f"e{offset}")
            out.extend(evaluator.ingest(event, offset, arrival_s))
        elif isinstance(step, Adv):
            out.extend(evaluator.advance(T0 + step.t, offset))
        else:
            assert read_metric(evaluator, step) == step.value, f"step {offset}: {step}"
    return evaluator, out


def read_metric(evaluator: Evaluator, check: Check) -> float | int | None:
    if check.metric == "clock_skew":
        return evaluator.stats.clock_skew
    if check.metric == "group_count":
        return evaluator.group_count(check.rule)
    if check.metric == "now":
        return evaluator.now
    return int(getattr(evaluator.stats.rules[check.rule], check.metric))


def normalise(item: Expected) -> tuple[float, str, tuple[str | None, ...], str, int]:
    rule_id = item[4] if len(item) == 5 else "r"
    return (T0 + item[0], rule_id, item[1], item[2], item[3])


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_transitions(case: Case) -> None:
    _, got = run_steps(case)
    rows = [(t.at, t.rule_id, t.key, t.kind.value, t.count) for t in got]
    expected = [normalise(item) for item in case.expected]

    times = [row[0] for row in rows]
    assert times == sorted(times), "transitions out of time order"
    assert sorted(rows, key=repr) == sorted(expected, key=repr)


def test_transition_group_names_fields() -> None:
    _, got = run_steps(CASES["multi-field key"])
    assert got[0].group == (("host", "h1"), ("port", "22"))
