"""The evaluator of one tenant + rule group: clock, bucket boundaries, counting and transitions.

Everything here is pure: no I/O, no wall clock. The caller passes event times, arrival times and
`now`, so tests drive it with a fake clock. docs/semantics.md is the contract this file follows.

Input steps: every input record has an offset (byte offset or stream sequence). The boundary
ticks a record triggers run at step base + 2 * offset and the record itself at the step after.
`base` is constant while an input is replayed and moves above every stored position when the
input cannot be replayed (stdin, a replaced file), so positions never go backwards. Restored
groups whose stored state is ahead of the checkpoint are frozen until the replay passes their
step, which is how a state written at a transition is never counted twice.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from alertwarden.engine.records import (
    Checkpoint,
    GroupKey,
    GroupSnapshot,
    GroupStatus,
    Transition,
    TransitionKind,
)
from alertwarden.engine.table import FIRING, NO_TIME, SUPPRESSED, GroupTable
from alertwarden.events import Event, FieldPath, Signal


class ClockMode(enum.StrEnum):
    EVENT = "event"
    WALL = "wall"


class RuleLike(Protocol):
    """The part of a compiled rule (alertwarden.rules.CompiledRule) that the evaluator reads."""

    @property
    def id(self) -> str: ...
    @property
    def signal(self) -> Signal: ...
    @property
    def threshold(self) -> int: ...
    @property
    def window_s(self) -> int: ...
    @property
    def bucket_s(self) -> int: ...
    @property
    def cooldown_s(self) -> int: ...
    @property
    def renotify_s(self) -> int: ...
    @property
    def group_by(self) -> tuple[str, ...]: ...
    @property
    def group_by_paths(self) -> tuple[FieldPath, ...]: ...
    @property
    def on_missing_key(self) -> str: ...
    @property
    def max_groups(self) -> int: ...

    def match(self, fields: dict[str, Any]) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True, slots=True)
class EngineSettings:
    clock: ClockMode = ClockMode.EVENT
    max_future_skew_s: float = 60.0


@dataclass(slots=True)
class RuleStats:
    """Counters of one rule; the runner exports them as metrics."""

    matched: int = 0
    late: int = 0
    missing_key: int = 0
    skipped_missing_key: int = 0
    wrong_type_key: int = 0
    invalid_key: int = 0
    capped: int = 0
    groups_opened: int = 0
    transitions: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class EngineStats:
    events: int = 0
    unmatched: int = 0
    clock_skew: int = 0
    rules: dict[str, RuleStats] = field(default_factory=dict)


@dataclass(slots=True)
class RestoreReport:
    """Outcome of a restore, for the runner to log."""

    groups: int = 0
    frozen: int = 0
    reset_rules: set[str] = field(default_factory=set)
    # `recovered` transitions for groups that were firing when their rule's window or bucket
    # changed. The pipeline stores and sends them, so receivers see the alert resolve.
    reset_transitions: list[Transition] = field(default_factory=list)
    dropped_unknown_rules: set[str] = field(default_factory=set)


_WRONG_TYPE = object()

MAX_KEY_CHARS = 400
"""Maximum length of a group key, in characters of all its values together. Longer keys, and values with a
NUL byte, cannot be stored (a PostgreSQL btree index row holds at most 2704 bytes, and neither
SQLite nor PostgreSQL text holds NUL), so such events skip the rule and count as invalid_key."""
_NO_CAPTURES: Mapping[str, Any] = MappingProxyType({})
"""Captures of a rule that matched through its index hint alone, which captures nothing."""
MAX_CAPTURE_CHARS = 1024
"""Maximum length of a regex capture kept with a transition for rendering annotations."""


class _RuleDispatch:
    """Picks the rules an event can match, so most events test one rule and not all of them.

    A rule with an index hint can only match an event whose string value at the hint's path is
    one of the hint's values. Rules without a hint, and every rule when the value is not a
    string, go through their full match filter. When the hint is the whole filter (it is
    `sufficient`), a value in the hint matches the rule without running the filter.
    """

    def __init__(self, states: list[_RuleState]) -> None:
        # Candidates are (rule state, matched for certain) pairs.
        self._all = [(state, False) for state in states]
        self._always: list[tuple[_RuleState, bool]] = []
        # path text -> (path, folded value -> rules, exact value -> rules, all rules on the path)
        self._indexes: dict[
            str,
            tuple[
                FieldPath,
                dict[str, list[tuple[_RuleState, bool]]],
                dict[str, list[tuple[_RuleState, bool]]],
                list[tuple[_RuleState, bool]],
            ],
        ] = {}
        for state in states:
            hint = getattr(state.rule, "index_hint", None)
            if hint is None:
                self._always.append((state, False))
                continue
            path, folded, exact, members = self._indexes.setdefault(
                hint.path.text, (hint.path, {}, {}, [])
            )
            members.append((state, False))
            table = exact if hint.case_sensitive else folded
            for value in hint.values:
                table.setdefault(value, []).append((state, hint.sufficient))
        self._simple = not self._indexes

    def candidates(self, fields: dict[str, Any]) -> list[tuple[_RuleState, bool]]:
        """Return the rules `fields` may match, each with True when it matches for certain."""
        if self._simple:
            return self._all
        found = list(self._always)
        for path, folded, exact, members in self._indexes.values():
            value = path.get(fields)
            if value.__class__ is not str:
                found.extend(members)
                continue
            if folded:
                found.extend(folded.get(value.casefold(), ()))
            if exact:
                found.extend(exact.get(value, ()))
        return found


class _RuleState:
    """Per-rule evaluation state: the group table plus clock bookkeeping."""

    __slots__ = (
        "rule",
        "table",
        "n_buckets",
        "bucket_s",
        "now_bucket",
        "ticked",
        "active",
        "forgotten",
        "frozen",
        "stats",
        "single_path",
    )

    def __init__(self, rule: RuleLike) -> None:
        self.rule = rule
        self.bucket_s = rule.bucket_s
        self.n_buckets = rule.window_s // rule.bucket_s
        self.table = GroupTable(self.n_buckets)
        self.now_bucket: int | None = None
        # Last bucket whose boundary was evaluated; None until the clock first moves.
        self.ticked: int | None = None
        # Slots that can change at a boundary: firing, in a cooldown_hit episode, or restored.
        self.active: set[int] = set()
        self.forgotten: set[GroupKey] = set()
        self.frozen: dict[GroupKey, int] = {}
        self.stats = RuleStats()
        # The common one-field key, looked up without the general loop.
        self.single_path = rule.group_by_paths[0] if len(rule.group_by_paths) == 1 else None


class Evaluator:
    """Evaluates the rules of one tenant + rule group over one input, in input order."""

    def __init__(
        self,
        rules: Sequence[RuleLike],
        settings: EngineSettings | None = None,
        *,
        tenant: str = "default",
        rule_group: str = "default",
    ) -> None:
        self.settings = settings or EngineSettings()
        self.tenant = tenant
        self.rule_group = rule_group
        self.now: float | None = None
        self._states = [_RuleState(rule) for rule in rules]
        self._by_id = {state.rule.id: state for state in self._states}
        self._logs_dispatch = _RuleDispatch(
            [s for s in self._states if s.rule.signal is not Signal.EVENTS]
        )
        self._events_dispatch = _RuleDispatch(
            [s for s in self._states if s.rule.signal is not Signal.LOGS]
        )
        self.stats = EngineStats(rules={s.rule.id: s.stats for s in self._states})
        self.flush_interval_s = min((s.bucket_s for s in self._states), default=60)
        # Rows of rules that no longer exist or whose window changed; deleted by the next flush.
        self._orphans: list[tuple[str, GroupKey]] = []
        # Step of the work in progress; a transition snapshots its group with it as position.
        self._step = 0
        self._position_base = 0
        # Earliest time at which some rule crosses a bucket boundary; below it advance() only
        # moves the clock.
        self._next_boundary_s = -math.inf

    # ----------------------------------------------------------------- clock

    def effective_time(self, time_s: float, arrival_s: float | None = None) -> tuple[float, bool]:
        """Return the time an event counts at and whether it is clock-skewed; change nothing.

        Live (an arrival time is known), an event stamped more than max_future_skew_s ahead of
        its arrival is skewed and counts at `now`, or at its arrival when the clock has not
        started. With the wall clock, an event stamped after `now` counts at `now`, and it is
        skewed when it is more than max_future_skew_s ahead.
        """
        now = self.now
        skew_s = self.settings.max_future_skew_s
        if arrival_s is not None and time_s > arrival_s + skew_s:
            return (now if now is not None else arrival_s), True
        if self.settings.clock is ClockMode.WALL and now is not None and time_s > now:
            return now, time_s > now + skew_s
        return time_s, False

    def advance(self, now_s: float, offset: int = 0) -> list[Transition]:
        """Move the clock to `now_s` and evaluate every bucket boundary crossed, in time order.

        The clock never moves backwards; an earlier `now_s` changes nothing.
        """
        out: list[Transition] = []
        if self.now is not None:
            if now_s <= self.now:
                return out
            if now_s < self._next_boundary_s:
                # Same bucket for every rule: nothing to evaluate, only the clock moves.
                self.now = now_s
                return out
        step = self._position_base + 2 * offset
        for state in self._states:
            target = int(now_s // state.bucket_s)
            if state.ticked is None:
                # The first event starts the clock: there is no earlier boundary to evaluate.
                state.ticked = target
            elif target > state.ticked:
                self._tick_until(state, target, step, out)
            state.now_bucket = target
        self.now = now_s
        self._update_next_boundary()
        if len(self._states) > 1 and out:
            out.sort(key=_transition_time)
        return out

    def _update_next_boundary(self) -> None:
        self._next_boundary_s = min(
            ((state.now_bucket + 1) * state.bucket_s for state in self._states if state.now_bucket is not None),
            default=-math.inf,
        )

    # ------------------------------------------------------------- counting

    def ingest(
        self, event: Event, offset: int = 0, arrival_s: float | None = None
    ) -> list[Transition]:
        """Advance the clock for `event`, count it for every rule it matches, and evaluate."""
        out = self.advance_for(event, offset, arrival_s)
        out.extend(self.count(event, offset, arrival_s))
        return out

    def advance_for(
        self, event: Event, offset: int = 0, arrival_s: float | None = None
    ) -> list[Transition]:
        """Run the boundary ticks that `event` triggers; the runner may flush after this."""
        return self.advance(self.advance_target(event, arrival_s), offset)

    def advance_target(self, event: Event, arrival_s: float | None = None) -> float:
        """Return the time advance_for() moves the clock to for `event`; change nothing.

        The clock ends at the larger of this and `now`.
        """
        clock = self.settings.clock
        if clock is ClockMode.WALL and arrival_s is not None:
            return arrival_s
        if arrival_s is None and clock is ClockMode.EVENT:
            return event.time_s
        return self.effective_time(event.time_s, arrival_s)[0]

    def count(
        self, event: Event, offset: int = 0, arrival_s: float | None = None
    ) -> list[Transition]:
        """Count `event` for every rule it matches and evaluate those groups.

        Call after advance_for() for the same event: this never moves the clock.
        """
        out: list[Transition] = []
        stats = self.stats
        stats.events += 1
        if arrival_s is None and self.settings.clock is ClockMode.EVENT:
            time_s = event.time_s
        else:
            time_s, skewed = self.effective_time(event.time_s, arrival_s)
            if skewed:
                stats.clock_skew += 1
        if self.now is None or time_s > self.now:
            # Only reachable when count() is called without advance_for() first.
            out.extend(self.advance(time_s, offset))
        dispatch = self._events_dispatch if event.signal is Signal.EVENTS else self._logs_dispatch
        fields = event.fields
        step = self._position_base + 2 * offset + 1
        self._step = step
        matched_any = False
        for state, certain in dispatch.candidates(fields):
            captures = _NO_CAPTURES if certain else state.rule.match(fields)
            if captures is None:
                continue
            matched_any = True
            self._count_for_rule(state, fields, captures, time_s, step, out)
        if not matched_any:
            stats.unmatched += 1
        return out

    def _count_for_rule(
        self,
        state: _RuleState,
        fields: dict[str, Any],
        captures: Mapping[str, Any],
        time_s: float,
        step: int,
        out: list[Transition],
    ) -> None:
        rule = state.rule
        stats = state.stats
        stats.matched += 1
        bucket = int(time_s // state.bucket_s)
        now_bucket = state.now_bucket
        assert now_bucket is not None
        if bucket <= now_bucket - state.n_buckets:
            stats.late += 1
            return

        key = self._group_key(state, fields, captures)
        if key is None:
            return
        table = state.table
        slot = table.slots.get(key)
        if slot is None:
            if len(table.slots) >= rule.max_groups:
                stats.capped += 1
                return
            slot = table.add(key, bucket)
            stats.groups_opened += 1
            state.forgotten.discard(key)
        elif state.frozen and key in state.frozen:
            if step <= state.frozen[key]:
                return
            del state.frozen[key]

        head = table.heads[slot]
        if bucket > head:
            table.advance_head(slot, bucket)
            head = bucket
        n_buckets = state.n_buckets
        table.counts[slot * n_buckets + bucket % n_buckets] += 1
        total = table.totals[slot] + 1
        table.totals[slot] = total
        if not time_s <= table.last_seen[slot]:  # also true when last_seen is NaN
            table.last_seen[slot] = time_s
        if not table.dirty_flags[slot]:
            table.dirty_flags[slot] = 1
            table.dirty_slots.append(slot)

        count = total if head == now_bucket else table.window_count(slot, now_bucket)
        flags = table.flags[slot]
        # Fast path: most events leave an ok group below its threshold.
        if flags == 0 and count < rule.threshold:
            return
        now = self.now
        assert now is not None
        self._evaluate(state, slot, now, count, out, captures)

    def _group_key(
        self, state: _RuleState, fields: dict[str, Any], captures: Mapping[str, Any]
    ) -> GroupKey | None:
        """Build the group key, or return None when the event is not counted for this rule."""
        rule = state.rule
        if state.single_path is not None and not captures:
            raw = state.single_path.get(fields)
            if raw.__class__ is str and raw and len(raw) <= MAX_KEY_CHARS and "\x00" not in raw:
                return (raw,)
        values: list[str | None] = []
        missing = False
        key_chars = 0
        for name, path in zip(rule.group_by, rule.group_by_paths):
            raw = captures[name] if name in captures else path.get(fields)
            value = _key_value(raw)
            if value is _WRONG_TYPE:
                state.stats.wrong_type_key += 1
                return None
            if value is None:
                missing = True
            else:
                key_chars += len(value)
                if key_chars > MAX_KEY_CHARS or "\x00" in value:
                    state.stats.invalid_key += 1
                    return None
            values.append(value)
        if missing:
            if rule.on_missing_key == "skip":
                state.stats.skipped_missing_key += 1
                return None
            state.stats.missing_key += 1
        return tuple(values)

    # ------------------------------------------------------- state machine

    def _evaluate(
        self,
        state: _RuleState,
        slot: int,
        now: float,
        count: int,
        out: list[Transition],
        captures: Mapping[str, Any] | None = None,
    ) -> None:
        """Apply the transition rules to one group at time `now` with window count `count`.

        ok, count >= threshold: fired, unless the last notification is younger than the
        cooldown; then cooldown_hit, written once per episode. An episode ends when the group
        fires or its count falls below the threshold.
        firing, count >= threshold: renotified when renotify_s > 0 and it is due.
        firing, count < threshold: recovered.
        """
        rule = state.rule
        table = state.table
        flags = table.flags[slot]
        kind: TransitionKind | None = None

        if flags & FIRING:
            if count >= rule.threshold:
                if rule.renotify_s > 0 and now - table.last_notified[slot] >= rule.renotify_s:
                    kind = TransitionKind.RENOTIFIED
                    table.last_notified[slot] = now
            else:
                kind = TransitionKind.RECOVERED
                table.flags[slot] = 0
        elif count >= rule.threshold:
            last_notified = table.last_notified[slot]
            if math.isnan(last_notified) or now - last_notified >= rule.cooldown_s:
                kind = TransitionKind.FIRED
                table.flags[slot] = FIRING
                table.last_fired[slot] = now
                table.last_notified[slot] = now
            elif not flags & SUPPRESSED:
                kind = TransitionKind.COOLDOWN_HIT
                table.flags[slot] = flags | SUPPRESSED
        elif flags & SUPPRESSED:
            table.flags[slot] = flags & ~SUPPRESSED

        new_flags = table.flags[slot]
        if new_flags != flags:
            table.mark_dirty(slot)
        if new_flags:
            state.active.add(slot)
        else:
            state.active.discard(slot)
        if kind is not None:
            state.stats.transitions[kind.value] += 1
            out.append(self._transition(state, slot, now, count, kind, captures))

    def _transition(
        self,
        state: _RuleState,
        slot: int,
        now: float,
        count: int,
        kind: TransitionKind,
        captures: Mapping[str, Any] | None,
    ) -> Transition:
        rule = state.rule
        key = state.table.keys[slot]
        assert key is not None
        return Transition(
            at=now,
            rule_id=rule.id,
            group=tuple(zip(rule.group_by, key)),
            kind=kind,
            count=count,
            threshold=rule.threshold,
            window_s=rule.window_s,
            snapshot=self._snapshot(state, slot, self._step),
            captures=_storable_captures(captures) if captures else {},
        )

    # --------------------------------------------------------------- ticks

    def _tick_until(self, state: _RuleState, target: int, step: int, out: list[Transition]) -> None:
        """Evaluate the boundaries (state.ticked, target] of one rule in order.

        Stretches where no group is active and nothing is due are skipped in one jump, so a long
        gap between events costs the number of boundaries where something can happen.
        """
        table = state.table
        bucket = state.ticked + 1 if state.ticked is not None else target
        while bucket <= target:
            if not state.active:
                due = table.next_due()
                if due is None or due > target:
                    break
                bucket = max(bucket, due)
            self._tick(state, bucket, step, out)
            bucket += 1
        state.ticked = target

    def _tick(self, state: _RuleState, bucket: int, step: int, out: list[Transition]) -> None:
        """Evaluate one boundary of one rule: active groups first, then windows that emptied."""
        now = float(bucket * state.bucket_s)
        table = state.table
        frozen = state.frozen
        self._step = step
        for slot in sorted(state.active):
            if frozen and self._is_frozen(state, slot, step):
                continue
            self._evaluate(state, slot, now, table.window_count(slot, bucket), out)

        n = state.n_buckets
        cooldown_s = state.rule.cooldown_s
        for slot in table.pop_due(bucket):
            key = table.keys[slot]
            if key is None or table.heads[slot] + n > bucket:
                continue  # slot freed, or the group received events after this was scheduled
            if frozen and self._is_frozen(state, slot, step):
                table.schedule(slot, bucket + 1)
                continue
            if table.flags[slot]:
                continue  # still firing or suppressed; it is active and evaluated every tick
            last_notified = table.last_notified[slot]
            if not math.isnan(last_notified) and now - last_notified < cooldown_s:
                # Keep last_notified_at until the cooldown ends, or a new crossing would fire.
                ends_at = last_notified + cooldown_s
                table.schedule(slot, max(bucket + 1, math.ceil(ends_at / state.bucket_s)))
                continue
            state.active.discard(slot)
            state.forgotten.add(table.remove(slot))

    def _is_frozen(self, state: _RuleState, slot: int, step: int) -> bool:
        key = state.table.keys[slot]
        position = state.frozen.get(key)  # type: ignore[arg-type]
        if position is None:
            return False
        if step <= position:
            return True
        del state.frozen[key]  # type: ignore[arg-type]
        return False

    # ------------------------------------------------ snapshots and restore

    def _snapshot(self, state: _RuleState, slot: int, position: int) -> GroupSnapshot:
        table = state.table
        key = table.keys[slot]
        assert key is not None
        flags = table.flags[slot]
        return GroupSnapshot(
            rule_id=state.rule.id,
            key=key,
            window_s=state.rule.window_s,
            bucket_s=state.bucket_s,
            counts=table.ring(slot),
            head_bucket=table.heads[slot],
            last_seen_at=table.last_seen[slot],
            last_fired_at=_optional_time(table.last_fired[slot]),
            last_notified_at=_optional_time(table.last_notified[slot]),
            status=GroupStatus.FIRING if flags & FIRING else GroupStatus.OK,
            suppressed=bool(flags & SUPPRESSED),
            position=position,
        )

    def drain_changes(
        self, offset: int
    ) -> tuple[list[GroupSnapshot], list[tuple[str, GroupKey]], list[tuple[str, GroupKey]]]:
        """Return the groups changed, forgotten and obsolete since the last call; reset the lists.

        Frozen groups are left out: their stored state is newer than anything the replay has
        rebuilt so far. Obsolete groups are the stored rows that the restore dropped (see
        FlushBatch.obsolete).
        """
        position = self._position_base + 2 * offset
        changed: list[GroupSnapshot] = []
        forgotten: list[tuple[str, GroupKey]] = []
        obsolete: list[tuple[str, GroupKey]] = []
        for state in self._states:
            keys = state.table.keys
            for slot in state.table.take_dirty():
                if state.frozen and keys[slot] in state.frozen:
                    continue
                changed.append(self._snapshot(state, slot, position))
            forgotten.extend((state.rule.id, key) for key in state.forgotten)
            state.forgotten.clear()
        for rule_id, key in self._orphans:
            # A group that counts again under the rule's new window is live. Its snapshot,
            # upserted in the same flush, replaces the old row, so a delete would remove it.
            live = self._by_id.get(rule_id)
            if live is None or key not in live.table.slots:
                obsolete.append((rule_id, key))
        self._orphans = []
        return changed, forgotten, obsolete

    def requeue(
        self,
        changed: Sequence[GroupSnapshot],
        forgotten: Sequence[tuple[str, GroupKey]],
        obsolete: Sequence[tuple[str, GroupKey]] = (),
    ) -> None:
        """Mark drained changes as pending again after a flush that failed.

        The next drain snapshots the groups as they are then, so nothing is lost and nothing
        stale is written.
        """
        for snap in changed:
            state = self._by_id.get(snap.rule_id)
            slot = state.table.slots.get(snap.key) if state is not None else None
            if state is not None and slot is not None:
                state.table.mark_dirty(slot)
        for rule_id, key in forgotten:
            state = self._by_id.get(rule_id)
            if state is None:
                self._orphans.append((rule_id, key))
            elif key not in state.table.slots:
                state.forgotten.add(key)
        # The next drain leaves out those whose group has counted again by then.
        self._orphans.extend(obsolete)

    def checkpoint(self, source: str, offset: int) -> Checkpoint:
        """Return the checkpoint for a flush taken before the record at `offset` is applied."""
        ticked = {s.rule.id: s.ticked for s in self._states if s.ticked is not None}
        return Checkpoint(
            source=source,
            offset=offset,
            position=self._position_base + 2 * offset,
            now=self.now,
            ticked=ticked,
        )

    def restore(
        self,
        groups: dict[str, list[GroupSnapshot]],
        checkpoint: Checkpoint | None,
        *,
        replay: bool = True,
    ) -> RestoreReport:
        """Rebuild state from stored snapshots and the checkpoint they were flushed with.

        With `replay`, the input is re-read from checkpoint.offset and groups stored at a later
        position stay frozen until the replay passes it. Without it (stdin, a replaced file) the
        stored state is taken as current and nothing is frozen.
        """
        report = RestoreReport()
        self._orphans = []
        if checkpoint is not None and checkpoint.now is not None:
            self.now = checkpoint.now
            for state in self._states:
                state.now_bucket = int(checkpoint.now // state.bucket_s)
                state.ticked = checkpoint.ticked.get(state.rule.id, state.now_bucket)
            self._update_next_boundary()
        base_position = checkpoint.position if checkpoint is not None else -1
        if replay and checkpoint is not None:
            self._position_base = checkpoint.position - 2 * checkpoint.offset
        elif not replay:
            # Offsets start again at 0, so start positions above everything stored.
            stored = [snap.position for snaps in groups.values() for snap in snaps]
            self._position_base = max([base_position, *stored]) + 2
        for rule_id, snapshots in groups.items():
            found = self._by_id.get(rule_id)
            if found is None:
                report.dropped_unknown_rules.add(rule_id)
                self._orphans.extend((rule_id, snap.key) for snap in snapshots)
                continue
            state = found
            for snap in snapshots:
                if snap.window_s != state.rule.window_s or snap.bucket_s != state.bucket_s:
                    report.reset_rules.add(rule_id)
                    self._orphans.append((rule_id, snap.key))
                    if snap.status is GroupStatus.FIRING:
                        at = checkpoint.now if checkpoint and checkpoint.now is not None else snap.last_seen_at
                        report.reset_transitions.append(_reset_transition(state.rule, snap, at))
                    continue
                self._restore_group(state, snap)
                report.groups += 1
                if replay and snap.position > base_position:
                    state.frozen[snap.key] = snap.position
                    report.frozen += 1
        return report

    def resume_at(self, now_s: float) -> list[Transition]:
        """Jump the clock to `now_s` after a restore whose input cannot be replayed.

        Buckets that left the window during the downtime drop out, and every restored group is
        evaluated once at `now_s` against the window as it is now, not at each boundary it
        missed: a group that was firing before the downtime recovers now, if its count fell.
        """
        out: list[Transition] = []
        if self.now is not None and now_s <= self.now:
            return out
        self._step = self._position_base
        self.now = now_s
        for state in self._states:
            bucket = int(now_s // state.bucket_s)
            state.ticked = bucket
            state.now_bucket = bucket
        self._update_next_boundary()
        for state in self._states:
            for slot in sorted(state.active):
                count = state.table.window_count(slot, state.now_bucket)  # type: ignore[arg-type]
                self._evaluate(state, slot, now_s, count, out)
        return out

    def _restore_group(self, state: _RuleState, snap: GroupSnapshot) -> None:
        table = state.table
        slot = table.add(snap.key, snap.head_bucket)
        table.load_ring(slot, snap.head_bucket, snap.counts)
        table.last_seen[slot] = snap.last_seen_at
        table.last_fired[slot] = _stored_time(snap.last_fired_at)
        table.last_notified[slot] = _stored_time(snap.last_notified_at)
        flags = FIRING if snap.status is GroupStatus.FIRING else 0
        table.flags[slot] = flags | (SUPPRESSED if snap.suppressed else 0)
        # Evaluated at the next boundary even when ok: the rule's threshold may have changed.
        state.active.add(slot)
        if state.ticked is not None:
            table.schedule(slot, state.ticked + 1)

    # ----------------------------------------------------------- inspection

    def group_count(self, rule_id: str) -> int:
        return len(self._by_id[rule_id].table)

    def snapshots(self, rule_id: str) -> list[GroupSnapshot]:
        """Return the current state of every group of a rule (for the API and tests)."""
        state = self._by_id[rule_id]
        return [
            self._snapshot(state, slot, -1)
            for slot in state.table.slots.values()
        ]

    def window_count(self, rule_id: str, key: GroupKey) -> int:
        state = self._by_id[rule_id]
        slot = state.table.slots.get(key)
        if slot is None or state.now_bucket is None:
            return 0
        return state.table.window_count(slot, state.now_bucket)


def _reset_transition(rule: RuleLike, snap: GroupSnapshot, at: float) -> Transition:
    """Build the `recovered` a firing group gets when its rule's window or bucket changed."""
    return Transition(
        at=at,
        rule_id=rule.id,
        group=tuple(zip(rule.group_by, snap.key)),
        kind=TransitionKind.RECOVERED,
        count=0,
        threshold=rule.threshold,
        window_s=snap.window_s,
        snapshot=snap,
        reason="rule window or bucket changed; the group starts afresh",
    )


def _storable_captures(captures: Mapping[str, Any]) -> dict[str, Any]:
    """Copy captures for a transition, without NUL bytes and cut to MAX_CAPTURE_CHARS.

    They end up in the history's JSON details, which PostgreSQL cannot store with a NUL in them.
    """
    cleaned: dict[str, Any] = {}
    for name, value in captures.items():
        if isinstance(value, str):
            value = value.replace("\x00", "\ufffd")[:MAX_CAPTURE_CHARS]
        cleaned[name] = value
    return cleaned


def _key_value(raw: Any) -> Any:
    """Normalise one group_by value: absent, null and "" are the same missing key (None)."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float):
        return repr(raw)
    return _WRONG_TYPE


def _optional_time(value: float) -> float | None:
    return None if math.isnan(value) else value


def _stored_time(value: float | None) -> float:
    return NO_TIME if value is None else value


def _transition_time(transition: Transition) -> float:
    return transition.at
