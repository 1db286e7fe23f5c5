"""Parser factory, auto detection and the user regex parser."""

from __future__ import annotations

import pytest

from alertwarden.errors import ConfigError, EventError
from alertwarden.events import Signal, SkipReason
from alertwarden.sources.formats import YearInferringParser, make_parser, seed_last_time
from alertwarden.sources.regex import RegexParser

BASE_S = 1702191346.0  # 2023-12-10T06:55:46Z
PATTERN = r"(?P<time>\S+ \S+) (?P<host>\S+) user=(?P<user>\w+)(?: ip=(?P<ip>\S+))?"


def test_auto_detects_json_and_syslog() -> None:
    parser = make_parser("auto", year=2023)
    json_event = parser.parse(b'  {"class_uid": 1, "time": 1702191346000}')
    syslog_event = parser.parse(b"Dec 10 06:55:46 host app: x")
    assert json_event.signal == Signal.EVENTS
    assert syslog_event.fields["host"] == "host"
    assert syslog_event.time_s == BASE_S


def test_auto_array_not_an_object() -> None:
    with pytest.raises(EventError) as caught:
        make_parser("auto").parse(b"[1]")
    assert caught.value.reason == "not_an_object"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"format": "csv"}, "'csv'"),
        ({"format": "regex"}, "--pattern"),
        ({"format": "json", "pattern": "(?P<time>.*)"}, "--format regex"),
        ({"format": "json", "time_format": "%Y"}, "--time-format"),
        ({"format": "syslog", "year": 12000}, "12000"),
        ({"format": "syslog", "timezone": "Nowhere/City"}, "Nowhere/City"),
        ({"format": "regex", "pattern": "(?P<time>"}, "(?P<time>"),
        ({"format": "regex", "pattern": r"(?P<when>\S+)"}, "named group for the time"),
    ],
)
def test_factory_rejects(options: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_parser(**options)
    assert fragment in str(caught.value)


def test_regex_with_time_format() -> None:
    parser = make_parser(
        "regex", pattern=PATTERN, time_format="%d/%m/%Y %H:%M:%S", timezone="Europe/Berlin"
    )
    event = parser.parse(b"10/12/2023 07:55:46 web1 user=root")
    assert event.time_s == BASE_S
    assert event.fields == {
        "time": "10/12/2023 07:55:46",
        "host": "web1",
        "user": "root",
        "source_id": "web1",
    }


def test_regex_time_format_without_year() -> None:
    parser = RegexParser(r"(?P<timestamp>\w+ \d+ [\d:]+) (?P<msg>.*)", time_format="%b %d %H:%M:%S", year=2024)
    event = parser.parse(b"Feb 29 12:00:00 leap day")
    assert event.time_s == 1709208000.0
    assert event.fields["msg"] == "leap day"


def test_regex_rfc3339_without_format() -> None:
    parser = make_parser("regex", pattern=r"(?P<timestamp>\S+) (?P<msg>.*)")
    event = parser.parse(b"2023-12-10T06:55:46Z hello")
    assert event.time_s == BASE_S
    assert "source_id" not in event.fields


@pytest.mark.parametrize(
    ("line", "reason", "fragments"),
    [
        (b"no match here", "malformed", ["does not match --pattern", "'no match here'"]),
        (b"99/99/2023 07:55:46 web1 user=root", "bad_timestamp", ["time", "'99/99/2023 07:55:46'"]),
    ],
)
def test_regex_rejects(line: bytes, reason: str, fragments: list[str]) -> None:
    parser = make_parser("regex", pattern=PATTERN, time_format="%d/%m/%Y %H:%M:%S")
    with pytest.raises(EventError) as caught:
        parser.parse(line)
    assert caught.value.reason == reason
    for fragment in fragments:
        assert fragment in str(caught.value)


JANUARY_2024_S = 1704067205.0  # 2024-01-01T00:00:05Z


@pytest.mark.parametrize("format", ["auto", "syslog"])
def test_seed_reaches_syslog_parser(format: str) -> None:
    parser = make_parser(format, year=2023)
    seed_last_time(parser, JANUARY_2024_S)
    event = parser.parse(b"Jan  1 00:00:06 host app: x")
    assert event.fields["timestamp"] == "2024-01-01T00:00:06Z"


@pytest.mark.parametrize(
    ("options", "line"),
    [
        ({"format": "json"}, b'{"time": "2023-12-10T06:55:46Z"}'),
        ({"format": "ocsf"}, b'{"class_uid": 1, "time": 1702191346000}'),
        ({"format": "regex", "pattern": r"(?P<timestamp>\S+) (?P<msg>.*)"}, b"2023-12-10T06:55:46Z hi"),
    ],
)
def test_seed_ignored_without_year_inference(options: dict, line: bytes) -> None:
    parser = make_parser(**options)
    seed_last_time(parser, JANUARY_2024_S)
    assert not isinstance(parser, YearInferringParser)
    assert parser.parse(line).time_s == BASE_S


def test_regex_pattern_backtracking_is_bounded() -> None:
    parser = make_parser(
        "regex", pattern=r"^(?P<timestamp>(a|aa)+)$", time_format=None, year=None, timezone="UTC"
    )

    with pytest.raises(EventError, match="was stopped") as raised:
        parser.parse(b"a" * 40 + b"!")
    assert raised.value.reason == SkipReason.MALFORMED
