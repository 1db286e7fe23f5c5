"""Duration parsing, formatting and the default bucket of a window."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alertwarden.rules import default_bucket_s, format_duration, parse_duration
from alertwarden.rules.durations import MAX_BUCKETS


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("6h", 21600),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        ("0s", 0),
        (" 10m ", 600),
        ("600", 600),
        (600, 600),
        (0, 0),
    ],
)
def test_parse_duration_valid(text: object, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "value",
    ["10x", "", "m", "10 m", "30m1h", "1.5m", "-5", "1w", "10M", -1, 1.5, 60.0, True, None, [60], "１０m"],
)
def test_parse_duration_invalid(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (1, "1s"), (90, "90s"), (600, "10m"), (5400, "90m"), (3600, "1h"), (86400, "1d"), (90000, "25h")],
)
def test_format_duration_forms(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**9))
def test_format_duration_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("window_s", "bucket_s"),
    [
        (600, 60),  # 10m
        (300, 30),  # 5m
        (240, 24),  # 4m
        (90, 9),
        (7, 1),  # fewer than 10 s: no divisor gives 10 buckets
        (3600, 60),  # 1h
        (650, 50),  # 60 does not divide 650; 50 is its largest divisor <= 60
        (10, 1),
        (599, 1),  # prime: only 1 gives at least 10 buckets
        (7 * 86400, 120),  # 60 s would give 10080 buckets, over the limit
        (30 * 86400, 300),
    ],
)
def test_default_bucket(window_s: int, bucket_s: int) -> None:
    assert default_bucket_s(window_s) == bucket_s


@given(st.integers(min_value=1, max_value=30 * 86400))
def test_default_bucket_always_valid(window_s: int) -> None:
    bucket_s = default_bucket_s(window_s)
    assert window_s % bucket_s == 0
    assert window_s // bucket_s <= MAX_BUCKETS
