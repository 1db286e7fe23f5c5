"""Syslog parser: RFC 3164, RFC 5424, years, time zones and the bundled OpenSSH log."""

from __future__ import annotations

from pathlib import Path

import pytest

from alertwarden.errors import EventError
from alertwarden.events import Signal
from alertwarden.sources.files import FileInput
from alertwarden.sources.lines import Line
from alertwarden.sources.syslog import SyslogParser
from alertwarden.sources.timestamps import load_timezone

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "OpenSSH_2k.log"
BASE_S = 1702191346.0  # 2023-12-10T06:55:46Z


def test_rfc3164_with_pid() -> None:
    event = SyslogParser(year=2023).parse(
        b"Dec 10 06:55:46 LabSZ sshd[24200]: Invalid user webmaster from 173.234.31.186"
    )
    assert event.time_s == BASE_S
    assert event.signal == Signal.LOGS
    assert event.fields == {
        "timestamp": "2023-12-10T06:55:46Z",
        "host": "LabSZ",
        "app": "sshd",
        "pid": "24200",
        "message": "Invalid user webmaster from 173.234.31.186",
        "source_id": "LabSZ",
    }


def test_rfc3164_pri_without_pid() -> None:
    event = SyslogParser(year=2023).parse(b"<34>Oct  1 22:14:15 mymachine su: 'su root' failed")
    assert event.fields["facility"] == 4
    assert event.fields["severity"] == 2
    assert event.fields["app"] == "su"
    assert "pid" not in event.fields
    assert event.fields["message"] == "'su root' failed"
    assert event.fields["timestamp"] == "2023-10-01T22:14:15Z"


def test_rfc3164_without_tag() -> None:
    event = SyslogParser(year=2023).parse(b"Dec 10 06:55:46 host just a message")
    assert "app" not in event.fields
    assert event.fields["message"] == "just a message"


def test_rfc3164_timezone() -> None:
    parser = SyslogParser(year=2023, tz=load_timezone("Europe/Berlin"))
    event = parser.parse(b"Dec 10 07:55:46 host app: x")
    assert event.time_s == BASE_S
    assert event.fields["timestamp"] == "2023-12-10T06:55:46Z"


def test_rfc3164_year_option() -> None:
    event = SyslogParser(year=2020).parse(b"Feb 29 00:00:00 host app: leap")
    assert event.fields["timestamp"] == "2020-02-29T00:00:00Z"


def test_rfc3164_year_rollover() -> None:
    parser = SyslogParser(year=2023)
    december = parser.parse(b"Dec 31 23:59:59 host app: a")
    january = parser.parse(b"Jan  1 00:00:01 host app: b")
    later = parser.parse(b"Mar  1 00:00:00 host app: c")
    assert december.fields["timestamp"] == "2023-12-31T23:59:59Z"
    assert january.fields["timestamp"] == "2024-01-01T00:00:01Z"
    assert january.time_s - december.time_s == 2
    assert later.fields["timestamp"] == "2024-03-01T00:00:00Z"


def test_rfc3164_small_step_back_same_year() -> None:
    parser = SyslogParser(year=2023)
    parser.parse(b"Jun 10 00:00:00 host app: a")
    event = parser.parse(b"Mar 10 00:00:00 host app: b")
    assert event.fields["timestamp"] == "2023-03-10T00:00:00Z"


def test_rfc5424_structured_data() -> None:
    line = (
        b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 '
        b'[exampleSDID@32473 iut="3" eventSource="App\\"li\\\\ca\\]tion"][meta x="1"] '
        b"\xef\xbb\xbfAn application event"
    )
    event = SyslogParser().parse(line)
    assert event.time_s == pytest.approx(1065910455.003)
    assert event.fields["facility"] == 20
    assert event.fields["severity"] == 5
    assert event.fields["host"] == "mymachine.example.com"
    assert event.fields["app"] == "evntslog"
    assert "pid" not in event.fields
    assert event.fields["msgid"] == "ID47"
    assert event.fields["structured_data"] == {
        "exampleSDID@32473": {"iut": "3", "eventSource": 'App"li\\ca]tion'},
        "meta": {"x": "1"},
    }
    assert event.fields["message"] == "An application event"
    assert event.fields["source_id"] == "mymachine.example.com"


def test_rfc5424_nil_values() -> None:
    event = SyslogParser().parse(b"<13>1 2023-12-10T08:55:46+02:00 - - - - -")
    assert event.time_s == BASE_S
    assert event.fields == {"facility": 1, "severity": 5, "timestamp": "2023-12-10T06:55:46Z"}


def test_rfc5424_unknown_escape_kept() -> None:
    event = SyslogParser().parse(b'<13>1 2023-12-10T06:55:46Z h a 1 m [x p="a\\nb"] msg')
    assert event.fields["structured_data"] == {"x": {"p": "a\\nb"}}
    assert event.fields["pid"] == "1"


@pytest.mark.parametrize(
    ("line", "reason", "fragments"),
    [
        (b"hello world", "malformed", ["not a syslog line", "'hello world'"]),
        (b"Foo 10 06:55:46 host app: x", "malformed", ["'Foo'"]),
        (b"<999>Dec 10 06:55:46 host app: x", "malformed", ["<999>"]),
        (b"Feb 30 06:55:46 host app: x", "bad_timestamp", ["timestamp", "Feb 30 06:55:46"]),
        (b"<13>1 - host app - - - msg", "bad_timestamp", ["timestamp", "nil"]),
        (b"<13>1 yesterday host app - - - msg", "bad_timestamp", ["'yesterday'"]),
        (b'<13>1 2023-12-10T06:55:46Z h a - - [x p="open', "malformed", ["not closed"]),
        (b"Dec 10 06:55:46 host \xc3(", "invalid_utf8", ["0xc3"]),
    ],
)
def test_syslog_rejects(line: bytes, reason: str, fragments: list[str]) -> None:
    with pytest.raises(EventError) as caught:
        SyslogParser(year=2023).parse(line)
    assert caught.value.reason == reason
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_openssh_example_parses() -> None:
    parser = SyslogParser(year=2023)
    count = 0
    with FileInput(EXAMPLE) as source:
        for line in source.lines():
            assert isinstance(line, Line)
            event = parser.parse(line.data)
            assert event.fields["host"] == "LabSZ"
            assert event.fields["app"] == "sshd"
            count += 1
    assert count == 2000
    assert event.fields["timestamp"] == "2023-12-10T11:04:45Z"


NOW_S = 1796385600.0  # 2026-12-04T12:00:00Z


def new_year_lines() -> list[bytes]:
    """One line a minute from Dec 31 23:50 to Jan 1 00:29, local time."""
    stamps = [f"Dec 31 23:{minute:02d}:00" for minute in range(50, 60)]
    stamps += [f"Jan  1 00:{minute:02d}:00" for minute in range(30)]
    return [f"{stamp} host app: tick {index}".encode() for index, stamp in enumerate(stamps)]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York"])
def test_seed_restart_matches_uninterrupted(zone: str) -> None:
    tz = load_timezone(zone)
    lines = new_year_lines()
    uninterrupted = SyslogParser(year=2023, tz=tz)
    expected = [uninterrupted.parse(line).time_s for line in lines]

    for split in range(1, len(lines)):
        first = SyslogParser(year=2023, tz=tz)
        before = [first.parse(line).time_s for line in lines[:split]]
        resumed = SyslogParser(year=2023, tz=tz)
        resumed.seed_last_time(max(before))
        after = [resumed.parse(line).time_s for line in lines[split:]]
        assert before + after == expected, f"split before line {split}"


def test_restart_without_seed_loses_year() -> None:
    lines = new_year_lines()
    resumed = SyslogParser(year=2023)
    event = resumed.parse(lines[15])
    assert event.fields["timestamp"] == "2023-01-01T00:05:00Z"


def test_seed_sets_year_and_month() -> None:
    parser = SyslogParser(year=2020, tz=load_timezone("Europe/Berlin"))
    parser.seed_last_time(1704065400.0)  # 2023-12-31T23:30:00Z, 00:30 on Jan 1 in Berlin
    assert parser.year == 2024
    event = parser.parse(b"Jan  1 00:31:00 host app: x")
    assert event.fields["timestamp"] == "2023-12-31T23:31:00Z"


@pytest.mark.parametrize("time_s", [float("nan"), float("inf")])
def test_seed_rejects_non_finite(time_s: float) -> None:
    with pytest.raises(ValueError, match="invalid seed time"):
        SyslogParser(year=2023).seed_last_time(time_s)


def test_late_december_line_after_rollover() -> None:
    parser = SyslogParser(year=2023)
    stamps = [
        parser.parse(line).fields["timestamp"]
        for line in (
            b"Dec 31 23:59:58 host app: a",
            b"Jan  1 00:00:01 host app: b",
            b"Dec 31 23:59:59 host app: late",
            b"Jan  1 00:00:02 host app: c",
            b"Jan  1 00:00:03 host app: d",
        )
    ]
    assert stamps == [
        "2023-12-31T23:59:58Z",
        "2024-01-01T00:00:01Z",
        "2023-12-31T23:59:59Z",
        "2024-01-01T00:00:02Z",
        "2024-01-01T00:00:03Z",
    ]
    assert parser.year == 2024


def test_late_line_after_seed() -> None:
    parser = SyslogParser(year=2020)
    parser.seed_last_time(1704067205.0)  # 2024-01-01T00:00:05Z
    late = parser.parse(b"Dec 31 23:59:59 host app: late")
    january = parser.parse(b"Jan  1 00:00:06 host app: x")
    assert late.fields["timestamp"] == "2023-12-31T23:59:59Z"
    assert january.fields["timestamp"] == "2024-01-01T00:00:06Z"


def test_six_months_forward_same_year() -> None:
    parser = SyslogParser(year=2023)
    parser.parse(b"Jan 10 00:00:00 host app: a")
    event = parser.parse(b"Jul 10 00:00:00 host app: b")
    assert event.fields["timestamp"] == "2023-07-10T00:00:00Z"


@pytest.mark.parametrize(
    ("line", "timestamp"),
    [
        (b"Dec 10 06:55:46 host app: x", "2025-12-10T06:55:46Z"),
        (b"Dec  5 11:59:59 host app: x", "2026-12-05T11:59:59Z"),
        (b"Dec  5 12:00:01 host app: x", "2025-12-05T12:00:01Z"),
        (b"Nov 30 00:00:00 host app: x", "2026-11-30T00:00:00Z"),
        (b"Jan  3 00:00:00 host app: x", "2026-01-03T00:00:00Z"),
    ],
)
def test_default_year_not_in_future(line: bytes, timestamp: str) -> None:
    event = SyslogParser(now_s=lambda: NOW_S).parse(line)
    assert event.fields["timestamp"] == timestamp


def test_default_year_then_rollover() -> None:
    parser = SyslogParser(now_s=lambda: NOW_S)
    december = parser.parse(b"Dec 10 06:55:46 host app: x")
    january = parser.parse(b"Jan  2 00:00:00 host app: y")
    assert december.fields["timestamp"] == "2025-12-10T06:55:46Z"
    assert january.fields["timestamp"] == "2026-01-02T00:00:00Z"
    assert parser.year == 2026


def test_default_year_in_timezone() -> None:
    # 2026-12-31T23:30:00Z is already 2027 in Berlin.
    parser = SyslogParser(tz=load_timezone("Europe/Berlin"), now_s=lambda: 1798759800.0)
    event = parser.parse(b"Jan  1 00:20:00 host app: x")
    assert event.fields["timestamp"] == "2026-12-31T23:20:00Z"


def test_explicit_year_may_be_future() -> None:
    event = SyslogParser(year=2026, now_s=lambda: NOW_S).parse(b"Dec 10 06:55:46 host app: x")
    assert event.fields["timestamp"] == "2026-12-10T06:55:46Z"


def test_default_year_guess_after_bad_line() -> None:
    parser = SyslogParser(now_s=lambda: NOW_S)
    with pytest.raises(EventError):
        parser.parse(b"Feb 30 00:00:00 host app: x")
    event = parser.parse(b"Dec 10 06:55:46 host app: y")
    assert event.fields["timestamp"] == "2025-12-10T06:55:46Z"


def test_openssh_example_default_year() -> None:
    parser = SyslogParser(now_s=lambda: NOW_S)
    with FileInput(EXAMPLE) as source:
        events = [parser.parse(line.data) for line in source.lines() if isinstance(line, Line)]
    assert len(events) == 2000
    assert events[0].fields["timestamp"] == "2025-12-10T06:55:46Z"
    assert events[-1].fields["timestamp"] == "2025-12-10T11:04:45Z"
