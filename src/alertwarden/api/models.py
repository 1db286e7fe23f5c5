"""Request and response bodies, page cursors and the checks of path and query values."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonDict, SkipJsonSchema

from alertwarden.engine.records import TransitionKind
from alertwarden.errors import ConfigError, InvalidValueError
from alertwarden.sources.jetstream import TENANT_ID_PATTERN, TENANT_ID_RULE, validate_tenant
from alertwarden.store.checks import check_json_document

MAX_PAGE_LIMIT = 1000
DEFAULT_PAGE_LIMIT = 100

TenantId = Annotated[
    str,
    Path(
        description=f"Tenant id: {TENANT_ID_RULE}.",
        json_schema_extra={"pattern": f"^{TENANT_ID_PATTERN.pattern}$"},
    ),
]
"""The tenant path parameter. The pattern only documents it: check_tenant_id validates it, so an
invalid id gets the same message as in the settings and on the command line."""


class RequestBody(BaseModel):
    """Base of request bodies: an unknown field is a 422 error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class FeatureBody(RequestBody):
    enabled: bool = Field(strict=True, description="True turns the feature on.")


class TokenRequest(RequestBody):
    name: str = Field("", max_length=256, description="Free-text label shown in token lists.")


class Feature(BaseModel):
    tenant: str
    feature: str
    enabled: bool


class Tenant(BaseModel):
    tenant: str
    stateful_rules: bool


class IssuedTokenOut(BaseModel):
    id: str
    tenant: str
    name: str
    token: str = Field(description="The bearer token. It is returned only once.")
    created_at: str


class TokenOut(BaseModel):
    id: str
    tenant: str
    name: str
    created_at: str
    revoked_at: str | None


class TokenList(BaseModel):
    items: list[TokenOut]


class RuleOut(BaseModel):
    id: str
    rule_group: str
    enabled: bool
    version: int
    source: str = Field(description="file (rule file sync) or api.")
    updated_at: str
    definition: dict[str, Any] = Field(description="The rule in the rule file format.")
    health: RuleHealth | None = Field(
        None, description="Run-time status on the serving node; null without a running service."
    )


class RuleList(BaseModel):
    items: list[RuleOut]


class GroupOut(BaseModel):
    rule_group: str
    key: list[str | None] = Field(description="Values of the rule's group_by fields, in order.")
    state: str = Field(description="ok or firing.")
    count: int = Field(description="Sum of the stored buckets still inside the window now.")
    last_fired_at: str | None
    last_notified_at: str | None


class GroupPage(BaseModel):
    items: list[GroupOut]
    next_cursor: str | None


class HistoryOut(BaseModel):
    id: int
    at: str
    rule: str
    rule_group: str
    group: dict[str, str | None]
    kind: TransitionKind
    count: int
    delivered: bool
    details: dict[str, Any]


class HistoryPage(BaseModel):
    items: list[HistoryOut]
    next_cursor: str | None


class Health(BaseModel):
    status: str = Field(description="ok, or unavailable when a check failed.")
    checks: dict[str, str] = Field(
        default_factory=dict,
        description="Each check with ok or what is wrong: store, and under `alertwarden serve` also"
        " jetstream, leases, evaluators and evaluators_store. evaluators_store is present only"
        " when it fails. /healthz sends no checks.",
    )


class RuleHealth(BaseModel):
    status: str = Field(
        description="healthy, unhealthy (regex timeouts, or a stored definition that does not"
        " compile), starting, elsewhere (another serve node holds the rule group's lease),"
        " pending (a change made through this node is not applied yet), or inactive (disabled,"
        " or the tenant's flag is off)."
    )
    reason: str | None = None


class ErrorMessage(BaseModel):
    """Body of every error response except 422."""

    detail: str = Field(description="What failed and, where the client can act, what to do next.")


def _omit_default(schema: JsonDict) -> None:
    # The API leaves an absent optional field out instead of sending null, so the documented
    # schema has no `"default": null`, which would also contradict the field's type.
    schema.pop("default", None)


class ValidationErrorDetail(BaseModel):
    """One invalid value of a 422 response.

    The API sends three shapes. FastAPI's request validation errors add `type`, and `ctx` for
    some. Rule validation and values that the store rejects add `field`. The API's own checks of
    path and query values send only `loc`, `msg` and `input`.
    """

    loc: list[str | int] = Field(
        description="Where the value is: path, query or body, then the names and indexes inside"
        " it. Empty when the store rejected a value whose place in the request it does not know."
    )
    msg: str = Field(description="What is wrong with the value and how to fix it.")
    input: Any = Field(description="The rejected value, or null where no single value applies.")
    field: str | SkipJsonSchema[None] = Field(
        None,
        description="Path of the invalid field, such as threshold, labels.team or group_by[1], or"
        " `key in labels` for an invalid name in labels. Sent by rule validation and for values"
        " that the store rejects.",
        json_schema_extra=_omit_default,
    )
    type: str | SkipJsonSchema[None] = Field(
        None,
        description="Pydantic's error type, such as bool_type. Sent for errors that FastAPI's"
        " request validation finds.",
        json_schema_extra=_omit_default,
    )
    ctx: dict[str, Any] | SkipJsonSchema[None] = Field(
        None,
        description="Pydantic's error context, such as the limit of a range check.",
        json_schema_extra=_omit_default,
    )


class ValidationErrorResponse(BaseModel):
    """Body of a 422 response: every invalid value that was found."""

    detail: list[ValidationErrorDetail]


def error_detail(location: list[str | int], message: str, value: object) -> list[dict[str, Any]]:
    """Build a 422 detail list in the shape FastAPI uses for request validation errors."""
    return [{"loc": location, "msg": message, "input": value}]


def unprocessable(location: list[str | int], message: str, value: object) -> HTTPException:
    return HTTPException(422, error_detail(location, message, value))


def check_tenant_id(tenant: str) -> str:
    """Return the path's tenant id when validate_tenant accepts it; raise 422 otherwise."""
    try:
        return validate_tenant(tenant)
    except ConfigError as error:
        raise unprocessable(["path", "tenant"], str(error), tenant) from None


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_SPACE_OFFSET = re.compile(r"\d \d{2}:?\d{2}$")
"""A time followed by a space and an offset, which is what a '+' offset becomes in a query string."""


def parse_time(name: str, text: str | None) -> float | None:
    """Parse an RFC 3339 query value into UTC seconds; a value without an offset is rejected."""
    if text is None:
        return None
    try:
        # RFC 3339 (section 5.6) allows a lowercase t and z, and Python 3.11's fromisoformat
        # rejects a lowercase z.
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        message = f"invalid {name} {text!r}: use RFC 3339 with a time zone, such as 2026-01-02T03:04:05Z"
        if _SPACE_OFFSET.search(text):
            message += (
                ". A '+' sent unencoded in a query string arrives as a space: percent-encode it as %2B,"
                " such as 2026-01-02T03:04:05%2B02:00"
            )
        raise unprocessable(["query", name], message, text)
    return moment.timestamp()


def encode_cursor(parts: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(parts)).decode().rstrip("=")


def decode_cursor(text: str, shape: tuple[type, ...]) -> list[Any]:
    """Decode a cursor made by encode_cursor whose items have the types in `shape`."""
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        parts = None
    valid = (
        isinstance(parts, list)
        and len(parts) == len(shape)
        and all(type(part) in _accepted(kind) for part, kind in zip(parts, shape, strict=True))
        and not any(isinstance(part, str) and "\x00" in part for part in parts)
    )
    if not valid:
        raise unprocessable(
            ["query", "cursor"],
            f"invalid cursor {text!r}: pass the next_cursor of the previous page unchanged",
            text,
        )
    assert isinstance(parts, list)
    return parts


def _accepted(kind: type) -> set[type]:
    # JSON writes a whole float such as 1.0 as 1.0, but a client may normalise it to 1.
    return {float, int} if kind is float else {kind}


def parse_group_filter(text: str | None) -> dict[str, str | None] | None:
    """Parse the `group` query value: a JSON object of group_by field to value."""
    if text is None:
        return None
    try:
        group = orjson.loads(text)
    except orjson.JSONDecodeError:
        group = None
    if not isinstance(group, dict) or "\x00" in text or not all(
        value is None or isinstance(value, str) for value in group.values()
    ):
        raise unprocessable(
            ["query", "group"],
            f"invalid group {text!r}: use a JSON object of field name to string or null,"
            ' such as {"source_id":"10.0.0.1"}',
            text,
        )
    try:
        # Catches an escaped NUL such as {"a":"\u0000"}, which the store cannot hold.
        check_json_document(group, "group")
    except InvalidValueError as error:
        raise unprocessable(["query", "group"], str(error), text) from None
    return group
