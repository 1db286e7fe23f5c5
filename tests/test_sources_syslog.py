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
