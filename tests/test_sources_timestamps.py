"""Timestamp parsing: RFC 3339 forms, epoch magnitudes, time zones and rejects."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alertwarden.errors import ConfigError, EventError
from alertwarden.sources.timestamps import load_timezone, parse_timestamp

BASE_S = 1702191346.0  # 2023-12-10T06:55:46Z


@pytest.mark.parametrize(
    ("text", "expected_s"),
    [
        ("2023-12-10T06:55:46Z", BASE_S),
        ("2023-12-10T06:55:46z", BASE_S),
        ("2023-12-10 06:55:46Z", BASE_S),
        ("2023-12-10T08:55:46+02:00", BASE_S),
        ("2023-12-10T01:25:46-05:30", BASE_S),
        ("2023-12-10T06:55:46+0000", BASE_S),
        ("2023-12-10T06:55:46.5Z", BASE_S + 0.5),
        ("2023-12-10T06:55:46.123456Z", BASE_S + 0.123456),
        ("2023-12-10T06:55:46.123456789Z", BASE_S + 0.123456789),
        ("2023-12-10T06:55:46", BASE_S),
        ("2016-12-31T23:59:60Z", 1483228800.0),
        ("20231210T065546Z", BASE_S),
    ],
)
def test_rfc3339_forms(text: str, expected_s: float) -> None:
    assert parse_timestamp(text, field="ts") == pytest.approx(expected_s, abs=1e-6)


@pytest.mark.parametrize(
    ("value", "expected_s"),
    [
        (1702191346, BASE_S),
        (1702191346.25, BASE_S + 0.25),
        (1702191346123, BASE_S + 0.123),
        (1702191346123456, BASE_S + 0.123456),
        (1702191346123456789, BASE_S + 0.123456789),
        ("1702191346", BASE_S),
        ("1702191346123", BASE_S + 0.123),
        ("1702191346123456789", BASE_S + 0.123456789),
        ("1702191346.5", BASE_S + 0.5),
        (0, 0.0),
        (99_999_999_999, 99_999_999_999.0),
        (100_000_000_000, 100_000_000.0),
    ],
)
def test_epoch_magnitudes(value: object, expected_s: float) -> None:
    assert parse_timestamp(value, field="ts") == pytest.approx(expected_s, abs=1e-6)


def test_naive_time_uses_timezone() -> None:
    berlin = load_timezone("Europe/Berlin")
    # 07:55:46 in Berlin in December is CET, UTC+1.
    assert parse_timestamp("2023-12-10T07:55:46", field="ts", tz=berlin) == BASE_S
    # Summer time is UTC+2.
    assert parse_timestamp("2023-07-01T12:00:00", field="ts", tz=berlin) == 1688205600.0
    # An explicit offset wins over the configured zone.
    assert parse_timestamp("2023-12-10T06:55:46Z", field="ts", tz=berlin) == BASE_S


def test_timezone_invalid_name() -> None:
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        load_timezone("Mars/Olympus")


@pytest.mark.parametrize(
    ("value", "reason", "fragment"),
    [
        (math.nan, "bad_timestamp", "nan"),
        (math.inf, "bad_timestamp", "inf"),
        ("NaN", "bad_timestamp", "'NaN'"),
        (True, "bad_timestamp", "True"),
        (None, "bad_timestamp", "None"),
        ("1969-12-31T23:59:59Z", "bad_timestamp", "1969"),
        ("10000-01-01T00:00:00Z", "bad_timestamp", "10000"),
        ("9999-12-31T23:00:00-05:00", "bad_timestamp", "9999"),
        (-5, "bad_timestamp", "-5"),
        ("2023-02-30T00:00:00Z", "bad_timestamp", "2023-02-30"),
        ("2023-12-10T24:00:00Z", "bad_timestamp", "24:00"),
        ("yesterday", "bad_timestamp", "'yesterday'"),
        ({"seconds": 5}, "wrong_type", "dict"),
        ([1702191346], "wrong_type", "list"),
    ],
)
def test_reject_reason_and_message(value: object, reason: str, fragment: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_timestamp(value, field="ts")
    assert caught.value.reason == reason
    assert "ts" in str(caught.value)
    assert fragment in str(caught.value)


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_rfc3339_round_trip(moment: datetime, offset_minutes: int) -> None:
    shifted = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    text = shifted.isoformat(timespec="microseconds")
    assert parse_timestamp(text, field="ts") == pytest.approx(moment.timestamp(), abs=2e-6)


# 1e11 and 1e14 ms bound the window in which milliseconds are read as milliseconds.
@given(st.integers(min_value=100_000_000_000, max_value=99_999_999_999_999))
def test_epoch_milliseconds_round_trip(milliseconds: int) -> None:
    assert parse_timestamp(milliseconds, field="ts") == pytest.approx(milliseconds / 1000, abs=1e-3)
    assert parse_timestamp(str(milliseconds), field="ts") == pytest.approx(
        milliseconds / 1000, abs=1e-3
    )


@given(st.integers(min_value=100_000_000_000_000_000, max_value=253402300798_000_000_000))
def test_epoch_nanoseconds_round_trip(nanoseconds: int) -> None:
    # Floats near 2.5e11 s are spaced about 3e-5 s apart.
    assert parse_timestamp(nanoseconds, field="ts") == pytest.approx(nanoseconds / 1e9, abs=1e-4)
