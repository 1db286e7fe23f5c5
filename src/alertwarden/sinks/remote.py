"""Background delivery to a remote sink, so a slow or dead receiver never holds up evaluation."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from alertwarden.errors import SinkError
from alertwarden.logs import RateLimitedLog, get_logger
from alertwarden.sinks.base import Notification, Sink

log = get_logger(__name__)

MAX_PENDING = 10_000
"""Notifications queued in memory per remote sink; older ones wait in the store's outbox."""
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 60.0
ERROR_LOG_INTERVAL_S = 60.0

DeliveredCallback = Callable[[int | None], Awaitable[None]]
"""Called with the history id (None for a transition not stored yet) after each delivery."""


class RemoteDelivery:
    """Sends notifications to one sink from a background task, in order, retrying forever.

    `put` never waits. When the sink keeps failing, the worker backs off (up to a minute
    between rounds) and keeps the order. Past MAX_PENDING queued notifications the oldest is
    dropped from memory; it stays undelivered in the store's outbox and is sent after a restart.
    """

    def __init__(self, sink: Sink, on_delivered: DeliveredCallback, *, name: str) -> None:
        self.sink = sink
        self.name = name
        self._on_delivered = on_delivered
        self._pending: deque[tuple[int | None, Notification]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._error_log = RateLimitedLog(ERROR_LOG_INTERVAL_S)
        self.delivered = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"deliver-{self.name}")

    def put(self, history_id: int | None, notification: Notification) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
            if self._error_log.should_log("dropped", time.monotonic()):
                log.warning(
                    "remote_queue_full",
                    sink=self.name,
                    max_pending=MAX_PENDING,
                    dropped=self.dropped,
                    note="dropped notifications stay in the outbox and are sent after a restart",
                )
        self._pending.append((history_id, notification))
        self._wake.set()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the queue is empty or `timeout_s` passes; return True when empty."""
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self._pending

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
