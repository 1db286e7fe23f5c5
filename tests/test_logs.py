"""Tests of logging configuration and the rate limiter for repeated messages."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from alertwarden.errors import ConfigError
from alertwarden.logs import RateLimitedLog, configure_logging, get_logger


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    package = logging.getLogger("alertwarden")
    saved = (list(root.handlers), root.level, package.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    package.setLevel(saved[2])
    structlog.reset_defaults()


def parse_lines(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines()]


def test_json_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")

    get_logger("alertwarden.test").warning("webhook_retry", url="http://x/", attempt=2)

    captured = capsys.readouterr()
    assert captured.out == ""
    [entry] = parse_lines(captured.err)
    assert entry["event"] == "webhook_retry"
    assert entry["url"] == "http://x/"
    assert entry["attempt"] == 2
    assert entry["level"] == "warning"
    assert entry["logger"] == "alertwarden.test"
    assert entry["timestamp"].endswith("Z")


def test_json_level_filters() -> None:
    stream = io.StringIO()
    configure_logging("warning", "json", stream=stream)
    log = get_logger("alertwarden.test")

    log.info("started")
    log.warning("late_event", lag_s=3)

    assert [entry["event"] for entry in parse_lines(stream.getvalue())] == ["late_event"]


def test_json_debug_level() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)

    get_logger("alertwarden.test").debug("event_counted", rule="ssh-brute")

    assert parse_lines(stream.getvalue())[0]["rule"] == "ssh-brute"


def test_stdlib_routed_at_warning() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    library = logging.getLogger("httpx")

    library.info("HTTP Request: POST %s", "http://example.com/?token=secret")
    library.warning("pool %s exhausted", "main")

    [entry] = parse_lines(stream.getvalue())
    assert entry["event"] == "pool main exhausted"
    assert entry["logger"] == "httpx"
    assert entry["level"] == "warning"


def test_stdlib_library_level_option() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", library_level="info", stream=stream)

    logging.getLogger("asyncio").info("loop started")

    assert parse_lines(stream.getvalue())[0]["event"] == "loop started"


def test_json_exception_one_line() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)

    try:
        raise ValueError("bad value")
    except ValueError:
        get_logger("alertwarden.test").exception("sink_crashed", sink="webhook")

    [entry] = parse_lines(stream.getvalue())
    assert entry["event"] == "sink_crashed"
    assert "ValueError: bad value" in entry["exception"]


def test_json_unencodable_value() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)

    get_logger("alertwarden.test").warning("odd", value=_Opaque())

    assert parse_lines(stream.getvalue())[0]["value"] == "opaque"


class _Opaque:
    def __str__(self) -> str:
        return "opaque"


def test_console_key_value() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream=stream)

    get_logger("alertwarden.test").warning("webhook_retry", attempt=2)

    output = stream.getvalue()
    assert "webhook_retry" in output
    assert "attempt=2" in output
    assert "\x1b[" not in output


def test_auto_is_json_off_terminal() -> None:
    stream = io.StringIO()
    configure_logging("info", "auto", stream=stream)

    get_logger("alertwarden.test").info("started", tenant="acme")

    assert parse_lines(stream.getvalue())[0]["tenant"] == "acme"


def test_configure_twice_one_handler() -> None:
    first = io.StringIO()
    second = io.StringIO()
    configure_logging("info", "json", stream=first)
    configure_logging("info", "json", stream=second)

    get_logger("alertwarden.test").info("started")

    assert first.getvalue() == ""
    assert len(parse_lines(second.getvalue())) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"level": "verbose"}, "invalid log level 'verbose'"),
        ({"fmt": "xml"}, "invalid log format 'xml'"),
        ({"library_level": "loud"}, "invalid log library_level 'loud'"),
    ],
)
def test_configure_rejects_bad_options(options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        configure_logging(**options)


# ---------------------------------------------------------------------------------------------
# RateLimitedLog


def test_rate_limit_first_logs() -> None:
    limiter = RateLimitedLog(60.0)

    assert limiter.should_log("malformed", 0.0)
    assert limiter.take_suppressed("malformed") == 0


def test_rate_limit_suppresses_within_interval() -> None:
    limiter = RateLimitedLog(60.0)
    limiter.should_log("malformed", 0.0)

    results = [limiter.should_log("malformed", now_s) for now_s in (1.0, 30.0, 59.9)]

    assert results == [False, False, False]


def test_rate_limit_reports_suppressed_count() -> None:
    limiter = RateLimitedLog(60.0)
    limiter.should_log("malformed", 0.0)
    for now_s in (1.0, 2.0, 3.0):
        limiter.should_log("malformed", now_s)

    assert limiter.should_log("malformed", 60.0)
    assert limiter.take_suppressed("malformed") == 3
    assert limiter.take_suppressed("malformed") == 0


def test_rate_limit_interval_from_last_log() -> None:
    limiter = RateLimitedLog(10.0)
    limiter.should_log("k", 0.0)
    limiter.should_log("k", 15.0)

    assert not limiter.should_log("k", 20.0)
    assert limiter.should_log("k", 25.0)


def test_rate_limit_keys_independent() -> None:
    limiter = RateLimitedLog(60.0)
    limiter.should_log(("malformed", 100), 0.0)

    assert limiter.should_log(("bad_timestamp", 100), 1.0)
    assert limiter.should_log(("malformed", 101), 1.0)
    assert not limiter.should_log(("malformed", 100), 1.0)


def test_rate_limit_bounded_keys() -> None:
    limiter = RateLimitedLog(60.0, max_keys=3)
    for bucket in range(10):
        limiter.should_log(("malformed", bucket), float(bucket))

    assert len(limiter) == 3
    # The oldest key was forgotten, so it logs again at once.
    assert limiter.should_log(("malformed", 0), 10.0)


def test_rate_limit_unknown_key_zero() -> None:
    assert RateLimitedLog(1.0).take_suppressed("never seen") == 0


@pytest.mark.parametrize("interval_s", [0, -1.0])
def test_rate_limit_rejects_interval(interval_s: float) -> None:
    with pytest.raises(ConfigError, match="interval_s"):
        RateLimitedLog(interval_s)


@given(
    gaps_s=st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50),
    interval_s=st.floats(min_value=0.5, max_value=50),
)
def test_rate_limit_counts_every_call(gaps_s: list[float], interval_s: float) -> None:
    limiter = RateLimitedLog(interval_s)
    now_s = 0.0
    logged = 0
    reported = 0
    last_logged_s: float | None = None
    for gap_s in gaps_s:
        now_s += gap_s
        if limiter.should_log("k", now_s):
            if last_logged_s is not None:
                assert now_s - last_logged_s >= interval_s
            last_logged_s = now_s
            logged += 1
            reported += limiter.take_suppressed("k")

    reported += limiter.take_suppressed("k")
    # Every call is either logged or counted as suppressed exactly once.
    assert logged + reported == len(gaps_s)
