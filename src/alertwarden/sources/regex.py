"""Parser for line formats described by a user regular expression with named groups."""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from typing import Any

import regex

from alertwarden.errors import ConfigError, EventError
from alertwarden.events import Event, Signal, SkipReason
from alertwarden.rules.match import REGEX_TIMEOUT_S
from alertwarden.sources.syslog import decode_utf8
from alertwarden.sources.timestamps import (
    bad_timestamp,
    check_range,
    parse_timestamp_text,
)

TIME_GROUPS = ("timestamp", "time")
_YEAR_DIRECTIVES = ("%Y", "%y", "%G")


class RegexParser:
    """Parse lines with a regular expression whose named groups become the event fields.

    The group `timestamp` (or else `time`) is the event time: read with `time_format` (strptime
    syntax) when given, else as RFC 3339 or epoch. A time format without a year directive takes
    `year` (default: the current UTC year). Times without an offset are in `tz`. A group named
    `host` becomes source_id unless the pattern has a `source_id` group.
    """

    def __init__(
        self,
        pattern: str,
        *,
        time_format: str | None = None,
        year: int | None = None,
        tz: tzinfo = UTC,
    ) -> None:
        try:
            # re checks the syntax, so accepted patterns and messages match Python's re; the
            # regex package runs the search, because only it can stop a search that backtracks.
            re.compile(pattern)
            self.regex = regex.compile(pattern)
        except (re.error, regex.error) as exc:
            raise ConfigError(f"invalid --pattern {pattern!r}: {exc}") from None
        groups = self.regex.groupindex
        time_group = next((name for name in TIME_GROUPS if name in groups), None)
        if time_group is None:
            raise ConfigError(
                f"invalid --pattern {pattern!r}: it needs a named group for the time, "
                "e.g. (?P<timestamp>\\S+)"
            )
        self.time_group = time_group
        self.time_format = time_format
        self.tz = tz
        self.year = year if year is not None else datetime.now(UTC).year
        self._needs_year = time_format is not None and not any(
            directive in time_format for directive in _YEAR_DIRECTIVES
        )

    def parse(self, line: bytes) -> Event:
        text = decode_utf8(line)
        try:
            match = self.regex.search(text, timeout=REGEX_TIMEOUT_S)
        except TimeoutError:
            raise EventError(
                SkipReason.MALFORMED,
                f"--pattern took longer than {REGEX_TIMEOUT_S * 1000:.0f} ms on this line and "
                f"was stopped; simplify nested repeats in the pattern: {_preview(text)}",
            ) from None
        if match is None:
            raise EventError(
                SkipReason.MALFORMED,
                f"line does not match --pattern {self.regex.pattern!r}: {_preview(text)}",
            )
        fields: dict[str, Any] = {
            name: value for name, value in match.groupdict().items() if value is not None
        }
        raw_time = fields.get(self.time_group)
        if raw_time is None:
            raise bad_timestamp(self.time_group, None, "the time group did not match")
        time_s = self._parse_time(raw_time)
        if "source_id" not in fields and "host" in fields:
            fields["source_id"] = fields["host"]
        return Event(time_s, fields, Signal.LOGS)

    def _parse_time(self, raw: str) -> float:
        if self.time_format is None:
            return parse_timestamp_text(raw, field=self.time_group, tz=self.tz)
        # A format without a year gets the configured one prepended, so 29 February parses in
        # leap years and strptime never falls back to its default year 1900.
        text, time_format = raw, self.time_format
        if self._needs_year:
            text, time_format = f"{self.year} {raw}", f"%Y {self.time_format}"
        try:
            moment = datetime.strptime(text, time_format)
        except ValueError as exc:
            raise bad_timestamp(
                self.time_group, raw, f"does not match --time-format {self.time_format!r}: {exc}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self.tz)
        return check_range(moment.timestamp(), self.time_group, raw)


def _preview(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:77] + "...")
