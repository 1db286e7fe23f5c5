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


# The fast path for common RFC 3339 forms must agree with the general regex parser exactly.

from alertwarden.sources import timestamps as ts_module  # noqa: E402

BERLIN = load_timezone("Europe/Berlin")


def general_parse(text: str, tz: object) -> float | str:
    """Return the general parser's time, or the reason and message it raises."""
    match = ts_module._RFC3339.fullmatch(text.strip())
    assert match is not None, f"fast path accepted {text!r}, which the regex rejects"
    try:
        return ts_module._from_rfc3339(match, text, "ts", tz)  # type: ignore[arg-type]
    except EventError as error:
        return f"{error.reason}: {error}"


def fast_parse(text: str, tz: object) -> float | str | None:
    time_s = ts_module._parse_common_rfc3339(text, tz)  # type: ignore[arg-type]
    if time_s is None:
        return None
    try:
        return ts_module.check_range(time_s, "ts", text)
    except EventError as error:
        return f"{error.reason}: {error}"


@pytest.mark.parametrize(
    "text",
    [
        "2024-03-05T10:00:00.123Z",
        "2024-03-05T10:00:00Z",
        "2024-03-05t10:00:00z",
        "2024-03-05 10:00:00,5+02:00",
        "2024-03-05T10:00:00.123456789-05:30",
        "2024-03-05T10:00:00",
        "1969-12-31T23:59:59Z",
    ],
)
def test_fast_path_common_forms(text: str) -> None:
    fast = fast_parse(text, UTC)
    assert fast is not None
    assert fast == general_parse(text, UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2016-12-31T23:59:60Z",
        "2024-03-05T10:00:00+05:75",
        "2024-03-05T10:00:00+24:00",
        "2024-03-05T10:00:00+0530",
        "2024-03-05T10:00:00 Z",
        "2024-03-05T10:00:00.Z",
        "2024-03-05T10:00:00.1234567890Z",
        "2024-W10-1T10:00:00",
        " 2024-03-05T10:00:00Z",
        "2024-03-05x10:00:00Z",
        "2023-02-30T00:00:00Z",
    ],
)
def test_fast_path_leaves_rest_to_general(text: str) -> None:
    assert fast_parse(text, UTC) is None


ODD_CHARS = st.text(alphabet="0123456789-:TtZz .,+²٥W", min_size=1, max_size=3)


def number_text(low: int, high: int, width: int) -> st.SearchStrategy[str]:
    """Zero-padded numbers, sometimes out of range, sometimes replaced by odd characters."""
    number = st.integers(min_value=low, max_value=high).map(lambda value: f"{value:0{width}d}")
    return st.integers(min_value=0, max_value=29).flatmap(lambda pick: ODD_CHARS if pick == 0 else number)


@st.composite
def timestamp_texts(draw: st.DrawFn) -> str:
    """RFC 3339-like strings: mostly valid, with out-of-range values and odd characters."""
    date_time = "{}-{}-{}{}{}:{}:{}".format(
        draw(number_text(1, 9999, 4)),
        draw(number_text(0, 13, 2)),
        draw(number_text(0, 32, 2)),
        draw(st.sampled_from("TTt x")),
        draw(number_text(0, 24, 2)),
        draw(number_text(0, 60, 2)),
        draw(number_text(0, 61, 2)),
    )
    digits = st.text(alphabet="0123456789", max_size=11)
    fraction = draw(
        st.one_of(
            st.just(""),
            st.tuples(st.sampled_from([".", ",", ".."]), digits).map("".join),
            ODD_CHARS,
        )
    )
    zone = draw(
        st.one_of(
            st.sampled_from(["", "Z", "z", " Z", "+05", "+0530"]),
            st.tuples(st.sampled_from("+-"), number_text(0, 25, 2), st.sampled_from("::;"), number_text(0, 61, 2)).map(
                "".join
            ),
        )
    )
    return date_time + fraction + zone


@given(timestamp_texts(), st.sampled_from([UTC, BERLIN]))
def test_fast_path_equals_general_generated(text: str, tz: object) -> None:
    fast = fast_parse(text, tz)
    if fast is not None:
        assert fast == general_parse(text, tz)


@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.sampled_from(["", "Z", "+05:30", "-11:59", "+00:00"]),
    st.integers(min_value=0, max_value=9),
    st.sampled_from([UTC, BERLIN]),
)
def test_fast_path_equals_general_datetimes(
    moment: datetime, zone: str, fraction_digits: int, tz: object
) -> None:
    text = f"{moment.year:04d}-" + moment.strftime("%m-%dT%H:%M:%S")
    if fraction_digits:
        text += "." + f"{moment.microsecond:06d}123"[:fraction_digits]
    text += zone
    fast = fast_parse(text, tz)
    assert fast is not None
    assert fast == general_parse(text, tz)
