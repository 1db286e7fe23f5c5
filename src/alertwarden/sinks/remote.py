"""Background delivery to a remote sink, so a slow or dead receiver never holds up evaluation."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from alertwarden.errors import SinkError, StoreError
from alertwarden.logs import RateLimitedLog, get_logger
from alertwarden.sinks.base import Notification, Sink

log = get_logger(__name__)

MAX_PENDING = 10_000
"""Notifications queued in memory per remote sink; later ones wait in the store's outbox."""
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 60.0
ERROR_LOG_INTERVAL_S = 60.0

DeliveredCallback = Callable[[int | None], Awaitable[None]]
"""Called with the history id (None for a transition not stored yet) after each delivery."""
RefillCallback = Callable[[int, int], Awaitable[list[tuple[int, Notification]]]]
"""Returns up to `limit` stored, undelivered notifications with a history id above `after_id`."""


class RemoteDelivery:
    """Sends notifications to one sink from a background task, in order, retrying forever.

    `put` never waits. When the sink keeps failing, the worker backs off (up to a minute
    between rounds) and keeps the order. A stored notification that finds MAX_PENDING queued is
    left in the store's outbox, and so is every later one until the queue has drained. Then the
    worker reads them back from the outbox with `refill`, in history id order.
    """

    def __init__(
        self, sink: Sink, on_delivered: DeliveredCallback, *, name: str, refill: RefillCallback | None = None
    ) -> None:
        self.sink = sink
        self.name = name
        self._on_delivered = on_delivered
        self._refill = refill
        self._pending: deque[tuple[int | None, Notification]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._error_log = RateLimitedLog(ERROR_LOG_INTERVAL_S)
        # The highest history id queued, and whether stored notifications after it were left
        # in the outbox, where the refill reads them.
        self._last_id = 0
        self._behind = False
        self.delivered = 0
        self.dropped = 0
        """Notifications not queued: left in the outbox, or lost when they had no history id."""

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"deliver-{self.name}")

    def put(self, history_id: int | None, notification: Notification) -> None:
        if history_id is not None and (self._behind or len(self._pending) >= MAX_PENDING):
            # Queued after the older ones that wait in the outbox, it would arrive before them.
            self._leave_in_outbox()
            return
        if history_id is None and len(self._pending) >= MAX_PENDING:
            # Not stored yet, so no refill finds it: the oldest queued one gives way instead.
            dropped_id, _ = self._pending.popleft()
            if dropped_id is not None:
                self._leave_in_outbox()
            else:
                self.dropped += 1
        self._pending.append((history_id, notification))
        if history_id is not None:
            self._last_id = max(self._last_id, history_id)
        self._wake.set()

    def _leave_in_outbox(self) -> None:
        self.dropped += 1
        self._behind = self._refill is not None
        if self._error_log.should_log("dropped", time.monotonic()):
            note = (
                "the outbox keeps them and they are read back once the queue has drained"
                if self._refill is not None
                else "the outbox keeps them; the next run sends them"
            )
            log.warning("remote_queue_full", sink=self.name, max_pending=MAX_PENDING, dropped=self.dropped, note=note)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the queue is sent, with what the sink left in the outbox, or `timeout_s`.

        Returns True when nothing is left to send.
        """
        deadline = time.monotonic() + timeout_s
        while (self._pending or self._behind) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not (self._pending or self._behind)

    async def stop(self) -> None:
        if self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def _run(self) -> None:
        while True:
            if not self._pending and self._behind:
                await self._read_outbox()
                continue
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            history_id, notification = self._pending[0]
            try:
                await self.sink.send(notification)
            except SinkError as exc:
                await self._back_off(notification, exc)
                continue
            self._failures = 0
            self._pending.popleft()
            self.delivered += 1
            await self._on_delivered(history_id)

    async def _read_outbox(self) -> None:
        """Queue the next stored notifications that were left in the outbox."""
        assert self._refill is not None
        # A put while this awaits is left in the outbox too (still behind), so the next read
        # finds it whether or not this one did.
        dropped = self.dropped
        try:
            page = await self._refill(self._last_id, MAX_PENDING)
        except StoreError:
            # The refill logs the store's failure. The next round tries again after a pause.
            self._failures += 1
            await asyncio.sleep(min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** (self._failures - 1)))
            return
        self._failures = 0
        for history_id, notification in page:
            self._pending.append((history_id, notification))
            self._last_id = max(self._last_id, history_id)
        self._behind = len(page) == MAX_PENDING or self.dropped != dropped

    async def _back_off(self, notification: Notification, exc: SinkError) -> None:
        self._failures += 1
        delay_s = min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** (self._failures - 1))
        if self._error_log.should_log("failed", time.monotonic()):
            log.error(
                "remote_delivery_failed",
                sink=self.name,
                transition_id=notification.transition_id,
                error=str(exc),
                pending=len(self._pending),
                retry_in_s=delay_s,
                suppressed=self._error_log.take_suppressed("failed"),
            )
        await asyncio.sleep(delay_s)
