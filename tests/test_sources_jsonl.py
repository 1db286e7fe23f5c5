"""JSON-lines parsers: OpenTelemetry, OCSF, generic JSON and their rejects."""

from __future__ import annotations

import orjson
import pytest

from alertwarden.errors import EventError
from alertwarden.events import Signal, SkipReason
from alertwarden.sources.jsonl import JsonParser, OcsfParser, OtelParser

BASE_S = 1702191346.0


def parse(record: object) -> object:
    return JsonParser().parse(orjson.dumps(record))


def test_otel_dict_attributes() -> None:
    event = parse(
        {
            "timeUnixNano": 1702191346500000000,
            "severityText": "WARN",
            "severityNumber": 13,
            "traceId": "abc",
            "spanId": "def",
            "body": "login failed",
            "attributes": {"user": "root", "log.record.uid": "r1"},
            "resource": {"attributes": {"service.name": "sshd", "host.name": "web1"}},
        }
    )
    assert event.signal == Signal.LOGS
    assert event.time_s == BASE_S + 0.5
    assert event.event_id == "r1"
    assert event.fields["severity_text"] == "WARN"
    assert event.fields["severity_number"] == 13
    assert event.fields["trace_id"] == "abc"
    assert event.fields["span_id"] == "def"
    assert event.fields["body"] == "login failed"
    assert event.fields["source_id"] == "web1"
    assert "severityText" not in event.fields


def test_otel_list_attributes() -> None:
    event = parse(
        {
            "timeUnixNano": "1702191346000000000",
            "body": {"stringValue": "hi"},
            "attributes": [
                {"key": "s", "value": {"stringValue": "x"}},
                {"key": "i", "value": {"intValue": "42"}},
                {"key": "d", "value": {"doubleValue": 1.5}},
                {"key": "b", "value": {"boolValue": True}},
                {"key": "a", "value": {"arrayValue": {"values": [{"intValue": "1"}]}}},
                {"key": "k", "value": {"kvlistValue": {"values": [{"key": "n", "value": {"stringValue": "v"}}]}}},
            ],
            "resource": {"attributes": [{"key": "service.instance.id", "value": {"stringValue": "i-1"}}]},
        }
    )
    assert event.time_s == BASE_S
    assert event.fields["body"] == "hi"
    assert event.fields["attributes"] == {
        "s": "x", "i": 42, "d": 1.5, "b": True, "a": [1], "k": {"n": "v"}
    }
    assert event.fields["resource"] == {"attributes": {"service.instance.id": "i-1"}}
    assert event.fields["source_id"] == "i-1"


@pytest.mark.parametrize(
    ("record", "expected_s"),
    [
        ({"time_unix_nano": 1702191346000000000, "body": "x"}, BASE_S),
        ({"timeUnixNano": "0", "observedTimeUnixNano": "1702191347000000000"}, BASE_S + 1),
        ({"severityText": "INFO", "timestamp": "2023-12-10T06:55:46Z"}, BASE_S),
        ({"body": "x", "resource": {"service.name": "api"}, "timestamp": 1702191346}, BASE_S),
    ],
)
def test_otel_time_sources(record: dict, expected_s: float) -> None:
    assert parse(record).time_s == expected_s


def test_otel_flat_resource() -> None:
    event = parse({"body": "x", "resource": {"service.name": "api"}, "timestamp": 1702191346})
    assert event.fields["resource"] == {"attributes": {"service.name": "api"}}
    assert event.fields["source_id"] == "api"


def test_ocsf_event() -> None:
    event = parse(
        {
            "class_uid": 3002,
            "time": 1702191346250,
            "metadata": {"uid": "evt-9", "product": {"name": "idp"}},
            "src_endpoint": {"ip": "10.0.0.1"},
        }
    )
    assert event.signal == Signal.EVENTS
    assert event.time_s == BASE_S + 0.25
    assert event.event_id == "evt-9"
    assert event.fields["source_id"] == "10.0.0.1"


def test_ocsf_keeps_source_id() -> None:
    event = parse({"class_uid": 1, "time": 1702191346000, "source_id": "mine", "device": {"uid": "d"}})
    assert event.fields["source_id"] == "mine"


def test_generic_json() -> None:
    event = parse({"@timestamp": "2023-12-10T06:55:46Z", "event_id": 17, "hostname": "db1", "user": "x"})
    assert event.signal == Signal.LOGS
    assert event.time_s == BASE_S
    assert event.event_id == "17"
    assert event.fields["source_id"] == "db1"
    assert event.fields["user"] == "x"


def test_generic_without_source() -> None:
    event = parse({"ts": 1702191346, "id": True})
    assert "source_id" not in event.fields
    assert event.event_id is None


def test_forced_parsers() -> None:
    otel = OtelParser().parse(b'{"timestamp": 1702191346, "body": "x"}')
    assert otel.signal == Signal.LOGS
    ocsf = OcsfParser().parse(b'{"time": 1702191346000}')
    assert ocsf.signal == Signal.EVENTS
    assert ocsf.time_s == BASE_S


@pytest.mark.parametrize(
    ("line", "reason", "fragments"),
    [
        (b'{"ts": 1', "malformed", ["invalid JSON"]),
        (b'[1, 2]', "not_an_object", ["array", "[1, 2]"]),
        (b'"text"', "not_an_object", ["string", "'text'"]),
        (b'{"msg": "\xff"}', "invalid_utf8", ["0xff", "position 9"]),
        (b'{"msg": "x"}', "bad_timestamp", ["missing timestamp", "ts, timestamp, time"]),
        (b'{"ts": "soon"}', "bad_timestamp", ["ts", "'soon'"]),
        (b'{"ts": {"s": 1}}', "wrong_type", ["ts", "{'s': 1}"]),
        (b'{"class_uid": 1, "time": "1702191346000"}', "wrong_type", ["time", "'1702191346000'"]),
        (b'{"class_uid": 1}', "bad_timestamp", ["time", "None"]),
        (b'{"class_uid": 1, "time": -1}', "bad_timestamp", ["time", "-1"]),
        (b'{"timeUnixNano": "later"}', "bad_timestamp", ["time_unix_nano", "'later'"]),
        (b'{"severityText": "x"}', "bad_timestamp", ["timeUnixNano"]),
        (b'{"body": 1, "attributes": [{"value": 1}], "ts": 1}', "wrong_type", ["attributes[0]"]),
        (b'{"resourceLogs": []}', "malformed", ["resourceLogs", "one log record per line"]),
    ],
)
def test_json_rejects(line: bytes, reason: str, fragments: list[str]) -> None:
    with pytest.raises(EventError) as caught:
        JsonParser().parse(line)
    assert caught.value.reason == reason
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_ocsf_time_in_seconds_rejected() -> None:
    with pytest.raises(EventError) as caught:
        parse({"class_uid": 3002, "time": 1702191346})
    assert caught.value.reason == SkipReason.BAD_TIMESTAMP
    assert "send milliseconds, not seconds" in str(caught.value)
    assert "time=1702191346" in str(caught.value)
