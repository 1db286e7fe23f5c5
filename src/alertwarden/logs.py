"""Structured logging: structlog events and stdlib records rendered by one handler on stderr.

Logs go to stderr because stdout carries the notifications of the console and jsonl sinks.
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, TextIO

import orjson
import structlog

from alertwarden.errors import ConfigError

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_FORMATS = ("auto", "console", "json")
_PACKAGE_LOGGER = "alertwarden"

# The handler installed by the last configure_logging call, removed by the next one so that
# calling it twice does not print every line twice.
_installed_handler: logging.Handler | None = None


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    *,
    library_level: str = "warning",
    stream: TextIO | None = None,
) -> None:
    """Send alertwarden's structlog events and all stdlib logging to `stream` (default stderr).

    `level` applies to the `alertwarden` loggers and `library_level` to every other logger
    (httpx, asyncio). The default of WARNING matters: at INFO httpx logs each request with its
    full URL, query string included, which can contain a webhook's secret token.

    `fmt` is `console` (key=value, coloured on a terminal), `json` (one object per line) or
    `auto`. Auto picks console on a terminal and JSON otherwise. A service's stderr that is not
    a terminal is usually read by journald, Docker or Kubernetes and shipped to a log store.
    Log stores parse JSON without a custom pattern, which logfmt needs because its quoting
    varies by tool.
    """
    package_level = _parse_level("level", level)
    other_level = _parse_level("library_level", library_level)
    if fmt not in _FORMATS:
        raise ConfigError(f"invalid log format {fmt!r}: use one of {', '.join(_FORMATS)}")
    output = stream if stream is not None else sys.stderr
    is_terminal = _is_terminal(output)
    use_json = fmt == "json" or (fmt == "auto" and not is_terminal)

    structlog.configure(
        processors=[
            # Drops events below the logger's level before any processing work.
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached, so a later configure_logging call (tests, the CLI) also reaches loggers
        # that modules created at import time.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(_make_formatter(use_json, colors=is_terminal and not use_json))
    _install_handler(handler, other_level)
    logging.getLogger(_PACKAGE_LOGGER).setLevel(package_level)


def get_logger(name: str) -> Any:
    """Return a structlog logger; pass a module's `__name__` so that `level` applies to it.

    Log an event name with key/values: `log.warning("webhook_retry", url=url, attempt=2)`.
    Events always end in the stdlib logger `name`. Before configure_logging runs, as in a
    process that uses the stores as a library, they follow stdlib's defaults (WARNING and
    above on stderr), where structlog's own default would print every level on stdout.
    """
    return structlog.wrap_logger(logging.getLogger(name), wrapper_class=structlog.stdlib.BoundLogger)


def _parse_level(option: str, value: str) -> int:
    try:
        return _LEVELS[value.lower()]
    except KeyError:
        raise ConfigError(
            f"invalid log {option} {value!r}: use one of {', '.join(_LEVELS)}"
        ) from None


def _shared_processors() -> list[Any]:
    # Applied both to structlog events and to stdlib records (as foreign_pre_chain), so a line
    # from httpx carries the same timestamp, level and logger keys as one of ours.
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _make_formatter(use_json: bool, *, colors: bool) -> structlog.stdlib.ProcessorFormatter:
    final: list[Any]
    if use_json:
        final = [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps_json),
        ]
    else:
        final = [structlog.dev.ConsoleRenderer(colors=colors)]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )


def _dumps_json(event: dict[str, Any], **_: Any) -> str:
    # default=str renders values orjson cannot encode (exceptions, paths) instead of failing.
    return orjson.dumps(event, default=str).decode()


def _install_handler(handler: logging.Handler, root_level: int) -> None:
    global _installed_handler
    root = logging.getLogger()
    if _installed_handler is not None:
        root.removeHandler(_installed_handler)
    root.addHandler(handler)
    root.setLevel(root_level)
    _installed_handler = handler


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:
        return False


@dataclass(slots=True)
class _KeyState:
    last_logged_s: float
    suppressed: int = 0


class RateLimitedLog:
    """Decides whether a repeated message is logged: once per key and `interval_s`.

    Use it for messages that input data can repeat at high rate:

        if limiter.should_log(key, now_s):
            log.warning("bad_line", reason=reason, suppressed=limiter.take_suppressed(key))

    `now_s` must come from a clock that does not go backwards, such as time.monotonic(). At
    most `max_keys` keys are tracked. Beyond that, the key logged longest ago is forgotten with
    its suppressed count, so keys that include a time bucket cannot grow memory without bound.
    """

    def __init__(self, interval_s: float, *, max_keys: int = 10_000) -> None:
        if not interval_s > 0:
            raise ConfigError(f"invalid interval_s {interval_s!r}: use a number above 0")
        if max_keys < 1:
            raise ConfigError(f"invalid max_keys {max_keys!r}: use an integer >= 1")
        self.interval_s = interval_s
        self.max_keys = max_keys
        # Ordered by the time each key was last logged, oldest first.
        self._keys: OrderedDict[object, _KeyState] = OrderedDict()

    def should_log(self, key: object, now_s: float) -> bool:
        """Return True when `key` was not logged in the last `interval_s`, else count a repeat."""
        state = self._keys.get(key)
        if state is None:
            self._make_room()
            self._keys[key] = _KeyState(last_logged_s=now_s)
            return True
        if now_s - state.last_logged_s >= self.interval_s:
            state.last_logged_s = now_s
            self._keys.move_to_end(key)
            return True
        state.suppressed += 1
        return False

    def take_suppressed(self, key: object) -> int:
        """Return and reset the number of repeats of `key` suppressed since it was last logged."""
        state = self._keys.get(key)
        if state is None:
            return 0
        count = state.suppressed
        state.suppressed = 0
        return count

    def __len__(self) -> int:
        return len(self._keys)

    def _make_room(self) -> None:
        while len(self._keys) >= self.max_keys:
            self._keys.popitem(last=False)
