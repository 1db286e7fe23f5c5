"""Fan-out sink: deliver each notification to several sinks, independently of each other."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from alertwarden.errors import ConfigError, SinkError
from alertwarden.sinks.base import Notification, Sink


class FanoutError(SinkError):
    """One or more sinks of a fan-out failed. `failures` pairs each sink name with its error."""

    def __init__(self, message: str, failures: list[tuple[str, Exception]]) -> None:
        super().__init__(message)
        self.failures = failures


def sink_name(sink: Sink) -> str:
    """Return the sink's `name` attribute, or its class name when it has none."""
    name = getattr(sink, "name", None)
    return name if isinstance(name, str) else type(sink).__name__


class FanoutSink:
    """Sends each notification to every sink concurrently.

    A failing or slow sink (a webhook in its retry backoff) neither stops nor delays the
    others. After all sinks finish, `send` raises FanoutError naming each sink that failed.
    """

    def __init__(self, sinks: Sequence[Sink]) -> None:
        if not sinks:
            raise ConfigError("FanoutSink needs at least one sink, but the list is empty")
        self._sinks = list(sinks)

    @property
    def name(self) -> str:
        return "fanout(" + ", ".join(sink_name(sink) for sink in self._sinks) + ")"

    async def send(self, notification: Notification) -> None:
        await self._call_all(lambda sink: sink.send(notification), "delivering to")

    async def close(self) -> None:
        await self._call_all(lambda sink: sink.close(), "closing")

    async def _call_all(self, call: Callable[[Sink], Awaitable[None]], action: str) -> None:
        results = await asyncio.gather(
            *(call(sink) for sink in self._sinks), return_exceptions=True
        )
        failures: list[tuple[str, Exception]] = []
        for sink, result in zip(self._sinks, results, strict=True):
            if isinstance(result, Exception):
                failures.append((sink_name(sink), result))
            elif isinstance(result, BaseException):
                # Cancellation and interpreter exits are not sink failures.
                raise result
        if failures:
            raise _fanout_error(failures, len(self._sinks), action)


def _fanout_error(
    failures: list[tuple[str, Exception]], sink_count: int, action: str
) -> FanoutError:
    details = "; ".join(f"{name}: {error}" for name, error in failures)
    message = f"{action} {len(failures)} of {sink_count} sinks failed: {details}"
    error = FanoutError(message, failures)
    if len(failures) == 1:
        error.__cause__ = failures[0][1]
    return error
