"""Rule durations: parsing `90s`/`10m`/`1h30m`, formatting, and the default bucket of a window.

Durations are whole seconds. The units are s, m, h and d (a day is 86400 s). There are no months
or years, because their length varies.
"""

from __future__ import annotations

import re

UNIT_SECONDS: dict[str, int] = {"d": 86400, "h": 3600, "m": 60, "s": 1}

MAX_BUCKETS = 10_000
"""Maximum number of buckets in a window (window_s / bucket_s); each group keeps one count per bucket."""

_DURATION_RE = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
_MAX_DURATION_CHARS = 64


def parse_duration(value: object) -> int:
    """Parse a duration into whole seconds.

    Accepts an int (seconds), a string of digits (seconds), or units in the order d, h, m, s
    such as `90s`, `10m`, `6h`, `1d` or `1h30m`. Raises ValueError naming the value otherwise.
    Negative values are rejected here, and each field sets its own lower limit.
    """
    if value is None or isinstance(value, bool):
        # Spelled as YAML and JSON spell them, since rules are written in those.
        literal = "null" if value is None else str(value).lower()
        raise ValueError(f"invalid duration {literal}: use seconds or a string such as '90s' or '10m'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        return value
    if isinstance(value, float):
        raise ValueError(
            f"invalid duration {value!r}: durations are whole seconds, write an int or a string "
            "such as '90s'"
        )
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: use seconds or a string such as '90s' or '10m'")
    return _parse_duration_text(value)


def _parse_duration_text(value: str) -> int:
    text = value.strip()
    if len(text) > _MAX_DURATION_CHARS:
        raise ValueError(f"invalid duration {value[:_MAX_DURATION_CHARS]!r}...: too long")
    if text.isascii() and text.isdigit():
        return int(text)
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None or not any(match.groups()):
        raise ValueError(
            f"invalid duration {value!r}: use whole seconds or units d, h, m, s in that order, "
            "such as '90s', '10m', '6h', '1d' or '1h30m'"
        )
    total = 0
    for amount, unit in zip(match.groups(), UNIT_SECONDS, strict=True):
        if amount is not None:
            total += int(amount) * UNIT_SECONDS[unit]
    return total


def format_duration(seconds: int) -> str:
    """Format whole seconds with the largest single unit that divides them exactly.

    `600` -> `10m`, `90` -> `90s`, `5400` -> `90m`, `86400` -> `1d`, `0` -> `0s`. The result
    parses back to the same number with parse_duration.
    """
    if seconds == 0:
        return "0s"
    for unit, size in UNIT_SECONDS.items():
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise AssertionError("unreachable: every int is a multiple of 1 s")


def default_bucket_s(window_s: int) -> int:
    """Return the default bucket of a window (all values in seconds).

    - Window under 10 minutes: the largest divisor of the window that still gives at least 10
      buckets, or 1 s when none does (windows under 10 s).
    - Window of 10 minutes or more: 60 s when 60 divides the window, otherwise the largest
      divisor of the window that is at most 60.
    - If that would make more than MAX_BUCKETS buckets (windows over about 6.9 days), the
      smallest divisor of the window that keeps the count within MAX_BUCKETS, preferring
      multiples of 60 s.
    """
    if window_s < 600:
        bucket_s = _largest_divisor_at_most(window_s, window_s // 10)
    else:
        bucket_s = _largest_divisor_at_most(window_s, 60)
    if window_s // bucket_s <= MAX_BUCKETS:
        return bucket_s
    return _smallest_bucket_within_limit(window_s)


def _largest_divisor_at_most(number: int, limit: int) -> int:
    for candidate in range(min(limit, number), 1, -1):
        if number % candidate == 0:
            return candidate
    return 1


def _smallest_bucket_within_limit(window_s: int) -> int:
    smallest = -(-window_s // MAX_BUCKETS)
    first_minute_multiple = -(-smallest // 60) * 60
    for candidate in range(first_minute_multiple, window_s + 1, 60):
        if window_s % candidate == 0:
            return candidate
    for candidate in range(smallest, window_s + 1):
        if window_s % candidate == 0:
            return candidate
    return window_s
