"""RuleGroupWorker without servers: the stop of its fetch task."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import structlog

from alertwarden.engine.evaluator import Evaluator
from alertwarden.errors import EventError
from alertwarden.events import SkipReason
from alertwarden.rules import load_rules_text
from alertwarden.pipeline import RuleGroupPipeline
from alertwarden.service.runtime import DiscardSink
from alertwarden.service.worker import RuleGroupWorker, WorkerConfig, cancel_and_wait
from alertwarden.store.sqlite import SQLiteStore


class CancelLosingSource:
    """A JetStream input whose waits lose every cancel, as wait_for of Python 3.11 can."""

    def __init__(self) -> None:
        self.next_sequence = 1
        self.calls = 0

    async def fetch_batch(self) -> list[object]:
        self.calls += 1
        if self.calls == 1:
            return []
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass
        return []


async def test_worker_stop_survives_lost_cancel() -> None:
    config = WorkerConfig(
        store=None,  # type: ignore[arg-type]
        js=None,  # type: ignore[arg-type]
        jetstream=None,  # type: ignore[arg-type]
        sink=None,  # type: ignore[arg-type]
        queue_batches=1,
    )
    worker = RuleGroupWorker("acme", "default", [], config)
    source = CancelLosingSource()
    # A real pipeline without rules: the compiled worker accepts no stand-in for it.
    store = SQLiteStore(":memory:")
    await store.open()
    pipeline = RuleGroupPipeline(Evaluator([]), [], store, DiscardSink(), source="test")
    consume = asyncio.create_task(worker._consume(source, pipeline))  # type: ignore[arg-type]
    # The empty first batch makes the worker tick the idle pipeline, which starts its clock.
    while source.calls < 2 or pipeline.evaluator.now is None:
        await asyncio.sleep(0.01)

    # The stop cancels the fetcher, which goes on and then blocks on the full queue.
    worker._stop.set()
    # asyncio.wait, not wait_for: a timeout must not cancel the stop it measures.
    await asyncio.wait({consume}, timeout=5)

    assert consume.done(), "the worker's stop waits for a fetcher that lost its cancel"
    assert source.calls >= 3
    await store.close()


async def test_cancel_and_wait_plain_task() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()


TWO_BUCKET_RULES = """\
- id: slow
  threshold: 3
  window: 10m
  bucket: 1m
- id: fast
  threshold: 3
  window: 1m
  bucket: 10s
"""


def test_skip_warning_once_per_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("alertwarden.service.worker.time.monotonic", lambda: clock[0])
    config = WorkerConfig(
        store=None,  # type: ignore[arg-type]
        js=None,  # type: ignore[arg-type]
        jetstream=None,  # type: ignore[arg-type]
        sink=None,  # type: ignore[arg-type]
    )
    record = SimpleNamespace(offset=7, subject="logs.acme.app")
    error = EventError(SkipReason.MALFORMED, "line is not valid JSON")
    other = EventError(SkipReason.BAD_TIMESTAMP, "no usable time field")

    with structlog.testing.capture_logs() as logs:
        worker = RuleGroupWorker("acme", "default", load_rules_text(TWO_BUCKET_RULES), config)
        # The smallest bucket of the group (10 s) sets the interval, per reason.
        for at in (1000.0, 1004.0, 1009.9, 1010.0, 1015.0):
            clock[0] = at
            worker._skipped(error, record)
        worker._skipped(other, record)

    warnings = [entry for entry in logs if entry["event"] == "record_skipped"]
    assert [entry["reason"] for entry in warnings] == ["malformed", "malformed", "bad_timestamp"]
    assert [entry["suppressed"] for entry in warnings] == [0, 2, 0]
    assert worker.counters.skipped == {"malformed": 5, "bad_timestamp": 1}
