"""Routes of rule definitions and of the stored group state of a rule."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Path, Query, Response
from pydantic import ValidationError, WithJsonSchema

from alertwarden.api.deps import Api, ApiContext, TenantScope, not_found
from alertwarden.api.models import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    GroupOut,
    GroupPage,
    RuleHealth,
    RuleList,
    RuleOut,
    decode_cursor,
    encode_cursor,
    rfc3339,
    unprocessable,
)
from alertwarden.api.responses import (
    STORE_FAILED,
    TENANT_NOT_FOUND,
    UNAUTHORIZED,
    Responses,
    error,
    invalid,
)
from alertwarden.api.rule_schema import RULE_BODY_SCHEMA
from alertwarden.engine.records import GroupSnapshot, format_time
from alertwarden.errors import InvalidValueError, RuleError
from alertwarden.rules import RuleDefaults, RuleDefinition, RuleFieldErrors, compile_rule
from alertwarden.rules.model import ID_PATTERN, InvalidEntryError
from alertwarden.store.checks import check_json_document
from alertwarden.store.postgres import RuleDeletion

_SCOPED: Responses = {
    **UNAUTHORIZED,
    **TENANT_NOT_FOUND,
    422: invalid("Invalid tenant id."),
    **STORE_FAILED,
}
_RULE_NOT_FOUND: Responses = {404: error("No such tenant or rule, or a tenant the token may not see.")}
_INVALID_RULE_ID: Responses = {422: invalid("Invalid tenant id or rule id.")}
_ETAG_HEADER: dict[str, Any] = {
    "ETag": {
        "description": 'The rule\'s version as an entity tag, such as "3", for If-Match.',
        "schema": {"type": "string"},
    }
}

RuleId = Annotated[
    str,
    Path(
        pattern=f"^{ID_PATTERN.pattern}$",
        description="Rule id: 1-128 characters of letters, digits and _ . : -",
    ),
]

router = APIRouter(prefix="/v1/tenants/{tenant}/rules", tags=["rules"])


def _rule_out(
    row: tuple[str, str, dict[str, Any], bool, int, str, Any], api: ApiContext, tenant: str
) -> RuleOut:
    rule_id, rule_group, definition, enabled, version, source, updated_at = row
    health = None
    if api.service is not None:
        health = RuleHealth.model_validate(api.service.rule_health(tenant, rule_id))
    return RuleOut(
        health=health,
        id=rule_id,
        rule_group=rule_group,
        enabled=enabled,
        version=version,
        source=source,
        updated_at=rfc3339(updated_at) or "",
        definition=definition,
    )


def _etag(version: int) -> str:
    return f'"{version}"'


def _parse_if_match(value: str | None) -> int | None:
    """Return the version an If-Match header names; 0, which no rule has, for any other value."""
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    return int(text) if text.isdigit() and 0 < len(text) <= 9 else 0


def _precondition_failed(rule_id: str, if_match: str | None) -> HTTPException:
    """Return the 412 for an If-Match that does not name the stored version of an existing rule."""
    advice = 'send the ETag that GET returned for the rule, such as "3", or leave If-Match out'
    if if_match is None or not if_match.strip():
        return HTTPException(412, f"If-Match is empty, so it names no version of rule {rule_id!r}: {advice}")
    if _parse_if_match(if_match) == 0:
        return HTTPException(
            412, f"If-Match {if_match!r} names no version of rule {rule_id!r}: {advice}"
        )
    return HTTPException(
        412,
        f"rule {rule_id!r} is not at version {if_match}: read it again and retry with the new ETag",
    )


@router.get("", summary="List the tenant's rules", response_model=RuleList, responses=_SCOPED)
async def list_rules(tenant: TenantScope, api: Api) -> RuleList:
    rows = await api.store.rule_definitions(tenant)
    return RuleList(items=[_rule_out(row, api, tenant) for row in rows])


@router.get(
    "/{rule_id}",
    summary="Read one rule",
    response_model=RuleOut,
    responses={
        **_SCOPED,
        **_RULE_NOT_FOUND,
        **_INVALID_RULE_ID,
        200: {"description": "The rule; the ETag header is its version.", "headers": _ETAG_HEADER},
    },
)
async def get_rule(tenant: TenantScope, rule_id: RuleId, api: Api, response: Response) -> RuleOut:
    rows = await api.store.rule_definitions(tenant, rule_id)
    if not rows:
        raise not_found(f"rule {rule_id!r} of tenant {tenant!r}")
    rule = _rule_out(rows[0], api, tenant)
    response.headers["ETag"] = _etag(rule.version)
    return rule


@router.put(
    "/{rule_id}",
    summary="Create or replace one rule",
    response_model=RuleOut,
    responses={
        **_SCOPED,
        200: {
            "description": "The rule was stored; the ETag header is its new version.",
            "headers": _ETAG_HEADER,
        },
        412: error("If-Match does not name the stored version, which includes a rule not stored yet."),
        422: invalid(
            "Invalid tenant id or rule id, or an invalid rule: each error names the field and the"
            " value."
        ),
    },
)
async def put_rule(
    tenant: TenantScope,
    rule_id: RuleId,
    api: Api,
    response: Response,
    # WithJsonSchema replaces only the documented schema: FastAPI still parses the body as any
    # JSON object, and _validate_rule validates it and words the 422 errors.
    body: Annotated[dict[str, Any], WithJsonSchema(RULE_BODY_SCHEMA), Body(title="Rule")],
    if_match: Annotated[str | None, Header(description='Stored version, such as "3".')] = None,
) -> RuleOut:
    definition, entry = _validate_rule(rule_id, body, api.rule_defaults)
    version = await api.store.put_api_rule(
        tenant,
        rule_id,
        definition.group,
        entry,
        definition.enabled,
        expected_version=_parse_if_match(if_match),
    )
    if version is None:
        # Only to word the error: the write itself already compared the versions.
        if not await api.store.rule_definitions(tenant, rule_id):
            raise HTTPException(
                412,
                f"rule {rule_id!r} does not exist, so If-Match {if_match!r} cannot match: send the"
                " PUT without If-Match to create it",
            )
        raise _precondition_failed(rule_id, if_match)
    rows = await api.store.rule_definitions(tenant, rule_id)
    api.rules_changed()
    rule = _rule_out(rows[0], api, tenant) if rows else None
    if rule is None or rule.version != version:
        # A concurrent write landed between the two statements; report the version we wrote.
        rule = RuleOut(
            id=rule_id,
            rule_group=definition.group,
            enabled=definition.enabled,
            version=version,
            source="api",
            updated_at=rule.updated_at if rule else "",
            definition=entry,
            health=None,
        )
    response.headers["ETag"] = _etag(version)
    return rule


@router.delete(
    "/{rule_id}",
    summary="Delete one rule",
    status_code=204,
    response_class=Response,
    responses={
        **_SCOPED,
        **_RULE_NOT_FOUND,
        **_INVALID_RULE_ID,
        204: {"description": "The rule is deleted; its state goes at the next sweep."},
        412: error("If-Match does not name the stored version; nothing was deleted."),
    },
)
async def delete_rule(
    tenant: TenantScope,
    rule_id: RuleId,
    api: Api,
    if_match: Annotated[
        str | None,
        Header(description='Stored version, such as "3". Without it the rule is deleted at any version.'),
    ] = None,
) -> Response:
    outcome = await api.store.delete_rule_definition(
        tenant, rule_id, expected_version=_parse_if_match(if_match)
    )
    if outcome is RuleDeletion.NOT_FOUND:
        raise not_found(f"rule {rule_id!r} of tenant {tenant!r}")
    if outcome is RuleDeletion.VERSION_MISMATCH:
        raise _precondition_failed(rule_id, if_match)
    api.rules_changed()
    return Response(status_code=204)


@router.get(
    "/{rule_id}/groups",
    summary="List the stored groups of a rule",
    response_model=GroupPage,
    responses={**_SCOPED, 422: invalid("Invalid tenant id, rule id, limit or cursor.")},
)
async def list_groups(
    tenant: TenantScope,
    rule_id: RuleId,
    api: Api,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)] = DEFAULT_PAGE_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> GroupPage:
    after = None
    if cursor is not None:
        rule_group, group_key = decode_cursor(cursor, (str, str))
        after = (rule_group, group_key)
    rows = await api.store.rule_groups_page(tenant, rule_id, after=after, limit=limit + 1)
    now_s = api.clock()
    items = [_group_out(rule_group, snapshot, now_s) for rule_group, _, snapshot in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last_group, last_key, _ = rows[limit - 1]
        next_cursor = encode_cursor([last_group, last_key])
    return GroupPage(items=items, next_cursor=next_cursor)


def window_count(snapshot: GroupSnapshot, now_s: float) -> int:
    """Sum the stored buckets still inside the window at `now_s`.

    counts[i] belongs to bucket head_bucket - (N - 1) + i, and a bucket is inside the window
    while its index is greater than floor(now_s / bucket_s) - N.
    """
    bucket_count = len(snapshot.counts)
    oldest_inside = math.floor(now_s / snapshot.bucket_s) - bucket_count + 1
    first_index = snapshot.head_bucket - (bucket_count - 1)
    return sum(
        count
        for offset, count in enumerate(snapshot.counts)
        if first_index + offset >= oldest_inside
    )


def _group_out(rule_group: str, snapshot: GroupSnapshot, now_s: float) -> GroupOut:
    return GroupOut(
        rule_group=rule_group,
        key=list(snapshot.key),
        state=snapshot.status.value,
        count=window_count(snapshot, now_s),
        last_fired_at=None if snapshot.last_fired_at is None else format_time(snapshot.last_fired_at),
        last_notified_at=(
            None if snapshot.last_notified_at is None else format_time(snapshot.last_notified_at)
        ),
    )


def _validate_rule(
    rule_id: str, body: dict[str, Any], defaults: RuleDefaults
) -> tuple[RuleDefinition, dict[str, Any]]:
    """Validate a rule body as the rule file loader does; raise 422 naming field and value.

    Returns the definition and the entry to store: the body with its id and with the rule
    defaults filled in, so the stored rule keeps its meaning when the defaults change.
    """
    if "id" in body and body["id"] != rule_id:
        raise unprocessable(
            ["body", "id"],
            f"id {body['id']!r} differs from the rule id {rule_id!r} in the path: make them equal"
            " or leave id out",
            body["id"],
        )
    entry = defaults.apply({**body, "id": rule_id})
    try:
        definition = RuleDefinition.model_validate(entry)
        compile_rule(definition)
    except ValidationError as error:
        raise HTTPException(422, _validation_details(error, entry)) from None
    except RuleError as error:
        raise unprocessable(["body"], str(error), None) from None
    try:
        # The rule model takes some values that the store's jsonb column cannot hold, such as a
        # NUL character in a label.
        check_json_document(entry)
    except InvalidValueError as error:
        raise HTTPException(
            422,
            [{"loc": ["body", *error.path], "field": error.field, "msg": str(error),
              "input": error.value}],
        ) from None
    return definition, entry


def _validation_details(error: ValidationError, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Turn the rule model's errors into 422 details with one naming convention.

    `field` is a path such as threshold, group_by[1], labels.team or match.any[0].field, and
    `loc` is "body" followed by the parts of that path, such as ["body", "group_by", 1].
    """
    details: list[dict[str, Any]] = []
    for item in error.errors():
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, RuleFieldErrors):
            for field, message in cause.problems:
                parts = _field_parts(field)
                details.append(_detail(parts, field, message, _value_at(body, parts)))
            continue
        parts = list(item["loc"])
        field = _field_name(parts) or "rule"
        value = item.get("input")
        message = str(cause) if isinstance(cause, ValueError) else item["msg"]
        if item["type"] == "extra_forbidden":
            message = f"unknown field {field!r}: remove it; see the rule fields in docs/rules.md"
        elif isinstance(cause, InvalidEntryError) and isinstance(value, dict):
            # The model checks the mapping as a whole, so the error names the entry it rejected.
            # An empty name gets the field `key in labels`, as check_json_document names a key.
            key = cause.key
            if key == "":
                parts, field, value = [*parts, key], f"key in {field}", key
            else:
                parts, field, value = [*parts, key], f"{field}.{key}", value.get(key)
        details.append(_detail(parts, field, message, value))
    return details


def _detail(parts: list[str | int], field: str, message: str, value: Any) -> dict[str, Any]:
    return {"loc": ["body", *parts], "field": field, "msg": message, "input": value}


_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_MAPPING_FIELDS = ("labels", "annotations")
"""Fields whose keys are free text, so the rest of a path such as labels.a.b is one key."""


def _field_parts(field: str) -> list[str | int]:
    """Split a field path such as group_by[1], match.any[0].field or labels.team into its parts."""
    top = re.match(r"[^.\[]*", field)
    assert top is not None
    name, rest = top.group(), field[top.end():]
    if name in _MAPPING_FIELDS and rest.startswith("."):
        return [name, rest[1:]]
    parts: list[str | int] = [name]
    position = 0
    while position < len(rest):
        part = _PATH_PART.match(rest, position)
        if part is None:
            # Not a path that this function wrote, so keep the rest as one part.
            return [*parts, rest[position:].removeprefix(".")]
        parts.append(part.group(1) if part.group(1) is not None else int(part.group(2)))
        position = part.end()
    return parts


def _field_name(parts: list[str | int]) -> str:
    """Join path parts into a field path: names with dots and list indexes in brackets."""
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else part
    return name


def _value_at(body: dict[str, Any], parts: list[str | int]) -> Any:
    """Return the body's value at a field path's parts, or None where the body has none."""
    value: Any = body
    for part in parts:
        if isinstance(part, int):
            value = value[part] if isinstance(value, list) and part < len(value) else None
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value
