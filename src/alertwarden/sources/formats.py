"""The parser factory behind `--format`, and the per-line auto detection."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from alertwarden.errors import ConfigError
from alertwarden.events import Event
from alertwarden.sources.jsonl import JsonParser, OcsfParser, OtelParser
from alertwarden.sources.regex import RegexParser
from alertwarden.sources.syslog import SyslogParser
from alertwarden.sources.timestamps import load_timezone

FORMATS = ("auto", "json", "otel", "ocsf", "syslog", "regex")
MIN_YEAR = 1970
MAX_YEAR = 9999

_JSON_STARTS = (ord("{"), ord("["))
_WHITESPACE = b" \t\r\n"


class Parser(Protocol):
    """Turns one input line (without its terminator) into an Event or raises EventError."""

    def parse(self, line: bytes) -> Event: ...


@runtime_checkable
class YearInferringParser(Protocol):
    """A parser that infers missing years from the lines before, as for RFC 3164 syslog."""

    def parse(self, line: bytes) -> Event: ...

    def seed_last_time(self, time_s: float) -> None: ...


def seed_last_time(parser: Parser, time_s: float) -> None:
    """Seed `parser`'s year inference with the latest event time of an earlier run.

    `time_s` is in UTC seconds. Call it before the first line of a resumed read. Parsers that
    infer no year (JSON, OTel, OCSF, regex) ignore it.
    """
    if isinstance(parser, YearInferringParser):
        parser.seed_last_time(time_s)


class AutoParser:
    """Parse a line as JSON when it starts with `{` or `[` after whitespace, else as syslog."""

    def __init__(self, json_parser: JsonParser, syslog_parser: SyslogParser) -> None:
        self.json_parser = json_parser
        self.syslog_parser = syslog_parser

    def parse(self, line: bytes) -> Event:
        first = line[:1]
        if first and first[0] in _WHITESPACE:
            first = line.lstrip(_WHITESPACE)[:1]
        if first and first[0] in _JSON_STARTS:
            return self.json_parser.parse(line)
        return self.syslog_parser.parse(line)

    def seed_last_time(self, time_s: float) -> None:
        """Seed the syslog parser's year inference; see `SyslogParser.seed_last_time`."""
        self.syslog_parser.seed_last_time(time_s)


def make_parser(
    format: str,
    *,
    pattern: str | None = None,
    time_format: str | None = None,
    year: int | None = None,
    timezone: str = "UTC",
) -> Parser:
    """Build the parser for `--format`; raise ConfigError for invalid option combinations."""
    if format not in FORMATS:
        raise ConfigError(f"invalid --format {format!r}: use one of {', '.join(FORMATS)}")
    if format == "regex" and pattern is None:
        raise ConfigError("--format regex needs --pattern with named groups, e.g. (?P<timestamp>\\S+)")
    if format != "regex" and pattern is not None:
        raise ConfigError(f"--pattern applies only to --format regex, not --format {format}")
    if format != "regex" and time_format is not None:
        raise ConfigError(f"--time-format applies only to --format regex, not --format {format}")
    if year is not None and not MIN_YEAR <= year <= MAX_YEAR:
        raise ConfigError(f"invalid --year {year}: use a year from {MIN_YEAR} to {MAX_YEAR}")
    tz = load_timezone(timezone)

    if format == "auto":
        return AutoParser(JsonParser(tz), SyslogParser(year=year, tz=tz))
    if format == "json":
        return JsonParser(tz)
    if format == "otel":
        return OtelParser(tz)
    if format == "ocsf":
        return OcsfParser()
    if format == "syslog":
        return SyslogParser(year=year, tz=tz)
    assert pattern is not None
    return RegexParser(pattern, time_format=time_format, year=year, tz=tz)
