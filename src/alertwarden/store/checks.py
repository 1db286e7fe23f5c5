"""Checks every store applies before a value reaches SQL, and the group key's text form.

Both back ends reject the same inputs with the same messages, so a value that one store takes is
never refused by the other. A rejected value raises InvalidValueError. check_json_document is for
callers that store a JSON document from a client, such as the REST API.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from alertwarden.engine.records import GroupKey, GroupSnapshot, GroupStatus, Transition, TransitionKind
from alertwarden.errors import InvalidValueError, StoreError

PREVIEW_CHARS = 60
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1
MAX_JSON_DEPTH = 254
"""Deepest nesting of arrays and objects that orjson.dumps writes (measured with orjson 3.13)."""


def preview(value: str) -> str:
    """Return `value` quoted, cut to PREVIEW_CHARS characters for error messages."""
    if len(value) <= PREVIEW_CHARS:
        return repr(value)
    return f"{value[:PREVIEW_CHARS]!r}... ({len(value)} characters)"


def check_text(field: str, value: object) -> str:
    """Return `value` if it is a string that SQLite and PostgreSQL store unchanged.

    SQLite's text functions stop at a NUL byte (length('a\\0b') is 1) and PostgreSQL text cannot
    contain one at all, so a NUL is rejected rather than silently cut.
    """
    if not isinstance(value, str):
        raise InvalidValueError(
            f"invalid {field} {value!r}: expected a string", field=field, value=value
        )
    if "\x00" in value:
        raise InvalidValueError(
            f"invalid {field} {preview(value)}: contains a NUL byte, which database text cannot"
            " hold. Remove it from the input or the rule",
            field=field,
            value=value,
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidValueError(
            f"invalid {field} {preview(value)}: not encodable as UTF-8 ({exc.reason})",
            field=field,
            value=value,
        ) from exc
    return value


def check_scope(tenant: str, rule_group: str) -> None:
    for field, value in (("tenant", tenant), ("rule_group", rule_group)):
        check_text(field, value)
        if not value:
            # An unset shell variable in `--tenant "$TENANT"` must not create a nameless tenant.
            raise InvalidValueError(
                f"invalid {field} '': must not be empty", field=field, value=value
            )


def check_int(field: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValueError(
            f"invalid {field} {value!r}: expected an integer", field=field, value=value
        )
    if not low <= value <= high:
        raise InvalidValueError(
            f"invalid {field} {value}: expected an integer from {low} to {high}",
            field=field,
            value=value,
        )
    return value


def check_int64(field: str, value: object) -> int:
    return check_int(field, value, INT64_MIN, INT64_MAX)


def check_time(field: str, value: object) -> float:
    # SQLite stores NaN as NULL, so a NaN would come back as a missing value.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidValueError(
            f"invalid {field} {value!r}: expected a finite number of UTC seconds",
            field=field,
            value=value,
        )
    return float(value)


def check_optional_time(field: str, value: object) -> float | None:
    return None if value is None else check_time(field, value)


def check_json_document(document: object, prefix: str = "") -> None:
    """Check that a JSON document can be stored in a jsonb column unchanged.

    Keys and strings must pass check_text, integers must fit in 64 bits, floats must be finite
    and nesting must stay within MAX_JSON_DEPTH, because orjson.dumps raises on the others or
    writes NaN as null. Raises InvalidValueError whose field is `prefix` followed by the path of
    the value, such as `labels.team` or `match.in[2]`.

    NOTE: the PostgreSQL store's own JSON encoding raises a plain StoreError for these values,
    so callers that take a document from a client run this check first.
    """
    # An explicit stack instead of recursion, so a deeply nested document cannot exhaust the
    # interpreter's recursion limit.
    stack: list[tuple[tuple[str | int, ...], object]] = [((), document)]
    while stack:
        path, value = stack.pop()
        field = _json_field(prefix, path)
        if isinstance(value, dict | list) and len(path) >= MAX_JSON_DEPTH:
            raise InvalidValueError(
                f"invalid {field}: nested deeper than {MAX_JSON_DEPTH} arrays and objects",
                field=field,
                value=value,
                path=path,
            )
        if isinstance(value, dict):
            for key in value:
                if isinstance(key, str):
                    _with_path((*path, key), check_text, f"key in {field}", key)
            children: list[tuple[str | int, object]] = list(value.items())
        elif isinstance(value, list):
            children = list(enumerate(value))
        else:
            _with_path(path, _check_json_scalar, field, value)
            children = []
        stack.extend(((*path, key), child) for key, child in reversed(children))


def _with_path(
    path: tuple[str | int, ...], check: Callable[[str, Any], object], field: str, value: object
) -> None:
    """Run check(field, value) and set `path` on the InvalidValueError it raises."""
    try:
        check(field, value)
    except InvalidValueError as error:
        error.path = path
        raise


def _check_json_scalar(field: str, value: object) -> None:
    if isinstance(value, str):
        check_text(field, value)
    elif isinstance(value, int) and not isinstance(value, bool):
        check_int(field, value, INT64_MIN, UINT64_MAX)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidValueError(
            f"invalid {field} {value!r}: expected a finite number, because JSON has no NaN or"
            " Infinity",
            field=field,
            value=value,
        )


def _json_field(prefix: str, path: tuple[str | int, ...]) -> str:
    """Join a prefix and a path into a field name such as `match.in[2]`, or "document"."""
    field = prefix
    for part in path:
        if isinstance(part, int):
            field += f"[{part}]"
        else:
            field += f".{part}" if field else part
    return field or "document"


def encode_key(rule_id: str, key: GroupKey) -> str:
    """Return the group key as a JSON array, the form both stores keep in group_key."""
    if not isinstance(key, tuple):
        raise InvalidValueError(
            f"invalid group key {key!r} of rule {preview(rule_id)}: expected a tuple",
            field="group key",
            value=key,
        )
    for value in key:
        if value is not None:
            check_text(f"group key value of rule {preview(rule_id)}", value)
    return orjson.dumps(list(key)).decode()


def decode_key(text: str) -> GroupKey:
    """Parse a stored group key; raises ValueError when it is not a JSON array of strings."""
    values = orjson.loads(text)
    if not isinstance(values, list) or not all(v is None or isinstance(v, str) for v in values):
        raise ValueError(f"group_key {text[:PREVIEW_CHARS]!r} is not a JSON array of strings")
    return tuple(values)


def check_transition(transition: Transition) -> tuple[str, float, str, dict[str, Any]]:
    """Check a transition before it is stored; return its rule id, time, kind and details.

    The details are the transition's JSON form plus the regex captures of the event that made
    it, which the history keeps for rendering notifications again.
    """
    rule_id = check_text("rule_id", transition.rule_id)
    snapshot = transition.snapshot
    if snapshot.rule_id != rule_id or snapshot.key != transition.key:
        raise StoreError(
            f"transition of rule {preview(rule_id)} carries the snapshot of another group"
            f" (rule {preview(snapshot.rule_id)}, key {snapshot.key!r}). The snapshot must be"
            " of the transition's own rule and key"
        )
    for field_name, value in transition.group:
        check_text(f"group field name of rule {preview(rule_id)}", field_name)
        if value is not None:
            check_text(f"group value of rule {preview(rule_id)}", value)
    at = check_time("transition at", transition.at)
    try:
        kind = TransitionKind(transition.kind).value
    except ValueError as exc:
        raise InvalidValueError(
            f"invalid transition kind {transition.kind!r} of rule {preview(rule_id)}: expected"
            f" one of {[k.value for k in TransitionKind]}",
            field="transition kind",
            value=transition.kind,
        ) from exc
    try:
        details = transition.as_dict()
    except (OverflowError, OSError, ValueError) as exc:
        raise InvalidValueError(
            f"invalid transition at {at!r} of rule {preview(rule_id)}: not a representable UTC"
            f" time ({exc})",
            field="transition at",
            value=at,
        ) from exc
    details["captures"] = transition.captures
    return rule_id, at, kind, details


def snapshot_from_row(
    row: Sequence[Any], decode_counts: Callable[[Any], tuple[int, ...]]
) -> GroupSnapshot:
    """Build a group snapshot from a rule_state row in the column order both stores select.

    `decode_counts` turns the stored bucket counts into a tuple: an array in PostgreSQL, a
    packed blob in SQLite.
    """
    (
        rule_id,
        group_key,
        window_s,
        bucket_s,
        counts,
        head_bucket,
        last_seen_at,
        last_fired_at,
        last_notified_at,
        status,
        suppressed,
        position,
    ) = row
    return GroupSnapshot(
        rule_id=rule_id,
        key=decode_key(group_key),
        window_s=window_s,
        bucket_s=bucket_s,
        counts=decode_counts(counts),
        head_bucket=head_bucket,
        last_seen_at=last_seen_at,
        last_fired_at=last_fired_at,
        last_notified_at=last_notified_at,
        status=GroupStatus(status),
        # SQLite stores booleans as 0 and 1.
        suppressed=bool(suppressed),
        position=position,
    )
