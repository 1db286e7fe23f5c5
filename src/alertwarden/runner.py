"""The input loop: read lines, parse them, and feed every rule group's pipeline in order."""

from __future__ import annotations

import asyncio
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from alertwarden.engine.evaluator import ClockMode
from alertwarden.errors import EventError
from alertwarden.logs import get_logger
from alertwarden.pipeline import RuleGroupPipeline
from alertwarden.sources.files import LineInput
from alertwarden.sources.formats import Parser, seed_last_time
from alertwarden.sources.lines import Line, OversizedLine

log = get_logger(__name__)

TIMED_OUT = object()
"""Marker for 'no line arrived before the next boundary'."""

LIVE_QUEUE_LINES = 4096
"""Lines read ahead from stdin while the evaluators are busy; the reader waits beyond it."""


@dataclass(slots=True)
class RunSummary:
    lines: int = 0
    events: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    end_offset: int = 0
    stopped: bool = False


class ProgressReporter:
    """Progress of a long run; the CLI supplies a rich implementation on terminals."""

    def start(self, total_bytes: int | None, done_bytes: int) -> None:
        return None

    def update(self, done_bytes: int) -> None:
        return None

    def stop(self) -> None:
        return None


class InputRunner:
    """Feeds one input to the pipelines of every rule group that evaluates it."""

    def __init__(
        self,
        pipelines: Sequence[RuleGroupPipeline],
        line_input: LineInput,
        parser: Parser,
        *,
        clock: ClockMode,
        progress: ProgressReporter | None = None,
        total_bytes: int | None = None,
        report_interval_s: float = 60.0,
        hold_partial_last_line: bool = False,
    ) -> None:
        self.pipelines = list(pipelines)
        self.line_input = line_input
        self.parser = parser
        self.clock = clock
        self.progress = progress or ProgressReporter()
        self.total_bytes = total_bytes
        self.report_interval_s = report_interval_s
        # `run` leaves an unterminated last line for the next run, since a writer may still be
        # appending to it; `backtest` reads a file as complete.
        self.hold_partial_last_line = hold_partial_last_line
        self.summary = RunSummary()
        self._stop = asyncio.Event()
        # (reason) -> reporting bucket of the last warning, and skips since it.
        self._max_skew_s = min(
            (p.evaluator.settings.max_future_skew_s for p in self.pipelines), default=60.0
        )
        self._future_limit_s = time.time() + self._max_skew_s
        self._reported_bucket: dict[str, int] = {}
        self._unreported: Counter[str] = Counter()

    def request_stop(self) -> None:
        """Stop after the current record; the pipelines then flush and checkpoint."""
        self._stop.set()

    async def run(self) -> RunSummary:
        """Restore every pipeline, read the input to its end (or a stop), and flush."""
        identity = self.line_input.identity()
        source = identity or "stdin"
        replayable = identity is not None
        for pipeline in self.pipelines:
            pipeline.source = source
            await pipeline.start(self.line_input.resume_offset, replayable=replayable)
        start_offset = min((p.resume_offset for p in self.pipelines), default=0)
        self.summary.end_offset = start_offset
        self._seed_parser(start_offset)

        self._install_signal_handlers()
        self.progress.start(self.total_bytes, start_offset)
        try:
            if self.clock is ClockMode.WALL and not replayable:
                await self._run_live(start_offset)
            else:
                await self._run_replay(start_offset)
        finally:
            self.progress.stop()
            self._remove_signal_handlers()
            # A graceful stop must still write the last snapshot and checkpoint.
            await asyncio.shield(self._finish())
        return self.summary

    def _seed_parser(self, start_offset: int) -> None:
        """Give year-less syslog parsing the clock of the checkpoint it resumes from.

        Only on a real resume: a discarded checkpoint restores a clock too, but the input is
        then read from its start.
        """
        if start_offset <= 0:
            return
        clocks = [
            p.evaluator.now
            for p in self.pipelines
            if p.resume_offset == start_offset and p.evaluator.now is not None
        ]
        if clocks:
            seed_last_time(self.parser, min(clocks))

    async def _finish(self) -> None:
        for pipeline in self.pipelines:
            await pipeline.finish(max(self.summary.end_offset, pipeline.resume_offset))

    # ------------------------------------------------------------ reading

    async def _run_replay(self, start_offset: int) -> None:
        """Read a file (or stdin with the event clock) as fast as it parses."""
        wall = self.clock is ClockMode.WALL
        lines = self.line_input.lines(
            start_offset, hold_partial_last_line=self.hold_partial_last_line
        )
        for count, line in enumerate(lines, 1):
            arrival_s = time.time() if wall else None
            await self._handle(line, arrival_s)
            if self._stop.is_set():
                self.summary.stopped = True
                return
            if count % 4096 == 0:
                self.progress.update(self.summary.end_offset)
        self.progress.update(self.summary.end_offset)
        held_back = self.line_input.held_back_bytes
        if held_back:
            log.info(
                "partial_last_line_held",
                offset=self.summary.end_offset,
                held_back_bytes=held_back,
                note="the line has no newline yet; the next run reads it",
            )

    async def _run_live(self, start_offset: int) -> None:
        """Read stdin in a thread and tick the wall clock at every flush boundary."""
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[Line | OversizedLine | None] = asyncio.Queue(maxsize=LIVE_QUEUE_LINES)
        reader = threading.Thread(
            target=_read_into, args=(self.line_input.lines(start_offset), lines, loop), daemon=True
        )
        reader.start()
        tick_s = min(p.evaluator.flush_interval_s for p in self.pipelines)
        while not self._stop.is_set():
            now = time.time()
            wait_s = max(0.05, (math.floor(now / tick_s) + 1) * tick_s - now)
            first: Line | OversizedLine | None | object
            try:
                first = await asyncio.wait_for(lines.get(), wait_s)
            except TimeoutError:
                first = TIMED_OUT
            if not await self._drain(first, lines):
                return
            for pipeline in self.pipelines:
                await pipeline.tick(time.time(), self.summary.end_offset)
        self.summary.stopped = True

    async def _drain(
        self,
        first: Line | OversizedLine | None | object,
        lines: asyncio.Queue[Line | OversizedLine | None],
    ) -> bool:
        """Handle `first` and every line already queued; return False at the end of input."""
        line = first
        while isinstance(line, Line | OversizedLine):
            await self._handle(line, time.time())
            line = lines.get_nowait() if not lines.empty() else TIMED_OUT
        return line is not None

    async def _handle(self, line: Line | OversizedLine, arrival_s: float | None) -> None:
        summary = self.summary
        summary.lines += 1
        summary.end_offset = line.end_offset
        try:
            if isinstance(line, OversizedLine):
                raise line.error()
            event = self.parser.parse(line.data)
        except EventError as exc:
            self._report_skip(exc, line.line_number)
            return
        summary.events += 1
        if arrival_s is None and event.time_s > self._future_limit_s:
            # Nothing read now can have happened after now: an event stamped beyond the wall
            # clock plus the allowed skew is skewed even in a replay, and must not move the
            # event clock (one such line would make every later event late).
            self._future_limit_s = time.time() + self._max_skew_s
            if event.time_s > self._future_limit_s:
                arrival_s = time.time()
        for pipeline in self.pipelines:
            if line.offset >= pipeline.resume_offset:
                await pipeline.process(event, line.offset, arrival_s)
            if pipeline.output_closed and not self._stop.is_set():
                log.info("stop_requested", reason="output closed")
                self._stop.set()

    def _report_skip(self, exc: EventError, line_number: int) -> None:
        """Count a skipped record; warn once per reason and reporting interval."""
        reason = exc.reason
        self.summary.skipped[reason] += 1
        now = self.pipelines[0].evaluator.now if self.pipelines else None
        bucket = math.floor(now / self.report_interval_s) if now is not None else -1
        if self._reported_bucket.get(reason) == bucket:
            self._unreported[reason] += 1
            return
        self._reported_bucket[reason] = bucket
        log.warning(
            "record_skipped",
            reason=reason,
            line=line_number,
            error=str(exc),
            skipped_since_last_report=self._unreported.pop(reason, 0),
        )

    # ------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        self._signals: list[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
                self._signals.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or no signal support: Ctrl-C still interrupts

    def _on_signal(self, signum: int) -> None:
        if self._stop.is_set():
            raise KeyboardInterrupt  # second signal: stop at once
        log.info("stop_requested", signal=signal.Signals(signum).name)
        self._stop.set()

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in getattr(self, "_signals", []):
            loop.remove_signal_handler(signum)


def _read_into(
    lines: Iterator[Line | OversizedLine],
    out: asyncio.Queue[Line | OversizedLine | None],
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Move lines from a blocking reader into the event loop's queue, None at the end."""
    for line in lines:
        asyncio.run_coroutine_threadsafe(out.put(line), loop).result()
    asyncio.run_coroutine_threadsafe(out.put(None), loop).result()
