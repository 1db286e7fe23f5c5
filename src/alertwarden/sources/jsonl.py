"""JSON-lines parsers: OpenTelemetry log records, OCSF events and generic JSON objects.

Each line is decoded once with orjson, and the resulting dict becomes the event's fields. The
OpenTelemetry parser renames a few keys and rewrites OTLP/JSON attribute lists in place.
"""

from __future__ import annotations

from datetime import UTC, tzinfo
from typing import Any, Final

import orjson

from alertwarden.errors import EventError
from alertwarden.events import Event, Signal, SkipReason
from alertwarden.sources.timestamps import bad_timestamp, parse_epoch_unit, parse_timestamp

# camelCase OTLP/JSON names of the log record fields that rules address in snake_case.
OTEL_KEY_RENAMES = {
    "timeUnixNano": "time_unix_nano",
    "observedTimeUnixNano": "observed_time_unix_nano",
    "severityText": "severity_text",
    "severityNumber": "severity_number",
    "traceId": "trace_id",
    "spanId": "span_id",
    "droppedAttributesCount": "dropped_attributes_count",
    "eventName": "event_name",
}
OTEL_MARKER_KEYS = (
    "timeUnixNano",
    "time_unix_nano",
    "observedTimeUnixNano",
    "observed_time_unix_nano",
    "severityText",
    "severity_text",
    "severityNumber",
    "severity_number",
)
_OTEL_MARKER_SET = frozenset(OTEL_MARKER_KEYS)
OTEL_SOURCE_ATTRIBUTES = ("service.instance.id", "host.name", "service.name")
OTEL_EVENT_ID_ATTRIBUTE = "log.record.uid"  # OpenTelemetry semantic convention for a record id

OCSF_SOURCE_PATHS = (
    ("device", "uid"),
    ("device", "hostname"),
    ("device", "ip"),
    ("src_endpoint", "ip"),
    ("metadata", "product", "name"),
)

# Compiled, a Final constant is a C variable, and Signal.LOGS a lookup on the enum class.
_LOGS: Final = Signal.LOGS
_EVENTS: Final = Signal.EVENTS

GENERIC_TIME_KEYS = ("ts", "timestamp", "time", "@timestamp", "datetime")
GENERIC_ID_KEYS = ("id", "event_id")
GENERIC_SOURCE_KEYS = ("host", "hostname")

# A record with none of these keys can only be generic JSON (see is_ocsf and is_otel), so one
# set test replaces both detections for the common generic record.
_FORMAT_MARKER_KEYS = frozenset(("class_uid", "body", *OTEL_MARKER_KEYS))

_ANY_VALUE_KEYS = frozenset(
    ("stringValue", "intValue", "doubleValue", "boolValue", "arrayValue", "kvlistValue", "bytesValue")
)


def load_object(line: bytes) -> dict[str, Any]:
    """Decode one JSON line into a dict, or raise malformed, invalid_utf8 or not_an_object."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        # orjson reports invalid UTF-8 as a decode error; the check runs only on the error path.
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as utf8_error:
            raise EventError(
                SkipReason.INVALID_UTF8,
                f"line is not valid UTF-8: byte {line[utf8_error.start]:#04x} at position "
                f"{utf8_error.start}",
            ) from None
        raise EventError(SkipReason.MALFORMED, f"invalid JSON: {exc}") from None
    if type(value) is not dict:
        raise EventError(
            SkipReason.NOT_AN_OBJECT,
            f"a JSON line must be an object, got {_json_type(value)}: {_preview(value)}",
        )
    if "resourceLogs" in value or "resource_logs" in value:
        raise EventError(
            SkipReason.MALFORMED,
            "OTLP export envelopes (resourceLogs) are not supported: write one log record per "
            "line, i.e. each entry of resourceLogs[].scopeLogs[].logRecords[] on its own line",
        )
    return value


def is_ocsf(fields: dict[str, Any]) -> bool:
    return type(fields.get("class_uid")) is int


def is_otel(fields: dict[str, Any]) -> bool:
    if not _OTEL_MARKER_SET.isdisjoint(fields):
        return True
    return "body" in fields and ("attributes" in fields or "resource" in fields)


# --- OCSF -----------------------------------------------------------------------------------


OCSF_MIN_TIME_MS = 100_000_000_000
"""1973-03-03T09:46:40Z in epoch milliseconds. An OCSF time below it is taken for seconds."""


def ocsf_event(fields: dict[str, Any]) -> Event:
    """Build an OCSF event: `time` is integer milliseconds, event_id is `metadata.uid`."""
    raw: Any = fields.get("time")
    if raw is None:
        raise bad_timestamp("time", raw, "an OCSF event needs `time` in epoch milliseconds")
    if type(raw) is not int and type(raw) is not float:
        raise EventError(
            SkipReason.WRONG_TYPE,
            f"invalid type of time: OCSF time is epoch milliseconds as a number, got "
            f"{_json_type(raw)} {_preview(raw)}",
        )
    if 0 <= raw < OCSF_MIN_TIME_MS:
        # Epoch seconds of any time since 1973 lie in this range, and milliseconds would put
        # the event in early 1970, where every rule drops it as late.
        raise bad_timestamp(
            "time", raw, "OCSF time is epoch milliseconds, and this is before March 1973: "
            "send milliseconds, not seconds"
        )
    time_s = parse_epoch_unit(raw, divisor=1_000, field="time")

    event_id = None
    metadata = fields.get("metadata")
    if type(metadata) is dict:
        event_id = _scalar_id(metadata.get("uid"))

    if "source_id" not in fields:
        for path in OCSF_SOURCE_PATHS:
            source = _scalar_id(_dig(fields, path))
            if source is not None:
                fields["source_id"] = source
                break
    return Event(time_s, fields, _EVENTS, event_id)


# --- OpenTelemetry --------------------------------------------------------------------------


def otel_event(fields: dict[str, Any], tz: tzinfo = UTC) -> Event:
    """Build an OpenTelemetry log event; keys become snake_case and attribute lists dicts."""
    for camel, snake in OTEL_KEY_RENAMES.items():
        if camel in fields:
            fields[snake] = fields.pop(camel)

    attributes = fields.get("attributes")
    if attributes is not None:
        fields["attributes"] = _attribute_map(attributes, "attributes")
    if "resource" in fields:
        fields["resource"] = _resource(fields["resource"])
    body = fields.get("body")
    if type(body) is dict and len(body) == 1 and next(iter(body)) in _ANY_VALUE_KEYS:
        fields["body"] = _any_value(body, "body")

    time_s = _otel_time(fields, tz)

    event_id = None
    attributes = fields.get("attributes")
    if type(attributes) is dict:
        event_id = _scalar_id(attributes.get(OTEL_EVENT_ID_ATTRIBUTE))

    if "source_id" not in fields:
        resource_attributes = _dig(fields, ("resource", "attributes"))
        if type(resource_attributes) is dict:
            for key in OTEL_SOURCE_ATTRIBUTES:
                source = _scalar_id(resource_attributes.get(key))
                if source is not None:
                    fields["source_id"] = source
                    break
    return Event(time_s, fields, _LOGS, event_id)


def _otel_time(fields: dict[str, Any], tz: tzinfo) -> float:
    # OTLP defines a time of 0 as unknown, so a zero time falls back to the observed time.
    for key in ("time_unix_nano", "observed_time_unix_nano"):
        raw = fields.get(key)
        if raw is not None and raw != 0 and raw != "0":
            return parse_epoch_unit(raw, divisor=1_000_000_000, field=key)
    if "timestamp" in fields:
        return parse_timestamp(fields["timestamp"], field="timestamp", tz=tz)
    raise bad_timestamp(
        "timeUnixNano",
        fields.get("time_unix_nano"),
        "an OpenTelemetry record needs timeUnixNano, observedTimeUnixNano or timestamp",
    )


def _resource(resource: Any) -> Any:
    if type(resource) is list:
        return {"attributes": _attribute_map(resource, "resource")}
    if type(resource) is not dict:
        return resource
    if "attributes" in resource:
        resource["attributes"] = _attribute_map(resource["attributes"], "resource.attributes")
        return resource
    if "droppedAttributesCount" in resource or "dropped_attributes_count" in resource:
        return resource
    # A resource written as a flat map of attributes moves under `attributes`, so rules use
    # one path, resource.attributes.<name>, for both forms.
    return {"attributes": resource}


def _attribute_map(attributes: Any, field: str) -> Any:
    """Return attributes as a plain dict; the OTLP/JSON form is a list of {key, value} pairs."""
    if type(attributes) is not list:
        return attributes
    result: dict[str, Any] = {}
    for index, pair in enumerate(attributes):
        if type(pair) is not dict or type(pair.get("key")) is not str:
            raise EventError(
                SkipReason.WRONG_TYPE,
                f"invalid {field}[{index}]: expected {{\"key\": name, \"value\": {{...}}}}, got "
                f"{_preview(pair)}",
            )
        key = pair["key"]
        value = pair.get("value")
        # Most attributes are strings: take them directly instead of building the field name
        # that only _any_value's error messages use.
        if type(value) is dict and "stringValue" in value:
            result[key] = value["stringValue"]
        else:
            result[key] = _any_value(value, f"{field}.{key}")
    return result


def _any_value(value: Any, field: str) -> Any:
    """Decode an OTLP/JSON AnyValue such as {"intValue": "5"} into the plain value."""
    if type(value) is not dict:
        return value
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        raw = value["intValue"]
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise EventError(
                SkipReason.WRONG_TYPE, f"invalid {field}: intValue {raw!r} is not an integer"
            ) from None
    if "doubleValue" in value:
        raw = value["doubleValue"]
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise EventError(
                SkipReason.WRONG_TYPE, f"invalid {field}: doubleValue {raw!r} is not a number"
            ) from None
    if "boolValue" in value:
        return value["boolValue"]
    if "arrayValue" in value:
        items = _dig(value, ("arrayValue", "values")) or []
        return [_any_value(item, f"{field}[{i}]") for i, item in enumerate(items)]
    if "kvlistValue" in value:
        return _attribute_map(_dig(value, ("kvlistValue", "values")) or [], field)
    if "bytesValue" in value:
        return value["bytesValue"]  # base64 text, kept as written
    if not value:
        return None  # an empty AnyValue is the OTLP null
    return value


# --- generic JSON ---------------------------------------------------------------------------


def generic_event(fields: dict[str, Any], tz: tzinfo = UTC) -> Event:
    """Build an event from any JSON object with a ts/timestamp/time/@timestamp/datetime key."""
    for key in GENERIC_TIME_KEYS:
        raw = fields.get(key)
        if raw is not None:
            time_s = parse_timestamp(raw, field=key, tz=tz)
            break
    else:
        raise EventError(
            SkipReason.BAD_TIMESTAMP,
            "missing timestamp: add one of the fields " + ", ".join(GENERIC_TIME_KEYS),
        )

    # The `is not None` tests skip the _scalar_id call for absent keys, the common case.
    event_id = None
    for key in GENERIC_ID_KEYS:
        raw_id = fields.get(key)
        if raw_id is not None:
            event_id = _scalar_id(raw_id)
            if event_id is not None:
                break

    if "source_id" not in fields:
        for key in GENERIC_SOURCE_KEYS:
            raw_source = fields.get(key)
            if raw_source is not None:
                source = _scalar_id(raw_source)
                if source is not None:
                    fields["source_id"] = source
                    break
    return Event(time_s, fields, _LOGS, event_id)


# --- parsers --------------------------------------------------------------------------------


class JsonParser:
    """Parse each line as OCSF, OpenTelemetry or generic JSON, detected per line."""

    def __init__(self, tz: tzinfo = UTC) -> None:
        self.tz = tz

    def parse(self, line: bytes) -> Event:
        fields = load_object(line)
        if _FORMAT_MARKER_KEYS.isdisjoint(fields):
            return generic_event(fields, self.tz)
        if is_ocsf(fields):
            return ocsf_event(fields)
        if is_otel(fields):
            return otel_event(fields, self.tz)
        return generic_event(fields, self.tz)


class OtelParser:
    """Parse each line as one OpenTelemetry log record."""

    def __init__(self, tz: tzinfo = UTC) -> None:
        self.tz = tz

    def parse(self, line: bytes) -> Event:
        return otel_event(load_object(line), self.tz)


class OcsfParser:
    """Parse each line as one OCSF event."""

    def parse(self, line: bytes) -> Event:
        return ocsf_event(load_object(line))


# --- helpers --------------------------------------------------------------------------------


def _dig(node: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if type(node) is not dict:
            return None
        node = node.get(key)
    return node


def _scalar_id(value: Any) -> str | None:
    """Return strings and integers as an id string; other types and empty strings give None."""
    if type(value) is str:
        return value or None
    if type(value) is int:
        return str(value)
    return None


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    if type(value) in (int, float):
        return "number"
    return names.get(type(value), type(value).__name__)


def _preview(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


__all__ = [
    "JsonParser",
    "OcsfParser",
    "OtelParser",
    "generic_event",
    "load_object",
    "ocsf_event",
    "otel_event",
]
