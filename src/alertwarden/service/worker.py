"""One tenant + rule group of the service: a JetStream fetcher, a bounded queue and a pipeline.

The evaluator's clock is the time JetStream stored each message (its arrival), so a replay
after a crash gets the same clock as the first read. When the tenant's subjects are idle, a
fetch that returns nothing moves the clock to the wall clock minus tick_delay_s, so bucket
boundaries (recoveries) are evaluated without new messages. Such a tick happens only after a
fetch found the input caught up, never in the middle of a backlog: a restart first replays
every stored message, and only then evaluates boundaries that fell due during the downtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext

from alertwarden.cluster.leases import Fence, LeaseLostError
from alertwarden.engine.evaluator import ClockMode, EngineSettings, Evaluator
from alertwarden.engine.records import FlushBatch, Transition
from alertwarden.errors import EventError
from alertwarden.logs import RateLimitedLog, get_logger
from alertwarden.pipeline import RuleGroupPipeline
from alertwarden.rules import CompiledRule
from alertwarden.service.batch import RecordParser, evaluate_records
from alertwarden.sinks.base import Sink
from alertwarden.sources.jetstream import JetStreamInput, JetStreamSettings, StreamRecord
from alertwarden.store.base import HistoryRecord, StateStore, StoredState

log = get_logger(__name__)

SKIP_LOG_INTERVAL_S = 60.0
"""Interval of the record_skipped warnings of a rule group without rules; with rules, it is the
group's smallest bucket, the interval at which it flushes."""
RESTART_INITIAL_S = 1.0
RESTART_MAX_S = 60.0
CANCEL_RETRY_S = 0.1
TIME_SLICE_S = 0.002
"""Maximum time a worker evaluates before it lets the other workers run."""
EMIT_INTERVAL_S = 0.05
"""Maximum time the transitions of a busy worker wait before they are stored and sent together.

Each store costs two statements, so storing the transitions of many events at once is what
keeps a busy tenant's evaluation fast; an idle queue stores them at the end of every batch."""
UNHEALTHY_HOLD_S = 300.0
"""A rule stays unhealthy for this long after its last regex timeout."""


class WorkerState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(slots=True)
class RuleHealth:
    """Run-time health of one rule: regex searches that timed out, and when the last did."""

    regex_timeouts: int = 0
    last_timeout_at: float | None = None

    def status(self, now_s: float) -> tuple[str, str | None]:
        if self.last_timeout_at is not None and now_s - self.last_timeout_at < UNHEALTHY_HOLD_S:
            return "unhealthy", (
                f"{self.regex_timeouts} regex searches timed out so far, the last at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.last_timeout_at))}; "
                "events they were searching did not match. Simplify the pattern"
            )
        return "healthy", None


@dataclass(slots=True)
class WorkerCounters:
    """Records this worker skipped before evaluation, by reason."""

    skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Store, JetStream context, sinks and limits that every worker of one service shares."""

    store: StateStore
    js: JetStreamContext
    jetstream: JetStreamSettings
    sink: Sink
    remote_sinks: Sequence[Sink] = ()
    max_future_skew_s: float = 60.0
    history_retention_s: float = 7 * 86400.0
    tick_delay_s: float = 2.0
    queue_batches: int = 4
    max_message_bytes: int = 1_048_576
    wall_clock: Callable[[], float] = time.time


class FencedStore:
    """A PostgreSQL store that writes flushes and transitions only while this node holds the lease.

    A write without the lease raises LeaseLostError, which stops the worker before it sends the
    transitions, so the node that lost the lease sends no alert of the rule group any more.
    """

    def __init__(self, store: StateStore, fence: Fence) -> None:
        self._store = store
        self._fence = fence

    async def open(self) -> None:
        await self._store.open()

    async def close(self) -> None:
        await self._store.close()

    async def load(self, tenant: str, rule_group: str) -> StoredState:
        return await self._store.load(tenant, rule_group)

    async def record_transitions(self, tenant: str, rule_group: str, transitions: Sequence[Transition]) -> list[int]:
        return await self._store.record_transitions(  # type: ignore[call-arg]
            tenant, rule_group, transitions, fence=self._fence
        )

    async def flush(self, tenant: str, rule_group: str, batch: FlushBatch) -> None:
        await self._store.flush(tenant, rule_group, batch, fence=self._fence)  # type: ignore[call-arg]

    async def undelivered(
        self, tenant: str, rule_group: str, *, after_id: int = 0, limit: int | None = None
    ) -> list[HistoryRecord]:
        return await self._store.undelivered(tenant, rule_group, after_id=after_id, limit=limit)

    async def mark_delivered(self, tenant: str, ids: Sequence[int]) -> None:
        await self._store.mark_delivered(tenant, ids)

    async def prune_history(self, tenant: str, before_s: float) -> int:
        return await self._store.prune_history(tenant, before_s)

    async def history(
        self,
        tenant: str,
        *,
        rule_id: str | None = None,
        kind: str | None = None,
        since_s: float | None = None,
        until_s: float | None = None,
        limit: int = 1000,
    ) -> list[HistoryRecord]:
        return await self._store.history(
            tenant, rule_id=rule_id, kind=kind, since_s=since_s, until_s=until_s, limit=limit
        )


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it ends, cancelling again if it goes on.

    A task may survive one cancel: code that catches CancelledError, or a library that loses
    it, such as asyncio.wait_for of Python 3.11 when the cancel comes as its wait ends (CPython
    gh-86296). A fetcher that survived would block on the full queue, and the worker's stop,
    and with it every rule change and the shutdown, would wait for ever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_RETRY_S)
    if not task.cancelled() and task.exception() is not None:
        log.debug("cancelled_task_failed", task=task.get_name(), error=repr(task.exception()))


class RuleGroupWorker:
    """Evaluates one tenant + rule group from JetStream until stopped; restarts after failures."""

    def __init__(
        self,
        tenant: str,
        rule_group: str,
        rules: Sequence[CompiledRule],
        config: WorkerConfig,
        *,
        on_restart: Callable[[str, str], None] | None = None,
        fence: Fence | None = None,
        on_lease_lost: Callable[[], None] | None = None,
    ) -> None:
        self.tenant = tenant
        self.rule_group = rule_group
        self.rules = list(rules)
        self.config = config
        self.state = WorkerState.STARTING
        self.pipeline: RuleGroupPipeline | None = None
        self.input: JetStreamInput | None = None
        self.applied_offset = 0
        """Checkpoint offset of the work done: the next stream sequence not yet applied."""
        self.caught_up = False
        self.counters = WorkerCounters()
        self.health = {rule.id: RuleHealth() for rule in self.rules}
        self.restarts = 0
        self._on_restart = on_restart
        self.fence = fence
        """The node's lease of this rule group; every write checks that it still holds."""
        self.lease_lost = False
        """True after a write found the lease lost; the worker then ended without a final flush."""
        self._on_lease_lost = on_lease_lost
        self._abandoned = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One warning per reason and bucket: an operator sees each kind of bad input once per
        # step of the alert windows, and the count of repeats suppressed in between.
        skip_log_interval_s = min((rule.bucket_s for rule in self.rules), default=SKIP_LOG_INTERVAL_S)
        self._skip_log = RateLimitedLog(skip_log_interval_s)
        self._log = log.bind(tenant=tenant, rule_group=rule_group)
        self._parser = RecordParser(self._skipped)

    @property
    def started(self) -> bool:
        """True once the state is restored and the worker reads its subjects."""
        return self.state is WorkerState.RUNNING

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"worker:{self.tenant}:{self.rule_group}")

    async def stop(self) -> None:
        """Stop fetching, finish the record in hand, flush and write the checkpoint."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def abandon(self) -> None:
        """Stop without the final flush, after this node lost the rule group's lease.

        The node that holds the lease now resumes from the last checkpoint written and replays
        the work done since then (tests/test_serve_leases.py checks the takeover).
        """
        self._abandoned = True
        await self.stop()

    # ------------------------------------------------------------ supervision

    async def _supervise(self) -> None:
        delay_s = RESTART_INITIAL_S
        while not self._stop.is_set():
            try:
                await self._run_once()
                return
            except asyncio.CancelledError:
                raise
            except LeaseLostError as error:
                # A restart would only fail again: the service takes the lease anew or leaves
                # the rule group to the node that holds it.
                self.state = WorkerState.FAILED
                self.lease_lost = True
                self._log.warning("evaluator_lease_lost", error=str(error))
                if self._on_lease_lost is not None:
                    self._on_lease_lost()
                return
            except Exception as error:  # noqa: BLE001 - a failed evaluator must not stop the others
                self.state = WorkerState.FAILED
                self.restarts += 1
                if self._on_restart is not None:
                    self._on_restart(self.tenant, self.rule_group)
                self._log.error(
                    "evaluator_failed",
                    error=repr(error),
                    restarts=self.restarts,
                    retry_in_s=delay_s,
                    exc_info=error,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_s):
                        await self._stop.wait()
                delay_s = min(delay_s * 2, RESTART_MAX_S)
        self.state = WorkerState.STOPPED

    def _new_pipeline(self) -> RuleGroupPipeline:
        config = self.config
        settings = EngineSettings(clock=ClockMode.WALL, max_future_skew_s=config.max_future_skew_s)
        evaluator = Evaluator(self.rules, settings, tenant=self.tenant, rule_group=self.rule_group)
        store = config.store if self.fence is None else FencedStore(config.store, self.fence)
        return RuleGroupPipeline(
            evaluator,
            self.rules,
            store,
            config.sink,
            source=f"jetstream:{config.jetstream.stream}",
            history_retention_s=config.history_retention_s,
            wall_clock=config.wall_clock,
            remote_sinks=config.remote_sinks,
            # One store transaction for the transitions of a time slice, not one per event.
            defer_transitions=True,
        )

    def _resolve(self, source: str, offset: int) -> tuple[int, str | None]:
        expected = f"jetstream:{self.config.jetstream.stream}"
        if source != expected:
            return 0, f"the checkpoint belongs to {source!r}, not {expected!r}; reading new messages only"
        return offset, None

    async def _run_once(self) -> None:
        config = self.config
        self.state = WorkerState.STARTING
        self.caught_up = False
        pipeline = self._new_pipeline()
        self.pipeline = pipeline
        await pipeline.start(self._resolve)

        start_sequence = pipeline.resume_offset
        signals = {rule.signal for rule in self.rules}
        # A rule group without a checkpoint starts one window back, so a new rule counts the
        # events of its first window.
        lookback_s = max(rule.window_s for rule in self.rules)
        source = JetStreamInput(
            config.js,
            config.jetstream,
            self.tenant,
            start_sequence,
            start_time=None if pipeline.resumed else config.wall_clock() - lookback_s,
            signals=signals,
            max_message_bytes=config.max_message_bytes,
        )
        self.input = source

        try:
            first = await source.open()
            self.applied_offset = first
            if not pipeline.resumed:
                # Store where the first read starts, so a crash before the first flush resumes
                # there and not at another start time.
                await pipeline.flush(first, force=True)
            self.state = WorkerState.RUNNING
            self._log.info("evaluator_started", start_sequence=first, rules=len(self.rules))
            await self._consume(source, pipeline)
        except LeaseLostError:
            # Set before the finish below, which then writes nothing.
            self._abandoned = True
            raise
        finally:
            await source.close()
            # The last checkpoint must be written even when the stop cancels this task.
            await asyncio.shield(self._finish(pipeline))

    async def _finish(self, pipeline: RuleGroupPipeline) -> None:
        if self._abandoned:
            await pipeline.abandon()
            self._log.warning("evaluator_abandoned", note="lease lost; no final flush")
            return
        await pipeline.finish(self.applied_offset)
        self._log.info("evaluator_stopped", checkpoint=self.applied_offset)

    # ------------------------------------------------------------ reading

    async def _consume(self, source: JetStreamInput, pipeline: RuleGroupPipeline) -> None:
        queue: asyncio.Queue[tuple[list[StreamRecord], float, int]] = asyncio.Queue(
            maxsize=self.config.queue_batches
        )
        fetcher = asyncio.create_task(self._fetch(source, queue))
        stop = asyncio.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, stop, fetcher}, return_when=asyncio.FIRST_COMPLETED)
                if fetcher in done:
                    getter.cancel()
                    fetcher.result()  # raises the fetch error
                    return
                if getter not in done:
                    getter.cancel()
                    return
                records, fetched_at, next_sequence = getter.result()
                await self._apply(records, fetched_at, next_sequence, pipeline, more=not queue.empty())
                # Let the other tenants' workers run between batches.
                await asyncio.sleep(0)
        finally:
            stop.cancel()
            await cancel_and_wait(fetcher)

    async def _fetch(
        self, source: JetStreamInput, queue: asyncio.Queue[tuple[list[StreamRecord], float, int]]
    ) -> None:
        while True:
            fetched_at = self.config.wall_clock()
            records = await source.fetch_batch()
            await queue.put((records, fetched_at, source.next_sequence))

    async def _apply(
        self,
        records: list[StreamRecord],
        fetched_at: float,
        next_sequence: int,
        pipeline: RuleGroupPipeline,
        *,
        more: bool = False,
    ) -> None:
        """Evaluate one fetched batch; `more` is True when another batch is queued behind it."""
        if not records:
            # Every message stored before the fetch began has been applied, so the clock may
            # move to that moment. tick_delay_s absorbs a NATS server clock behind this host's.
            self.caught_up = True
            await pipeline.tick_idle(fetched_at - self.config.tick_delay_s, next_sequence)
            self.applied_offset = max(self.applied_offset, next_sequence)
            self._update_health()
            return
        self.caught_up = False
        perf_counter = time.perf_counter
        slice_end = perf_counter() + TIME_SLICE_S
        parser = self._parser
        index = 0
        count = len(records)
        while index < count:
            # The stop is set by another task, so it can only change between these calls.
            if self._stop.is_set():
                return
            index, flushing = evaluate_records(pipeline, records, index, parser, slice_end, perf_counter)
            if flushing is not None:
                # The record flushes, or transitions are not deferred.
                record = records[index]
                await pipeline.process(flushing, record.offset, record.stored_at)
                index += 1
            if index:
                self.applied_offset = records[index - 1].end_offset
            if perf_counter() >= slice_end:
                # nats-py hands a fetched batch over one message per event loop turn, so a
                # worker that kept the loop for a whole batch would slow every other
                # tenant's fetch by that much per message.
                if pipeline.deferred_age_s() >= EMIT_INTERVAL_S:
                    await pipeline.emit_deferred()
                await asyncio.sleep(0)
                slice_end = perf_counter() + TIME_SLICE_S
        if not more or pipeline.deferred_age_s() >= EMIT_INTERVAL_S:
            await pipeline.emit_deferred()
        self._update_health()

    def _skipped(self, error: EventError, record: StreamRecord) -> None:
        reason = str(error.reason)
        self.counters.skipped[reason] = self.counters.skipped.get(reason, 0) + 1
        key = f"skip:{reason}"
        now = time.monotonic()
        if self._skip_log.should_log(key, now):
            self._log.warning(
                "record_skipped",
                reason=reason,
                sequence=record.offset,
                subject=record.subject,
                error=str(error),
                suppressed=self._skip_log.take_suppressed(key),
            )

    def _update_health(self) -> None:
        now = self.config.wall_clock()
        pipeline = self.pipeline
        if pipeline is None:
            return
        for rule_id, rule in pipeline.rules.items():
            health = self.health.setdefault(rule_id, RuleHealth())
            timeouts = rule.regex_timeouts
            if timeouts > health.regex_timeouts:
                if health.last_timeout_at is None or now - health.last_timeout_at >= UNHEALTHY_HOLD_S:
                    self._log.warning("rule_unhealthy", rule=rule_id, regex_timeouts=timeouts)
                health.regex_timeouts = timeouts
                health.last_timeout_at = now

    def rule_status(self, rule_id: str) -> tuple[str, str | None]:
        health = self.health.get(rule_id)
        if health is None:
            return "healthy", None
        return health.status(self.config.wall_clock())

    def input_lag_s(self) -> float | None:
        """Seconds the evaluator's clock trails the wall clock, or None before the first record."""
        pipeline = self.pipeline
        if pipeline is None or pipeline.evaluator.now is None:
            return None
        return max(0.0, self.config.wall_clock() - pipeline.evaluator.now)

