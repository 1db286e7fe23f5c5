"""Syslog parser for RFC 3164 (BSD) and RFC 5424 lines, detected per line."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import Any

from alertwarden.engine.records import format_time
from alertwarden.errors import EventError
from alertwarden.events import Event, Signal, SkipReason
from alertwarden.sources.timestamps import bad_timestamp, check_range, parse_timestamp_text

MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
MAX_PRI = 191  # facility 23 * 8 + severity 7
ROLLOVER_MONTHS = 6
MAX_FUTURE_S = 86_400.0
"""How far past the wall clock a line may be before a guessed year moves back by one (1 day)."""

_PRI = re.compile(r"<(\d{1,3})>")
# One pattern for the whole RFC 3164 line, so the hot path runs a single match. The tag is
# `app[pid]:` or `app:`, and the app name may contain anything but space, `[`, `]` and `:`.
# A line without a tag keeps everything after the host as the message.
_RFC3164 = re.compile(
    r"(?:<(\d{1,3})>)?([A-Z][a-z]{2}) {1,2}(\d{1,2}) (\d{2}:\d{2}:\d{2})(\.\d{1,6})? +(\S+)"
    r"(?: +(?:([^\s\[\]:]+)(?:\[([^\]]*)\])?: ?)?(.*))?",
    re.DOTALL,
)
_RFC5424 = re.compile(
    r"<(?P<pri>\d{1,3})>(?P<version>[1-9]\d?) (?P<timestamp>\S+) (?P<host>\S+) (?P<app>\S+) "
    r"(?P<pid>\S+) (?P<msgid>\S+)(?: (?P<rest>.*))?",
    re.DOTALL,
)
_BOM = "\ufeff"


class SyslogParser:
    """Parse RFC 3164 and RFC 5424 lines into LOGS events with source_id = host.

    RFC 3164 times have no year and no offset, so the parser infers the year:
    - It starts at `year`. Without it, the first RFC 3164 line takes the current year in `tz`,
      or the year before when that would put the line more than a day after `now_s()`,
      because logs are not written in the future.
    - It grows by one when a line's month is more than six months before the previous line's
      month, as at a December-to-January rollover.
    - A line whose month is more than six months after the previous line's month is a late
      line from before a rollover (Dec 31 after Jan 1). It takes the year before, and the
      year and previous month stay as they were, so the lines after it keep the current year.
    - `seed_last_time` restores this state from an earlier run.
    Times without an offset are in `tz`.
    """

    def __init__(
        self,
        *,
        year: int | None = None,
        tz: tzinfo = UTC,
        now_s: Callable[[], float] = time.time,
    ) -> None:
        self.tz = tz
        self._now_s = now_s
        # True while the year is a guess from the wall clock that the first line may correct.
        self._year_guessed = year is None
        self.year = year if year is not None else datetime.fromtimestamp(now_s(), tz).year
        self._last_month: int | None = None
        # The time of the previous RFC 3164 line; consecutive lines often share it.
        self._cached_key: tuple[int, int, str, str, str | None] | None = None
        self._cached_time: tuple[float, str] = (0.0, "")

    def seed_last_time(self, time_s: float) -> None:
        """Continue the year inference of an earlier run whose latest event was at `time_s`.

        `time_s` is in UTC seconds, e.g. the evaluator clock stored in a checkpoint. Its year
        and month in `tz` replace the year from `year` or the wall clock and the month of the
        previous line, so January lines after a restart past New Year get the new year.
        """
        if not math.isfinite(time_s):
            raise ValueError(f"invalid seed time {time_s!r}: use finite UTC seconds")
        moment = datetime.fromtimestamp(time_s, self.tz)
        self.year = moment.year
        self._last_month = moment.month
        self._year_guessed = False

    def parse(self, line: bytes) -> Event:
        text = decode_utf8(line)
        if text[:1] == "<":
            header = _RFC5424.fullmatch(text)
            if header is not None:
                return self._parse_5424(header, text)
        match = _RFC3164.fullmatch(text)
        if match is None:
            raise EventError(
                SkipReason.MALFORMED,
                f"not a syslog line: expected RFC 3164 `Mmm dd hh:mm:ss host tag: message` or "
                f"RFC 5424 `<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG`, got {_preview(text)}",
            )
        return self._parse_3164(match)

    # --- RFC 3164 -------------------------------------------------------------------------

    def _parse_3164(self, match: re.Match[str]) -> Event:
        pri, month_name, day, clock, fraction, host, app, pid, message = match.groups()
        month = MONTHS.get(month_name)
        if month is None:
            raise EventError(
                SkipReason.MALFORMED,
                f"not a syslog line: {month_name!r} is not a month abbreviation (Jan..Dec)",
            )
        time_s, iso = self._time_3164(month_name, month, day, clock, fraction)

        fields: dict[str, Any] = {}
        if pri is not None:
            _add_priority(fields, pri)
        fields["timestamp"] = iso
        fields["host"] = host
        if app is not None:
            fields["app"] = app
        if pid is not None:
            fields["pid"] = pid
        fields["message"] = message or ""
        fields["source_id"] = host
        return Event(time_s, fields, Signal.LOGS)

    def _time_3164(
        self, month_name: str, month: int, day: str, clock: str, fraction: str | None
    ) -> tuple[float, str]:
        year = self.year
        last_month = self._last_month
        if last_month is not None and month > last_month + ROLLOVER_MONTHS:
            year -= 1
        else:
            if last_month is not None and month < last_month - ROLLOVER_MONTHS:
                self.year += 1
                year = self.year
            self._last_month = month

        result = self._time_in_year(year, month_name, month, day, clock, fraction)
        if self._year_guessed:
            if result[0] > self._now_s() + MAX_FUTURE_S:
                self.year -= 1
                result = self._time_in_year(self.year, month_name, month, day, clock, fraction)
            self._year_guessed = False
        return result

    def _time_in_year(
        self, year: int, month_name: str, month: int, day: str, clock: str, fraction: str | None
    ) -> tuple[float, str]:
        key = (year, month, day, clock, fraction)
        if self._cached_key == key:
            return self._cached_time

        stamp = f"{month_name} {day} {clock}{fraction or ''}"
        hour, minute, second = int(clock[0:2]), int(clock[3:5]), int(clock[6:8])
        try:
            moment = datetime(year, month, int(day), hour, minute, second, tzinfo=self.tz)
        except ValueError as exc:
            raise bad_timestamp("timestamp", f"{stamp} (year {year})", str(exc)) from None
        time_s = moment.timestamp()
        if fraction:
            time_s += float(fraction)
        check_range(time_s, "timestamp", stamp)

        result = (time_s, _format_utc(time_s, fraction))
        self._cached_key = key
        self._cached_time = result
        return result

    # --- RFC 5424 -------------------------------------------------------------------------

    def _parse_5424(self, header: re.Match[str], text: str) -> Event:
        fields: dict[str, Any] = {}
        _add_priority(fields, header.group("pri"))
        raw_time = header.group("timestamp")
        if raw_time == "-":
            raise bad_timestamp("timestamp", raw_time, "the RFC 5424 timestamp is nil")
        time_s = parse_timestamp_text(raw_time, field="timestamp", tz=self.tz)
        fields["timestamp"] = format_time(time_s)

        for name in ("host", "app", "pid", "msgid"):
            value = header.group(name)
            if value != "-":
                fields[name] = value

        # A header without structured data or message is accepted, though RFC 5424 wants `-`.
        rest = header.group("rest") or ""
        if rest.startswith("-"):
            rest = rest[1:]
        elif rest.startswith("["):
            structured_data, end = parse_structured_data(rest)
            fields["structured_data"] = structured_data
            rest = rest[end:]
        elif rest:
            raise EventError(
                SkipReason.MALFORMED,
                f"invalid RFC 5424 line: expected `-` or `[` for structured data, got "
                f"{_preview(rest)}",
            )
        if rest:
            if rest[0] != " ":
                raise EventError(
                    SkipReason.MALFORMED,
                    f"invalid RFC 5424 line: expected a space after the structured data, got "
                    f"{_preview(rest)}",
                )
            message = rest[1:]
            if message.startswith(_BOM):
                message = message[1:]
            fields["message"] = message

        host = fields.get("host")
        if host is not None:
            fields["source_id"] = host
        return Event(time_s, fields, Signal.LOGS)


def _format_utc(time_s: float, fraction: str | None) -> str:
    # RFC 3164 times are mostly whole seconds, and time.strftime formats them about three times
    # faster than format_time's datetime path (timeit, CPython 3.11).
    if fraction:
        return format_time(time_s)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time_s))


def _add_priority(fields: dict[str, Any], pri_text: str) -> None:
    pri = int(pri_text)
    if pri > MAX_PRI:
        raise EventError(
            SkipReason.MALFORMED, f"invalid syslog priority <{pri}>: the maximum is <{MAX_PRI}>"
        )
    fields["facility"] = pri >> 3
    fields["severity"] = pri & 7


def parse_structured_data(text: str) -> tuple[dict[str, dict[str, str]], int]:
    """Parse `[id name="value" ...]...` at the start of `text`.

    Returns `{sd_id: {name: value}}` and the index just past the last `]`. Inside a value `\\"`,
    `\\\\` and `\\]` are escapes; a backslash before any other character stays, as RFC 5424
    section 6.3.3 requires.
    """
    result: dict[str, dict[str, str]] = {}
    index = 0
    length = len(text)
    while index < length and text[index] == "[":
        index += 1
        sd_id, index = _read_name(text, index, "SD-ID")
        params = result.setdefault(sd_id, {})
        while True:
            if index >= length:
                raise _sd_error(text, "the element is not closed with `]`")
            char = text[index]
            if char == "]":
                index += 1
                break
            if char != " ":
                raise _sd_error(text, f"unexpected {char!r} at position {index}")
            name, index = _read_name(text, index + 1, "parameter name")
            if text[index : index + 2] != '="':
                raise _sd_error(text, f'expected `="` after parameter {name!r}')
            value, index = _read_value(text, index + 2)
            params[name] = value
    return result, index


def _read_name(text: str, index: int, name_kind: str) -> tuple[str, int]:
    start = index
    length = len(text)
    while index < length and text[index] not in ' =]"':
        index += 1
    if index == start:
        raise _sd_error(text, f"missing {name_kind} at position {start}")
    return text[start:index], index


def _read_value(text: str, index: int) -> tuple[str, int]:
    parts: list[str] = []
    length = len(text)
    start = index
    while index < length:
        char = text[index]
        if char == '"':
            parts.append(text[start:index])
            return "".join(parts), index + 1
        if char == "\\" and index + 1 < length and text[index + 1] in '"\\]':
            parts.append(text[start:index])
            parts.append(text[index + 1])
            index += 2
            start = index
            continue
        index += 1
    raise _sd_error(text, "a parameter value is not closed with `\"`")


def _sd_error(text: str, detail: str) -> EventError:
    return EventError(
        SkipReason.MALFORMED, f"invalid RFC 5424 structured data {_preview(text)}: {detail}"
    )


def decode_utf8(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(
            SkipReason.INVALID_UTF8,
            f"line is not valid UTF-8: byte {line[exc.start]:#04x} at position {exc.start}",
        ) from None


def _preview(value: str) -> str:
    return repr(value) if len(value) <= 80 else repr(value[:77] + "...")
