"""Checks every store applies before a value reaches SQL, and the group key's text form.

Both back ends reject the same inputs with the same messages, so a value that one store takes is
never refused by the other.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from alertwarden.engine.records import GroupKey, Transition, TransitionKind
from alertwarden.errors import StoreError

PREVIEW_CHARS = 60
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


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
        raise StoreError(f"invalid {field} {value!r}: expected a string")
    if "\x00" in value:
        raise StoreError(
            f"invalid {field} {preview(value)}: contains a NUL byte, which database text cannot"
            " hold. Remove it from the input or the rule"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StoreError(
            f"invalid {field} {preview(value)}: not encodable as UTF-8 ({exc.reason})"
        ) from exc
    return value


def check_scope(tenant: str, rule_group: str) -> None:
    for field, value in (("tenant", tenant), ("rule_group", rule_group)):
        check_text(field, value)
        if not value:
            # An unset shell variable in `--tenant "$TENANT"` must not create a nameless tenant.
            raise StoreError(f"invalid {field} '': must not be empty")


def check_int(field: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StoreError(f"invalid {field} {value!r}: expected an integer")
    if not low <= value <= high:
        raise StoreError(f"invalid {field} {value}: expected an integer from {low} to {high}")
    return value


def check_int64(field: str, value: object) -> int:
    return check_int(field, value, INT64_MIN, INT64_MAX)


def check_time(field: str, value: object) -> float:
    # SQLite stores NaN as NULL, so a NaN would come back as a missing value.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StoreError(f"invalid {field} {value!r}: expected a finite number of UTC seconds")
    return float(value)


def check_optional_time(field: str, value: object) -> float | None:
    return None if value is None else check_time(field, value)


def encode_key(rule_id: str, key: GroupKey) -> str:
    """Return the group key as a JSON array, the form both stores keep in group_key."""
    if not isinstance(key, tuple):
        raise StoreError(f"invalid group key {key!r} of rule {preview(rule_id)}: expected a tuple")
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
        raise StoreError(
            f"invalid transition kind {transition.kind!r} of rule {preview(rule_id)}: expected"
            f" one of {[k.value for k in TransitionKind]}"
        ) from exc
    try:
        details = transition.as_dict()
    except (OverflowError, OSError, ValueError) as exc:
        raise StoreError(
            f"invalid transition at {at!r} of rule {preview(rule_id)}: not a representable UTC"
            f" time ({exc})"
        ) from exc
    details["captures"] = transition.captures
    return rule_id, at, kind, details
