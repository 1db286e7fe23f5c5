"""One tenant + rule group end to end: evaluator, store, sinks, flushes and checkpoints.

Order of work for each input record, which is what makes a killed run restart exactly:
1. boundary ticks the record triggers (advance_for); their transitions are stored, then sent;
2. a flush when a flush boundary was crossed: changed groups, forgotten groups and the checkpoint
   (offset of this record, not yet applied) in one transaction;
3. the record itself (count); its transitions are stored, then sent.
A transition is written with its group's new state before any sink receives it, so a crash after the
write neither loses it (it is in the outbox and sent on restart) nor repeats it (the group is
frozen during the replay until the step of the transition).

With defer_transitions (serve), steps 1 and 3 only collect the transitions. They are stored and
sent by emit_deferred(), which the caller runs after a few records, and before every flush, so
no checkpoint is written past a transition that is not stored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alertwarden.engine.evaluator import ClockMode, Evaluator, RestoreReport
from alertwarden.engine.records import FlushBatch, Transition, format_time
from alertwarden.cluster.leases import LeaseLostError
from alertwarden.errors import OutputClosedError, SinkError, StoreError
from alertwarden.events import Event
from alertwarden.logs import RateLimitedLog, get_logger
from alertwarden.rules import CompiledRule, format_duration
from alertwarden.sinks.base import Notification, Sink
from alertwarden.sinks.fanout import FanoutError
from alertwarden.sinks.remote import RemoteDelivery
from alertwarden.store.base import HistoryRecord, StateStore

log = get_logger(__name__)

DEFAULT_HISTORY_RETENTION_S = 7 * 86400
STORE_RETRY_INITIAL_S = 1.0
STORE_RETRY_MAX_S = 60.0
STORE_ERROR_LOG_INTERVAL_S = 60.0
REDELIVER_PAGE = 1_000
"""Outbox rows read and sent at a time when a run starts."""

ResumeResolver = Callable[[str, int], tuple[int, str | None]]
"""(stored source identity, stored offset) -> (offset to resume at, warning or None)."""


@dataclass(slots=True)
class PipelineStats:
    flushes: int = 0
    flushed_rows: int = 0
    transitions: int = 0
    delivered: int = 0
    delivery_failures: int = 0
    pruned: int = 0
    flush_seconds: float = 0.0
    reported: dict[str, int] = field(default_factory=dict)


class RuleGroupPipeline:
    """Drives one Evaluator over one input with a store and a sink."""

    def __init__(
        self,
        evaluator: Evaluator,
        rules: Sequence[CompiledRule],
        store: StateStore,
        sink: Sink,
        *,
        source: str,
        history_retention_s: float = DEFAULT_HISTORY_RETENTION_S,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        remote_sinks: Sequence[Sink] = (),
        delivery_timeout_s: float = 10.0,
        defer_transitions: bool = False,
    ) -> None:
        self.evaluator = evaluator
        self.rules = {rule.id: rule for rule in rules}
        self.store = store
        self.sink = sink
        self.source = source
        self.tenant = evaluator.tenant
        self.rule_group = evaluator.rule_group
        self.history_retention_s = history_retention_s
        self.stats = PipelineStats()
        self.output_closed = False
        # Counter values already logged, so each warning reports what is new since the last.
        self._reported_skew = 0
        self._reported_drops: dict[str, tuple[int, int, int, int]] = {}
        self.resume_offset = 0
        self.resumed = False
        """True after start() when a usable checkpoint set resume_offset."""
        self._flushed_bucket: int | None = None
        self._last_offset = 0
        self._log = log.bind(tenant=self.tenant, rule_group=self.rule_group)
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._store_failures = 0
        self._retry_at = 0.0
        self._error_log = RateLimitedLog(STORE_ERROR_LOG_INTERVAL_S)
        # Transitions made while the store was failing, with whether the sink accepted them.
        self._unstored: list[tuple[Transition, bool]] = []
        # Remote sinks (webhooks) deliver from background tasks; a history row is marked
        # delivered when the local sink and every remote sink have it.
        self._remote = [
            RemoteDelivery(
                remote,
                self._remote_delivered,
                name=getattr(remote, "name", "remote"),
                refill=self._outbox_page,
            )
            for remote in remote_sinks
        ]
        # NOTE: while one remote sink is down and another delivers, the entries of every
        # transition since stay here until the down sink catches up, about 100 bytes each.
        self._remote_waiting: dict[int, int] = {}
        self.delivery_timeout_s = delivery_timeout_s
        # With defer_transitions, process() collects transitions here and emit_deferred(), or
        # the next flush, stores them in one transaction and sends them. The checkpoint never
        # passes a deferred transition, because every flush emits them first.
        self.defer_transitions = defer_transitions
        self._deferred: list[Transition] = []
        self._deferred_since = 0.0

    # ------------------------------------------------------------- lifecycle

    async def start(self, resolve: ResumeResolver, *, replayable: bool = True) -> RestoreReport:
        """Load the stored state, resend undelivered transitions, and set resume_offset.

        `resolve` maps the stored checkpoint to the offset the input can resume at. When that is
        not the checkpoint's own offset (stdin, a replaced file) the input cannot be replayed,
        so the stored state is taken as current.
        """
        for remote in self._remote:
            remote.start()
        stored = await self.store.load(self.tenant, self.rule_group)
        checkpoint = stored.checkpoint
        replay = replayable
        if checkpoint is not None:
            offset, warning = resolve(checkpoint.source, checkpoint.offset)
            replay = replayable and offset == checkpoint.offset and warning is None
            if warning:
                self._log.warning("checkpoint_discarded", reason=warning)
            self.resume_offset = offset
            self.resumed = warning is None
        report = self.evaluator.restore(stored.groups, checkpoint, replay=replay)
        resumed: list[Transition] = []
        if not replay and self.evaluator.settings.clock is ClockMode.WALL:
            # Live input after a downtime: evaluate against the window as it is now.
            resumed = self.evaluator.resume_at(self._wall_clock())
        now = self.evaluator.now
        if now is not None:
            self._flushed_bucket = self._flush_bucket(now)
        self._log_restore(report, checkpoint is not None)
        await self._redeliver()
        if report.reset_transitions:
            await self._emit(report.reset_transitions)
        if replay and (report.reset_rules or report.dropped_unknown_rules):
            # Deletes the rows the restore dropped now, not at the first bucket's flush: until
            # then the API showed them, and a crash sent a reset's `recovered` again.
            await self.flush(self.resume_offset)
        if resumed:
            await self._emit(resumed)
        return report

    async def finish(self, offset: int) -> None:
        """Flush everything at the end of the input; `offset` is where a later run resumes.

        Raises StoreError when the final flush fails: the next run then resumes from the last
        checkpoint that was written and replays the rest. Remote sinks get up to
        delivery_timeout_s to catch up; what they have not received by then stays in the outbox.
        """
        try:
            await self.flush(offset, force=True)
        finally:
            await self._stop_remote()

    async def abandon(self) -> None:
        """Stop the remote deliveries without a flush; the outbox keeps what they did not send."""
        for remote in self._remote:
            await remote.stop()

    async def _stop_remote(self) -> None:
        for remote in self._remote:
            if not await remote.drain(self.delivery_timeout_s):
                self._log.warning(
                    "remote_delivery_incomplete",
                    sink=remote.name,
                    pending=remote.pending,
                    note="left in the outbox; the next run sends them again",
                )
            await remote.stop()

    # ------------------------------------------------------------ per record

    async def process(self, event: Event, offset: int, arrival_s: float | None = None) -> None:
        """Apply one input record at `offset` (ticks, maybe a flush, then the count)."""
        evaluator = self.evaluator
        ticked = evaluator.advance_for(event, offset, arrival_s)
        if ticked:
            await self._queue(ticked)
        await self._flush_if_due(offset)
        counted = evaluator.count(event, offset, arrival_s)
        if counted:
            await self._queue(counted)
        self._last_offset = offset

    def process_nowait(self, event: Event, offset: int, arrival_s: float | None = None) -> bool:
        """Apply a record as process() does when that needs no store write; return True then.

        Returns False, having changed nothing, when the record would flush, or when transitions
        are not deferred: the caller then awaits process(). The service's hot loop calls this for
        every record, because awaiting a coroutine per record costs more than the evaluation.
        """
        if not self.defer_transitions:
            return False
        evaluator = self.evaluator
        now = evaluator.now
        flushed = self._flushed_bucket
        if now is None or flushed is None:
            return False
        target = evaluator.advance_target(event, arrival_s)
        if math.floor((target if target > now else now) / evaluator.flush_interval_s) > flushed:
            return False
        ticked = evaluator.advance(target, offset)
        if ticked:
            self._defer(ticked)
        counted = evaluator.count(event, offset, arrival_s)
        if counted:
            self._defer(counted)
        self._last_offset = offset
        return True

    async def tick(self, now_s: float, offset: int) -> None:
        """Move the clock without an event (wall clock, or end of a replay)."""
        transitions = self.evaluator.advance(now_s, offset)
        if transitions:
            await self._queue(transitions)
        await self._flush_if_due(offset)
        await self.emit_deferred()

    async def tick_idle(self, now_s: float, offset: int) -> None:
        """Move the clock while the input is idle and caught up at `offset`.

        A tick that made transitions is flushed at once. Its transitions share the step of the
        record at `offset`, whose own boundary ticks may follow. Without the flush, a restart
        from an earlier checkpoint would freeze both under one position and skip the second.
        """
        transitions = self.evaluator.advance(now_s, offset)
        if not transitions:
            await self._flush_if_due(offset)
            await self.emit_deferred()
            return
        await self._queue(transitions)
        await self.flush(offset)

    # ---------------------------------------------------------------- flush

    def _flush_bucket(self, now_s: float) -> int:
        return math.floor(now_s / self.evaluator.flush_interval_s)

    async def _flush_if_due(self, offset: int) -> None:
        now = self.evaluator.now
        if now is None:
            return
        bucket = self._flush_bucket(now)
        if self._flushed_bucket is None:
            self._flushed_bucket = bucket
        elif bucket > self._flushed_bucket:
            await self.flush(offset)

    async def flush(self, offset: int, *, force: bool = False) -> None:
        """Write changed and forgotten groups and the checkpoint in one transaction.

        While the store is failing, flushes wait for the backoff to pass (unless `force`) and
        the evaluator keeps its changes in memory. The first flush that succeeds writes the
        current state of every group changed since the last good flush.
        """
        # The checkpoint must not pass a deferred transition. While the store fails, _emit
        # sends them at once and keeps them for the backlog.
        await self.emit_deferred()
        if not force and self._in_backoff():
            return
        if self._unstored and not await self._store_backlog():
            if force:
                raise StoreError(
                    f"{len(self._unstored)} transitions could not be stored; the next run "
                    "replays the input from the last checkpoint that was written"
                )
            return
        started = time.perf_counter()
        changed, forgotten, obsolete = self.evaluator.drain_changes(offset)
        checkpoint = self.evaluator.checkpoint(self.source, offset)
        try:
            await self.store.flush(
                self.tenant, self.rule_group, FlushBatch(changed, forgotten, checkpoint, obsolete)
            )
        except LeaseLostError:
            # Not an outage to ride out: another node evaluates the rule group now.
            raise
        except StoreError as exc:
            self.evaluator.requeue(changed, forgotten, obsolete)
            self._store_failed("flush", exc)
            if force:
                raise
            return
        self._store_succeeded()
        if checkpoint.now is not None:
            self._flushed_bucket = self._flush_bucket(checkpoint.now)
        self.stats.flushes += 1
        self.stats.flushed_rows += len(changed) + len(forgotten) + len(obsolete)
        self.stats.flush_seconds += time.perf_counter() - started
        await self._prune(checkpoint.now)
        self._log_dropped_events()
        if self.stats.delivery_failures:
            await self._redeliver()

    def _log_dropped_events(self) -> None:
        """Warn, once per flush and so once per bucket, about events a rule did not count."""
        engine_stats = self.evaluator.stats
        skew = engine_stats.clock_skew - self._reported_skew
        if skew:
            self._log.warning("events_clock_skewed", count=skew, total=engine_stats.clock_skew)
            self._reported_skew = engine_stats.clock_skew
        for rule_id, stats in engine_stats.rules.items():
            current = (stats.late, stats.capped, stats.wrong_type_key, stats.invalid_key)
            before = self._reported_drops.get(rule_id, (0, 0, 0, 0))
            if current == before:
                continue
            late, capped, wrong_type, invalid = (now - then for now, then in zip(current, before))
            self._reported_drops[rule_id] = current
            self._log.warning(
                "events_dropped",
                rule=rule_id,
                late=late,
                capped=capped,
                wrong_type_key=wrong_type,
                invalid_key=invalid,
                live_groups=self.evaluator.group_count(rule_id),
            )

    async def _prune(self, now_s: float | None) -> None:
        if now_s is None or not math.isfinite(self.history_retention_s):
            return
        try:
            # Awaited apart from the +=: mypyc fails on an await inside an augmented assignment.
            pruned = await self.store.prune_history(self.tenant, now_s - self.history_retention_s)
            self.stats.pruned += pruned
        except StoreError as exc:
            # Pruning is retried by the next flush; the history only grows until then.
            self._store_failed("prune_history", exc)

    # ------------------------------------------------------ store failures

    @property
    def ready(self) -> bool:
        """False while the store is failing and state lives only in memory."""
        return self._store_failures == 0

    def _in_backoff(self) -> bool:
        return self._store_failures > 0 and self._monotonic() < self._retry_at

    def _store_failed(self, action: str, exc: StoreError) -> None:
        self._store_failures += 1
        delay_s = min(STORE_RETRY_MAX_S, STORE_RETRY_INITIAL_S * 2 ** (self._store_failures - 1))
        now = self._monotonic()
        self._retry_at = now + delay_s
        if self._error_log.should_log("store_failed", now):
            self._log.error(
                "store_failed",
                action=action,
                error=str(exc),
                attempt=self._store_failures,
                retry_in_s=round(delay_s, 1),
                unstored_transitions=len(self._unstored),
                suppressed=self._error_log.take_suppressed("store_failed"),
            )

    def _store_succeeded(self) -> None:
        if self._store_failures:
            self._log.info("store_recovered", failed_attempts=self._store_failures)
        self._store_failures = 0

    async def _store_backlog(self) -> bool:
        """Store transitions made while the store was failing; return True when done."""
        transitions = [transition for transition, _ in self._unstored]
        try:
            ids = await self.store.record_transitions(self.tenant, self.rule_group, transitions)
            delivered = [i for i, (_, sent) in zip(ids, self._unstored) if sent]
            if delivered:
                await self.store.mark_delivered(self.tenant, delivered)
        except LeaseLostError:
            raise
        except StoreError as exc:
            self._store_failed("record_transitions", exc)
            return False
        self._unstored.clear()
        self._store_succeeded()
        # Transitions whose delivery failed are now in the outbox; send them again.
        self.stats.delivery_failures += len(transitions) - len(delivered)
        return True

    # --------------------------------------------------------- transitions

    async def _queue(self, transitions: list[Transition]) -> None:
        if self.defer_transitions:
            self._defer(transitions)
        else:
            await self._emit(transitions)

    def _defer(self, transitions: list[Transition]) -> None:
        if not self._deferred:
            self._deferred_since = self._monotonic()
        self._deferred.extend(transitions)

    def deferred_age_s(self) -> float:
        """Seconds the oldest deferred transition has waited, or -1.0 when none waits."""
        if not self._deferred:
            return -1.0
        return self._monotonic() - self._deferred_since

    async def emit_deferred(self) -> None:
        """Store and send the transitions that process() deferred, in the order they were made."""
        if self._deferred:
            transitions = self._deferred
            self._deferred = []
            await self._emit(transitions)

    async def _emit(self, transitions: list[Transition]) -> None:
        """Store transitions with their group state, then send them.

        When the store is failing the notifications go out at once and the transitions are
        stored by the first flush that succeeds: an alert is not held back by the database.
        """
        self.stats.transitions += len(transitions)
        notifications = [self._notification(t) for t in transitions]
        ids = await self._record(transitions)
        if ids is not None:
            await self._deliver(list(zip(ids, notifications)))
            return
        for transition, notification in zip(transitions, notifications):
            sent = await self._send(notification)
            self._unstored.append((transition, sent))
            # NOTE: without a history id the row is marked delivered when the backlog is
            # stored, whether or not the remote sinks have it by then.
            for remote in self._remote:
                remote.put(None, notification)

    async def _record(self, transitions: list[Transition]) -> list[int] | None:
        if self._in_backoff() or (self._unstored and not await self._store_backlog()):
            return None
        try:
            ids = await self.store.record_transitions(self.tenant, self.rule_group, transitions)
        except LeaseLostError:
            # Sending them would repeat the alerts of the node that holds the lease now.
            raise
        except StoreError as exc:
            self._store_failed("record_transitions", exc)
            return None
        self._store_succeeded()
        return ids

    async def _send(self, notification: Notification) -> bool:
        try:
            await self.sink.send(notification)
        except OutputClosedError:
            # Like `head` closing a pipe: stop the run; the outbox keeps what was not sent.
            self.output_closed = True
            return False
        except SinkError as exc:
            if isinstance(exc, FanoutError) and any(
                isinstance(error, OutputClosedError) for _, error in exc.failures
            ):
                self.output_closed = True
            self.stats.delivery_failures += 1
            self._log.error(
                "delivery_failed",
                transition_id=notification.transition_id,
                rule=notification.rule_id,
                error=str(exc),
            )
            return False
        self.stats.delivered += 1
        return True

    async def _deliver(self, pending: list[tuple[int, Notification]]) -> None:
        """Send stored transitions in order and mark them delivered.

        Without defer_transitions each is marked as soon as it is sent, which keeps the repeats
        after a kill to the one transition sent but not yet marked. With it, the transitions of
        one call are marked together after the sends, so a kill may repeat all of them. The
        first failure stops the sends; the outbox keeps the rest. With remote sinks, the mark
        waits for them (see _remote_delivered).
        """
        sent: list[int] = []
        for history_id, notification in pending:
            if not await self._send(notification):
                break
            if self._remote:
                self._remote_waiting[history_id] = len(self._remote)
                for remote in self._remote:
                    remote.put(history_id, notification)
            elif self.defer_transitions:
                sent.append(history_id)
            else:
                await self._mark_delivered([history_id])
        if sent:
            await self._mark_delivered(sent)

    async def _mark_delivered(self, history_ids: list[int]) -> None:
        try:
            await self.store.mark_delivered(self.tenant, history_ids)
        except StoreError as exc:
            # It stays in the outbox and is sent again after a restart (at least once).
            self._store_failed("mark_delivered", exc)

    async def _remote_delivered(self, history_id: int | None) -> None:
        if history_id is None:
            return
        waiting = self._remote_waiting.get(history_id)
        if waiting is None:
            return
        if waiting > 1:
            self._remote_waiting[history_id] = waiting - 1
            return
        del self._remote_waiting[history_id]
        await self._mark_delivered([history_id])

    async def _redeliver(self) -> None:
        # In pages, so that a long outbox is never in memory at once.
        after_id = 0
        failures_before = self.stats.delivery_failures
        while True:
            try:
                records = await self.store.undelivered(
                    self.tenant, self.rule_group, after_id=after_id, limit=REDELIVER_PAGE
                )
            except StoreError as exc:
                self._store_failed("undelivered", exc)
                return
            if not records:
                break
            self._log.info("redelivering", count=len(records), after_id=after_id)
            await self._deliver([(r.id, self._notification_from_record(r)) for r in records])
            after_id = records[-1].id
            stopped = self.output_closed or self.stats.delivery_failures != failures_before
            if stopped or len(records) < REDELIVER_PAGE:
                # After a failed send the rest stays in the outbox, as the sends stop at it.
                break
        if self.stats.delivery_failures == failures_before:
            self.stats.delivery_failures = 0

    async def _outbox_page(self, after_id: int, limit: int) -> list[tuple[int, Notification]]:
        """Return stored, undelivered notifications for a remote sink that fell behind."""
        try:
            records = await self.store.undelivered(self.tenant, self.rule_group, after_id=after_id, limit=limit)
        except StoreError as exc:
            self._store_failed("undelivered", exc)
            raise
        for record in records:
            # A row from before this run, or one whose mark failed, is marked delivered once
            # every remote sink has sent it.
            self._remote_waiting.setdefault(record.id, len(self._remote))
        return [(record.id, self._notification_from_record(record)) for record in records]

    def _notification(self, transition: Transition) -> Notification:
        return self._build_notification(
            transition_id=transition.transition_id(self.tenant, self.rule_group),
            rule_id=transition.rule_id,
            at=transition.at,
            kind=transition.kind.value,
            count=transition.count,
            threshold=transition.threshold,
            window_s=transition.window_s,
            group=dict(transition.group),
            captures=transition.captures,
            reason=transition.reason,
        )

    def _notification_from_record(self, record: HistoryRecord) -> Notification:
        return self._build_notification(
            transition_id=record.transition_id,
            rule_id=record.rule_id,
            at=record.at,
            kind=record.kind,
            count=record.count,
            threshold=int(record.details.get("threshold", 0)),
            window_s=int(record.details.get("window_s", 0)),
            group=record.group,
            captures=record.details.get("captures", {}),
            reason=record.details.get("reason"),
        )

    def _build_notification(
        self,
        *,
        transition_id: str,
        rule_id: str,
        at: float,
        kind: str,
        count: int,
        threshold: int,
        window_s: int,
        group: dict[str, str | None],
        captures: Mapping[str, Any],
        reason: str | None = None,
    ) -> Notification:
        rule = self.rules.get(rule_id)
        annotations: dict[str, str] = {}
        if rule is not None and rule.annotations:
            values: dict[str, Any] = dict(captures)
            for path, value in group.items():
                values[path] = value
                values[path.rsplit(".", 1)[-1]] = value
            values.update(
                count=count,
                threshold=threshold,
                window=format_duration(window_s),
                window_s=window_s,
                rule=rule_id,
                rule_name=rule.name,
                kind=kind,
                at=format_time(at),
                severity=rule.severity or "",
            )
            annotations = rule.render_annotations(values)
        return Notification(
            transition_id=transition_id,
            tenant=self.tenant,
            rule_group=self.rule_group,
            rule_id=rule_id,
            rule_name=rule.name if rule is not None else rule_id,
            at=at,
            kind=kind,
            count=count,
            threshold=threshold,
            window_s=window_s,
            group=group,
            severity=rule.severity if rule is not None else None,
            labels=dict(rule.labels) if rule is not None else {},
            annotations=annotations,
            reason=reason,
        )

    def _log_restore(self, report: RestoreReport, had_checkpoint: bool) -> None:
        if report.reset_rules:
            self._log.warning(
                "rule_state_reset",
                rules=sorted(report.reset_rules),
                reason="window or bucket changed since the snapshot",
            )
        if report.dropped_unknown_rules:
            self._log.warning("stored_rules_dropped", rules=sorted(report.dropped_unknown_rules))
        self._log.info(
            "state_restored",
            groups=report.groups,
            frozen=report.frozen,
            checkpoint=had_checkpoint,
            resume_offset=self.resume_offset,
        )
