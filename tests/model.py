"""A brute-force reference model of rule evaluation, written from the documented semantics.

The model keeps the bucket of every counted event and recounts the whole window at every
evaluation point, and it never forgets a group. It shares no code with the engine, so the
property tests can compare the two. It covers one rule per model and the event clock only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

MISSING = object()
"""Marks a group_by field that is absent from the event."""

ModelKey = tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class ModelRule:
    """The rule parameters that the model uses. Durations are whole seconds."""

    threshold: int
    bucket_s: int
    n_buckets: int
    cooldown_s: int
    renotify_s: int
    group_by: tuple[str, ...] = ()
    skip_missing_key: bool = False
    max_future_skew_s: float = 60.0

    @property
    def window_s(self) -> int:
        return self.bucket_s * self.n_buckets


@dataclass(frozen=True, slots=True)
class ModelTransition:
    """One expected transition: time of the evaluation, group key, kind name and window count."""

    at: float
    key: ModelKey
    kind: str
    count: int


@dataclass(slots=True)
class _GroupState:
    firing: bool = False
    last_notified_at: float | None = None
    suppressed: bool = False
    buckets: list[int] = field(default_factory=list)


@dataclass(slots=True)
class ModelCounters:
    late: int = 0
    missing_key: int = 0
    skipped_missing_key: int = 0
    clock_skew: int = 0


class Model:
    """Reference evaluator of one rule: feed it events and clock moves, then read `transitions`."""

    def __init__(self, rule: ModelRule) -> None:
        self.rule = rule
        self.now: float | None = None
        self.groups: dict[ModelKey, _GroupState] = {}
        self.transitions: list[ModelTransition] = []
        self.counters = ModelCounters()

    def bucket_of(self, time_s: float) -> int:
        return math.floor(time_s / self.rule.bucket_s)

    def event(
        self, time_s: float, fields: Mapping[str, object], arrival_s: float | None = None
    ) -> None:
        """Apply one matching event: move the clock, then count it and evaluate its group."""
        skewed = arrival_s is not None and time_s > arrival_s + self.rule.max_future_skew_s
        if skewed:
            self.counters.clock_skew += 1
            assert arrival_s is not None
            # A skewed event starts a stopped clock at its arrival, otherwise counts at now.
            if self.now is None:
                self.now = arrival_s
            time_s = self.now
        else:
            self.advance(time_s)
        assert self.now is not None

        if self.bucket_of(time_s) <= self.bucket_of(self.now) - self.rule.n_buckets:
            self.counters.late += 1
            return
        key = self._key(fields)
        if key is None:
            return
        group = self.groups.setdefault(key, _GroupState())
        group.buckets.append(self.bucket_of(time_s))
        self._evaluate(key, group, self.now)

    def advance(self, now_s: float) -> None:
        """Move the clock forward, evaluating every group at each bucket boundary crossed."""
        if self.now is None:
            self.now = now_s
            return
        if now_s <= self.now:
            return
        first = self.bucket_of(self.now) + 1
        last = self.bucket_of(now_s)
        for bucket in range(first, last + 1):
            at = float(bucket * self.rule.bucket_s)
            for key, group in self.groups.items():
                self._evaluate(key, group, at)
        self.now = now_s

    def _key(self, fields: Mapping[str, object]) -> ModelKey | None:
        values: list[str | None] = []
        for name in self.rule.group_by:
            raw = fields.get(name, MISSING)
            if raw is MISSING or raw is None or raw == "":
                values.append(None)
            elif isinstance(raw, str):
                values.append(raw)
            else:
                values.append(repr(raw))
        if None in values:
            if self.rule.skip_missing_key:
                self.counters.skipped_missing_key += 1
                return None
            self.counters.missing_key += 1
        return tuple(values)

    def _window_count(self, group: _GroupState, at: float) -> int:
        newest = self.bucket_of(at)
        oldest = newest - self.rule.n_buckets + 1
        return sum(1 for bucket in group.buckets if oldest <= bucket <= newest)

    def _evaluate(self, key: ModelKey, group: _GroupState, at: float) -> None:
        rule = self.rule
        count = self._window_count(group, at)
        kind: str | None = None
        if group.firing:
            if count < rule.threshold:
                kind = "recovered"
                group.firing = False
            elif rule.renotify_s > 0 and at - _time(group.last_notified_at) >= rule.renotify_s:
                kind = "renotified"
                group.last_notified_at = at
        elif count >= rule.threshold:
            last = group.last_notified_at
            if last is None or at - last >= rule.cooldown_s:
                kind = "fired"
                group.firing = True
                group.suppressed = False
                group.last_notified_at = at
            elif not group.suppressed:
                kind = "cooldown_hit"
                group.suppressed = True
        else:
            group.suppressed = False
        if kind is not None:
            self.transitions.append(ModelTransition(at, key, kind, count))


def _time(value: float | None) -> float:
    assert value is not None, "a firing group always has a notification time"
    return value
