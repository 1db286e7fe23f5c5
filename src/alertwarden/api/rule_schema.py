"""JSON schema of the rule body of `PUT /v1/tenants/{tenant}/rules/{rule_id}`, for OpenAPI.

The schema is generated from RuleDefinition, the model that validates rule files and rule bodies,
so a field added there appears here too. The route still parses the body as a plain JSON object
and validates it with RuleDefinition itself. So this schema only documents the body: it changes
neither which bodies the server accepts nor its 422 messages.
"""

from __future__ import annotations

import copy
from typing import Any, get_args

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from alertwarden.rules.durations import MAX_BUCKETS
from alertwarden.rules.model import (
    ID_PATTERN,
    MAX_GROUPS,
    MAX_TEXT_CHARS,
    MAX_THRESHOLD,
    MAX_WINDOW_S,
    DurationSeconds,
    RuleDefinition,
)

_PARSE_DURATION = get_args(DurationSeconds)[1].func

DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "examples": ["90s", "10m", "1h30m", "600"]},
    ]
}
"""A duration as the rule format accepts it: whole seconds, or a string that parse_duration reads."""

_DURATION_TEXT = (
    " Whole seconds as an integer or a string of digits, or units d, h, m and s in that order,"
    " such as 90s, 10m or 1h30m."
)

FIELD_DESCRIPTIONS: dict[str, str] = {
    "id": "Rule id: 1-128 characters of letters, digits and _ . : -. It may be left out, and when"
    " present it must equal the rule id in the path.",
    "name": "Human-readable name, shown in notifications. The id when left out.",
    "description": "Free text for operators.",
    "enabled": "false stores the rule but does not evaluate it.",
    "group": "Rule group, which one evaluator runs. Same characters as id.",
    "signal": "Input the rule applies to: logs, events (OCSF security events) or any.",
    "match": 'Filter: a condition such as {"field": "kind", "equals": "login_failed"}, or a'
    " combinator all, any or not. docs/rules.md lists the operators. Left out or null, it"
    " matches every event.",
    "group_by": "Dotted field paths whose values form the group key, each path at most once. []"
    " makes one group for the whole rule.",
    "threshold": "Event count in the window at which the rule fires.",
    "window": "Length of the window, from 1s to 30d, and a whole number of buckets." + _DURATION_TEXT,
    "bucket": f"Time resolution of the window. It must divide the window into at most {MAX_BUCKETS}"
    " buckets. Left out or null, it is derived from the window." + _DURATION_TEXT,
    "cooldown": "After a notification, a new fired transition of the same group is suppressed for"
    " this long. 0 turns the cooldown off." + _DURATION_TEXT,
    "renotify": "While a group stays firing, notify again at this interval. 0 turns re-notification"
    " off." + _DURATION_TEXT,
    "severity": "Free text passed to sinks, such as warning or critical.",
    "labels": "Names and values passed to sinks as they are.",
    "annotations": 'Names and templates such as "{count} failed logins from {src_ip}". A'
    " placeholder must be a group_by path, a regex named group or one that docs/rules.md lists.",
    "on_missing_key": "For an event without a group_by field: group counts it in the group whose"
    " value for that field is missing, and skip ignores the event for this rule.",
    "max_groups": "Maximum number of groups that the rule tracks at once.",
}
"""Description of each rule field, by its JSON name, from the field table of docs/rules.md."""

_IDENTIFIER = {"pattern": f"^{ID_PATTERN.pattern}$"}
_TEXT_VALUES = {"additionalProperties": {"type": "string", "maxLength": MAX_TEXT_CHARS}}
FIELD_CONSTRAINTS: dict[str, dict[str, Any]] = {
    "id": _IDENTIFIER,
    "group": _IDENTIFIER,
    "threshold": {"minimum": 1, "maximum": MAX_THRESHOLD},
    "max_groups": {"minimum": 1, "maximum": MAX_GROUPS},
    "labels": _TEXT_VALUES,
    "annotations": _TEXT_VALUES,
}
"""Limits that RuleDefinition checks in validators, which pydantic cannot derive a schema from."""

DURATION_BOUNDS: dict[str, dict[str, int]] = {
    "window": {"minimum": 1, "maximum": MAX_WINDOW_S},
    "bucket": {"minimum": 1, "maximum": MAX_WINDOW_S},
}
"""Bounds of the integer form of the durations that have them; a string form is checked by the server."""

RULE_EXAMPLE: dict[str, Any] = {
    "match": {"field": "kind", "equals": "login_failed"},
    "group_by": ["host"],
    "threshold": 3,
    "window": "1m",
    "bucket": "10s",
}


class _RuleSchemaGenerator(GenerateJsonSchema):
    """Schema generator that describes a duration field by the values the rule format accepts.

    By default pydantic describes such a field by its parsed type, an integer of seconds, because
    its BeforeValidator declares no input type, so "10m" would look invalid.
    """

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        if schema["function"]["function"] is _PARSE_DURATION:
            return copy.deepcopy(DURATION_SCHEMA)
        return super().function_before_schema(schema)


def rule_body_schema() -> dict[str, Any]:
    """Build the JSON schema of a rule body from RuleDefinition, with no $ref left in it.

    The request body schema sits inside the OpenAPI document, where a `#/$defs/...` reference
    would point at the document's root and not resolve, so definitions are copied in place.
    """
    generated = RuleDefinition.model_json_schema(schema_generator=_RuleSchemaGenerator)
    definitions = generated.pop("$defs", {})
    schema: dict[str, Any] = _inline_references(generated, definitions)

    properties: dict[str, dict[str, Any]] = schema["properties"]
    for name, description in FIELD_DESCRIPTIONS.items():
        if name in properties:
            properties[name]["description"] = description
    for name, constraints in FIELD_CONSTRAINTS.items():
        if name in properties:
            properties[name].update(copy.deepcopy(constraints))
    # Whole seconds within the limits that RuleDefinition's validators check.
    for name, bounds in DURATION_BOUNDS.items():
        for branch in properties.get(name, {}).get("anyOf", []):
            if branch.get("type") == "integer":
                branch.update(bounds)

    # The path names the rule, so the body may leave id out.
    required = [name for name in schema.pop("required", []) if name != "id"]
    if required:
        schema["required"] = required
    schema["title"] = "Rule"
    schema["description"] = (
        "One rule in the rule file format (docs/rules.md), as JSON. An unknown field is invalid."
    )
    schema["examples"] = [RULE_EXAMPLE]
    return schema


def _inline_references(node: Any, definitions: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """Copy `node` with each `{"$ref": "#/$defs/Name", ...}` replaced by that definition.

    Keywords beside the $ref, such as `default`, are kept. Raises ValueError for a recursive
    definition, which cannot be copied in place.
    """
    if isinstance(node, list):
        return [_inline_references(item, definitions, seen) for item in node]
    if not isinstance(node, dict):
        return node
    reference = node.get("$ref")
    if isinstance(reference, str) and reference.startswith("#/$defs/"):
        name = reference.removeprefix("#/$defs/")
        if name in seen:
            raise ValueError(
                f"rule schema definition {name!r} is recursive, so it cannot be copied into the"
                " request body schema: add it to the OpenAPI components instead"
            )
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        inlined = _inline_references(definitions[name], definitions, (*seen, name))
        return {**inlined, **_inline_references(siblings, definitions, seen)}
    return {key: _inline_references(value, definitions, seen) for key, value in node.items()}


RULE_BODY_SCHEMA = rule_body_schema()
