"""The per-record loop of a serve worker, in a module that the build compiles.

`evaluate_records` parses and evaluates a worker's records without awaiting; it runs once per
message of every tenant. service/worker.py, which calls it, is not compiled (see native.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from alertwarden.errors import EventError
from alertwarden.events import Event, Signal
from alertwarden.pipeline import RuleGroupPipeline
from alertwarden.sources.jetstream import OversizedMessage
from alertwarden.sources.jsonl import JsonParser, OcsfParser

# Compiled, a Final constant is a C variable, and Signal.LOGS a lookup on the enum class.
_LOGS: Final = Signal.LOGS
_EVENTS: Final = Signal.EVENTS


class RecordParser:
    """Parse stream records into events; the subject's signal decides the format."""

    def __init__(self, on_skipped: Callable[[EventError, Any], None]) -> None:
        self.logs = JsonParser()
        self.events = OcsfParser()
        self.on_skipped = on_skipped

    def parse(self, record: Any) -> Event | None:
        """Return the record's event, or None after reporting why it was skipped."""
        try:
            if isinstance(record, OversizedMessage):
                raise record.error()
            if record.signal is _EVENTS:
                return self.events.parse(record.data)
            event = self.logs.parse(record.data)
            # The subject decides the signal: an OCSF-looking record on a logs subject is a log.
            event.signal = _LOGS
            return event
        except EventError as error:
            self.on_skipped(error, record)
            return None


def evaluate_records(
    pipeline: RuleGroupPipeline,
    records: list[Any],
    start: int,
    parser: RecordParser,
    stop_at: float,
    clock: Callable[[], float],
) -> tuple[int, Event | None]:
    """Evaluate records from `start` on with `process_nowait`, without awaiting.

    Returns (index, event). The records before `index` are evaluated. When `event` is not None,
    it is the event of records[index], which must go through the awaited `process` because it
    flushes. Otherwise the batch ended or `clock()` passed `stop_at`.
    """
    count = len(records)
    index = start
    while index < count:
        record = records[index]
        event = parser.parse(record)
        if event is not None and not pipeline.process_nowait(event, record.offset, record.stored_at):
            return index, event
        index += 1
        if clock() >= stop_at:
            break
    return index, None
