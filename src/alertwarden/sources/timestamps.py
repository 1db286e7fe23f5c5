"""Timestamp parsing shared by every input format: RFC 3339 strings and Unix epoch numbers.

Every function returns UTC seconds since the Unix epoch as a float, or raises EventError with
reason `bad_timestamp` (unparseable or out of range) or `wrong_type` (not a scalar).

Epoch numbers carry no unit, so the unit is chosen by magnitude. For a value `v`:

- |v| < 1e11 is seconds (1e11 s is the year 5138),
- |v| < 1e14 is milliseconds,
- |v| < 1e17 is microseconds,
- anything larger is nanoseconds.

Every unit is therefore read correctly for times from 1973-03-03T09:46:40Z (1e11 ms) to
5138-11-16T09:46:40Z (1e11 s). Outside that window the ranges overlap: seconds after 5138 are
read as milliseconds, and milliseconds (or finer) before March 1973 as the next coarser unit.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from alertwarden.errors import ConfigError, EventError
from alertwarden.events import SkipReason

MIN_TIME_S = 0.0
"""1970-01-01T00:00:00Z, the earliest accepted event time."""

MAX_TIME_S = 253402300800.0
"""10000-01-01T00:00:00Z; accepted times are strictly earlier (year 9999 at most)."""

SECONDS_LIMIT = 1e11
MILLISECONDS_LIMIT = 1e14
MICROSECONDS_LIMIT = 1e17

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r"\s*(?:([Zz])|([+-])(\d{2}):?(\d{2}))?"
)
_NUMERIC = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_SEPARATOR_PATTERNS = frozenset(("--T::", "--t::", "-- ::"))
_FRACTION_SCALES = tuple(10**digits for digits in range(10))
_fromisoformat = datetime.fromisoformat


def load_timezone(name: str) -> tzinfo:
    """Return the tzinfo for `UTC` or an IANA zone name such as `Europe/Berlin`."""
    if name.upper() in ("UTC", "Z", "ETC/UTC"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"invalid timezone {name!r}: use UTC or an IANA zone name such as Europe/Berlin"
        ) from exc


def bad_timestamp(field: str, value: Any, detail: str) -> EventError:
    return EventError(SkipReason.BAD_TIMESTAMP, f"invalid timestamp in {field}={value!r}: {detail}")


def check_range(time_s: float, field: str, value: Any) -> float:
    """Return `time_s` when it lies in the years 1970..9999, else raise bad_timestamp."""
    if not MIN_TIME_S <= time_s < MAX_TIME_S:
        raise bad_timestamp(field, value, "the time is outside the years 1970..9999")
    return time_s


def parse_timestamp(value: Any, *, field: str, tz: tzinfo = UTC) -> float:
    """Parse an RFC 3339 string, an epoch number or a numeric string into UTC seconds.

    `tz` applies to date-time strings without an offset. `field` names the source field in
    error messages.
    """
    # Exact type checks put the common cases first. bool is an int subclass, so `type(...) is`
    # keeps it out of these branches.
    kind = type(value)
    if kind is str:
        time_s = _parse_common_rfc3339(value, tz)
        if time_s is not None and MIN_TIME_S <= time_s < MAX_TIME_S:
            return time_s
        return parse_timestamp_text(value, field=field, tz=tz)
    if (kind is float or kind is int) and 0 <= value < SECONDS_LIMIT:
        return float(value)  # what parse_epoch returns for seconds in range
    if isinstance(value, bool):
        raise bad_timestamp(field, value, "a boolean is not a time")
    if isinstance(value, int | float):
        return parse_epoch(value, field=field)
    if isinstance(value, str):
        return parse_timestamp_text(value, field=field, tz=tz)
    if value is None:
        raise bad_timestamp(field, value, "the value is null")
    raise EventError(
        SkipReason.WRONG_TYPE,
        f"invalid type of {field}: expected a string or number, got {type(value).__name__} "
        f"{_preview(value)}",
    )


def parse_timestamp_text(text: str, *, field: str, tz: tzinfo = UTC) -> float:
    """Parse an RFC 3339 date-time or a numeric epoch string into UTC seconds."""
    time_s = _parse_common_rfc3339(text, tz)
    if time_s is not None:
        return check_range(time_s, field, text)
    stripped = text.strip()
    match = _RFC3339.fullmatch(stripped)
    if match is not None:
        return _from_rfc3339(match, text, field, tz)
    if _INTEGER.fullmatch(stripped):
        return parse_epoch(int(stripped), field=field, raw=text)
    if _NUMERIC.fullmatch(stripped):
        return parse_epoch(float(stripped), field=field, raw=text)
    return _from_isoformat(stripped, text, field, tz)


def parse_epoch(value: int | float, *, field: str, raw: Any = None) -> float:
    """Convert an epoch number of unknown unit into UTC seconds, choosing the unit by magnitude."""
    shown = value if raw is None else raw
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_timestamp(field, shown, "NaN and infinity are not times")
    magnitude = abs(value)
    if magnitude < SECONDS_LIMIT:
        divisor = 1
    elif magnitude < MILLISECONDS_LIMIT:
        divisor = 1_000
    elif magnitude < MICROSECONDS_LIMIT:
        divisor = 1_000_000
    else:
        divisor = 1_000_000_000
    return check_range(divide_epoch(value, divisor), field, shown)


def parse_epoch_unit(value: Any, *, divisor: int, field: str) -> float:
    """Convert an epoch value of a known unit (`divisor` units per second) into UTC seconds.

    Accepts an int, a float or a string of digits, as OTLP/JSON writes 64-bit integers as strings.
    """
    number: int | float
    if isinstance(value, bool):
        raise bad_timestamp(field, value, "a boolean is not a time")
    if isinstance(value, int | float):
        number = value
    elif isinstance(value, str):
        stripped = value.strip()
        if _INTEGER.fullmatch(stripped):
            number = int(stripped)
        elif _NUMERIC.fullmatch(stripped):
            number = float(stripped)
        else:
            raise bad_timestamp(field, value, "expected an integer number")
    elif value is None:
        raise bad_timestamp(field, value, "the value is null")
    else:
        raise EventError(
            SkipReason.WRONG_TYPE,
            f"invalid type of {field}: expected a number, got {type(value).__name__} "
            f"{_preview(value)}",
        )
    if isinstance(number, float) and not math.isfinite(number):
        raise bad_timestamp(field, value, "NaN and infinity are not times")
    return check_range(divide_epoch(number, divisor), field, value)


def divide_epoch(value: int | float, divisor: int) -> float:
    """Return an epoch value of `divisor` units per second as seconds, the same in both builds.

    An int above 2**53, such as epoch nanoseconds, is divided in two exact parts: `value /
    divisor` is rounded once by Python but twice by mypyc's compiled code, which converts the
    int to a float first.
    """
    if divisor == 1:
        return float(value)
    if isinstance(value, int):
        # Integer division first keeps nanosecond values exact to the float's precision.
        whole, rest = divmod(value, divisor)
        return whole + rest / divisor
    return value / divisor


def _parse_common_rfc3339(text: str, tz: tzinfo) -> float | None:
    """Parse the common RFC 3339 forms, or return None to leave `text` to the general parser.

    The forms are `YYYY-MM-DD[Tt ]hh:mm:ss`, an optional fraction of 1 to 9 digits after `.` or
    `,`, and an optional `Z`, `z` or `+hh:mm`/`-hh:mm` directly after it. For each of them the
    result equals that of `_from_rfc3339`, bit for bit, because the arithmetic is the same.
    Everything else returns None, including leap seconds (:60), offsets out of range, `+hhmm`,
    whitespace and the week-date form, so those keep the messages of the general parser. Digits
    are checked with isdecimal, which accepts the same characters as `\\d` and int().
    """
    size = len(text)
    # The characters at 4, 7, 10, 13 and 16 in one slice, such as "--T::".
    if size < 19 or text[4:17:3] not in _SEPARATOR_PATTERNS:
        return None

    offset_s = 0
    naive = False
    last = text[-1]
    if last == "Z" or last == "z":
        end = size - 1
    elif size >= 25 and text[-3] == ":" and text[-6] in "+-":
        hours_text = text[-5:-3]
        minutes_text = text[-2:]
        if not (hours_text.isdecimal() and minutes_text.isdecimal()):
            return None
        offset_hours = int(hours_text)
        offset_minutes = int(minutes_text)
        if offset_hours > 23 or offset_minutes > 59:
            return None
        offset_s = offset_hours * 3600 + offset_minutes * 60
        if text[-6] == "-":
            offset_s = -offset_s
        end = size - 6
    else:
        end = size
        naive = True

    fraction = ""
    if end != 19:
        if not 21 <= end <= 29 or text[19] not in ".,":
            return None
        fraction = text[20:end]
        if not fraction.isdecimal():
            return None

    # fromisoformat (C) validates the calendar date and the time of day of the fixed-width
    # prefix. It rejects second 60, which the general parser reads as a leap second.
    try:
        moment = _fromisoformat(text[:19])
    except ValueError:
        return None

    if naive and tz is not UTC:
        time_s = moment.replace(tzinfo=tz).timestamp()
    else:
        delta = moment - _EPOCH_NAIVE
        time_s = float(delta.days * 86400 + delta.seconds - offset_s)
    if fraction:
        time_s += int(fraction) / _FRACTION_SCALES[len(fraction)]
    return time_s


def _from_rfc3339(match: re.Match[str], text: str, field: str, tz: tzinfo) -> float:
    year_text, month_text, day_text, hour_text, minute_text, second_text, fraction, zulu, sign, \
        offset_hours, offset_minutes = match.groups()
    year, month, day = int(year_text), int(month_text), int(day_text)
    hour, minute, second = int(hour_text), int(minute_text), int(second_text)

    # RFC 3339 allows a leap second (:60), which counts here as the first second of the next
    # minute.
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)):
        raise bad_timestamp(field, text, "the date does not exist")
    if hour > 23 or minute > 59 or second > 60:
        raise bad_timestamp(field, text, "the time of day is out of range")

    if zulu is not None or sign is not None:
        offset_s = 0
        if sign is not None:
            if int(offset_hours) > 23 or int(offset_minutes) > 59:
                raise bad_timestamp(field, text, "the UTC offset is out of range")
            offset_s = int(offset_hours) * 3600 + int(offset_minutes) * 60
            if sign == "-":
                offset_s = -offset_s
        # Plain arithmetic skips building a datetime and a timezone object per line.
        time_s = float(
            _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
            - offset_s
        )
    else:
        leap_s = 1 if second == 60 else 0
        moment = datetime(year, month, day, hour, minute, second - leap_s, tzinfo=tz)
        time_s = moment.timestamp() + leap_s

    if fraction:
        time_s += int(fraction) / 10 ** len(fraction)
    return check_range(time_s, field, text)


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Return days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _from_isoformat(stripped: str, text: str, field: str, tz: tzinfo) -> float:
    # Fallback for other ISO 8601 forms that Python reads, e.g. the basic form 20231210T065546Z.
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise bad_timestamp(
            field, text, "expected RFC 3339 (2023-12-10T06:55:46Z) or epoch seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    try:
        time_s = (moment - _EPOCH).total_seconds()
    except OverflowError:
        raise bad_timestamp(field, text, "the time is outside the years 1970..9999") from None
    return check_range(time_s, field, text)


def _preview(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."
