"""Route that publishes a tenant's events to NATS JetStream, the input of the rule pipelines."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Annotated, Any

import nats.errors
import orjson
from fastapi import APIRouter, HTTPException, Query, Request
from nats.js import JetStreamContext
from pydantic import BaseModel, BeforeValidator
from pydantic_core import PydanticCustomError

from alertwarden.api.deps import TenantScope
from alertwarden.api.models import unprocessable
from alertwarden.api.responses import TENANT_NOT_FOUND, UNAUTHORIZED, error, invalid
from alertwarden.errors import EventError
from alertwarden.events import Signal
from alertwarden.logs import get_logger
from alertwarden.sources.jsonl import JsonParser, OcsfParser
from alertwarden.sources.jetstream import (
    DEFAULT_MAX_MESSAGE_BYTES,
    JetStreamSettings,
    ensure_stream,
    publish_events,
    published_size,
    tenant_subjects,
)

log = get_logger(__name__)

DEFAULT_MAX_EVENTS = 1000
UTF8_BOM = b"\xef\xbb\xbf"

router = APIRouter(prefix="/v1/tenants/{tenant}/events", tags=["ingest"])

_EVENT_SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": True}

# The route reads the raw body, so FastAPI cannot derive this part of the OpenAPI document.
EVENTS_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        "One event as a JSON object, or a non-empty array of at most max_ingest_events (default"
        f" {DEFAULT_MAX_EVENTS}) events, in UTF-8. The Content-Type header is not checked."
    ),
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {**_EVENT_SCHEMA, "title": "Event"},
                    {"type": "array", "items": _EVENT_SCHEMA, "minItems": 1, "title": "Events"},
                ]
            },
            "example": [
                {"id": "log-1", "time": "2026-12-04T10:00:00Z", "message": "Failed password for root"}
            ],
        }
    },
}


# The query parameter has its own enum, because alertwarden.events.Signal also has `any`, which
# only rules take. Also, mypyc compiles events.py and drops its class docstrings, so the OpenAPI
# document described Signal as "mypyc filler docstring".
class IngestSignal(enum.StrEnum):
    """Signal that every event of the request is published as: logs, or events (OCSF)."""

    LOGS = "logs"
    EVENTS = "events"


def check_signal(value: object) -> object:
    """Reject a `signal` query value other than logs or events, `any` included, with one message."""
    if isinstance(value, str) and value not in IngestSignal.__members__.values():
        # Formatted here, because the template's own {name} fields cannot write a repr.
        raise PydanticCustomError(
            "invalid_signal", f"invalid signal {value!r}: use logs or events, or leave it out"
        )
    return value


@dataclass(slots=True)
class IngestContext:
    """The JetStream connection of the ingest route, or None when the app has none."""

    js: JetStreamContext | None
    settings: JetStreamSettings
    max_events: int = DEFAULT_MAX_EVENTS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest message, headers included, that the NATS server and the evaluators accept."""
    # Tenants whose subjects the stream is known to cover, so ensure_stream runs once per tenant.
    ensured_tenants: set[str] = field(default_factory=set)
    ensure_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class IngestResult(BaseModel):
    """Counts of one ingest request."""

    accepted: int
    """Events that JetStream stored."""
    duplicates: int
    """Events whose id JetStream had already stored within the stream's duplicate window."""


def event_id(index: int, event: dict[str, Any]) -> str | None:
    """Return the event's id: `id`, else `event_id`, else OCSF `metadata.uid`; None without one.

    An id is a non-empty string or an integer. Any other value raises 422 naming the event's
    index and the field, because silently ignoring it would store a client's retry twice.
    """
    metadata = event.get("metadata")
    candidates = (
        ("id", event.get("id")),
        ("event_id", event.get("event_id")),
        ("metadata.uid", metadata.get("uid") if isinstance(metadata, dict) else None),
    )
    for field_name, value in candidates:
        if value is None:
            continue
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if value == "":
            described = "an empty string"
        elif isinstance(value, float):
            # orjson decodes an integer outside 64 bits as a float too.
            described = "a number that is not a 64-bit integer"
        else:
            described = json_type(value)
        raise unprocessable(
            ["body", index, *field_name.split(".")],
            f"invalid event at index {index}: {field_name} is {described}; use a non-empty string"
            " or an integer as the event id, or leave it out",
            value,
        )
    return None


def event_signal(event: dict[str, Any]) -> Signal:
    """Return EVENTS for an OCSF event, which has `class_uid`, and LOGS for anything else."""
    return Signal.EVENTS if "class_uid" in event else Signal.LOGS


def parse_events(body: bytes, max_events: int) -> list[dict[str, Any]]:
    """Return the events of a body holding one JSON object or an array of them.

    Raises 422 for invalid JSON or a non-object element (naming its index), and 413 for more
    than `max_events` events. orjson rejects invalid UTF-8, a lone surrogate escape such as
    \\ud800 and nesting deeper than 1024 levels as invalid JSON.
    """
    try:
        # orjson rejects a UTF-8 byte order mark, which some editors and Windows tools write
        # before JSON, so it is skipped.
        document = orjson.loads(body.removeprefix(UTF8_BOM))
    except orjson.JSONDecodeError as error:
        raise unprocessable(["body"], f"invalid JSON body: {error}", None) from None

    if isinstance(document, dict):
        return [document]
    if not isinstance(document, list):
        raise unprocessable(
            ["body"], f"invalid body of type {type(document).__name__}: send an object or an array", None
        )
    if not document:
        raise unprocessable(["body"], "empty array: send at least one event", None)
    if len(document) > max_events:
        raise HTTPException(
            413, f"request has {len(document)} events, over the limit of {max_events}: split it"
        )
    for index, element in enumerate(document):
        if not isinstance(element, dict):
            raise unprocessable(
                ["body", index],
                f"invalid event at index {index}: it is {json_type(element)}, not a JSON object",
                None,
            )
    return document


_PARSERS: dict[Signal, JsonParser | OcsfParser] = {Signal.LOGS: JsonParser(), Signal.EVENTS: OcsfParser()}


def encode_event(index: int, event: dict[str, Any]) -> bytes:
    """Return the event as compact UTF-8 JSON, or raise 422 naming its index when orjson cannot.

    orjson.dumps writes at most 254 nested levels, fewer than the 1024 that orjson.loads reads.
    """
    try:
        return orjson.dumps(event)
    except orjson.JSONEncodeError as error:
        raise unprocessable(
            ["body", index], f"invalid event at index {index}: cannot be encoded as JSON: {error}", None
        ) from None


def check_event(index: int, signal: Signal, payload: bytes) -> None:
    """Raise 422 naming the event's index when the evaluators could not parse it.

    The evaluators parse the same bytes with the same parsers, so an event accepted here is
    never skipped there as malformed or for its timestamp.
    """
    try:
        _PARSERS[signal].parse(payload)
    except EventError as error:
        raise unprocessable(["body", index], f"invalid event at index {index}: {error}", None) from None


def json_type(value: object) -> str:
    """Return the JSON name of a decoded value's type, with its article, such as `an array`."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    names = {str: "a string", list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")


def check_size(index: int, size: int, limit: int) -> None:
    """Raise 413 naming the event's index when its message is over `limit` bytes."""
    if size > limit:
        raise HTTPException(
            413,
            f"event at index {index} makes a message of {size} bytes with its headers, over the"
            f" limit of {limit} bytes: split the record or shorten its fields",
        )


def ingest_context(request: Request) -> IngestContext:
    context: IngestContext = request.app.state.ingest
    return context


@router.post(
    "",
    status_code=202,
    summary="Publish events to the tenant's JetStream subjects",
    response_model=IngestResult,
    openapi_extra={"requestBody": EVENTS_REQUEST_BODY},
    responses={
        **UNAUTHORIZED,
        **TENANT_NOT_FOUND,
        413: error(
            "Body over the byte limit, more events than the count limit, or an event (named by"
            " index) whose message is over the NATS server's max_payload or the evaluators'"
            " ALERTWARDEN_MAX_MESSAGE_BYTES."
        ),
        422: invalid(
            "Invalid tenant id, invalid JSON, an invalid event or event id (named by index) or a"
            " signal other than logs or events."
        ),
        503: error(
            "No JetStream connection, JetStream did not store the events, or the state store"
            " failed while checking the token or the tenant."
        ),
    },
)
async def ingest_events(
    tenant: TenantScope,
    request: Request,
    signal: Annotated[
        IngestSignal | None,
        BeforeValidator(check_signal),
        Query(description="Signal of every event; without it, events with class_uid are events, others logs."),
    ] = None,
) -> IngestResult:
    ingest = ingest_context(request)
    events = parse_events(await request.body(), ingest.max_events)
    if ingest.js is None:
        raise HTTPException(503, "event ingest is disabled: this server has no JetStream connection")

    batches: dict[Signal, list[tuple[str | None, bytes]]] = {Signal.LOGS: [], Signal.EVENTS: []}
    for index, event in enumerate(events):
        payload = encode_event(index, event)
        event_kind = event_signal(event) if signal is None else Signal(signal.value)
        check_event(index, event_kind, payload)
        identifier = event_id(index, event)
        size = published_size(ingest.settings, tenant, event_kind, identifier, payload)
        check_size(index, size, ingest.max_message_bytes)
        batches[event_kind].append((identifier, payload))

    accepted = 0
    duplicates = 0
    try:
        await _ensure_tenant(ingest, ingest.js, tenant)
        for batch_signal, batch in batches.items():
            if not batch:
                continue
            published = await publish_events(ingest.js, ingest.settings, tenant, batch_signal, batch)
            duplicates += sum(1 for result in published if result.duplicate)
            accepted += sum(1 for result in published if not result.duplicate)
    except (TimeoutError, nats.errors.Error) as error:
        # Events published before the failure stay stored; a retry with the same ids is
        # counted as duplicates within the stream's duplicate window. The stream may have been
        # deleted, so the next request checks it again.
        ingest.ensured_tenants.discard(tenant)
        log.error(
            "ingest_publish_failed",
            tenant=tenant,
            published=accepted + duplicates,
            events=len(events),
            error=repr(error),
        )
        raise HTTPException(503, "JetStream did not store the events; retry later") from None
    return IngestResult(accepted=accepted, duplicates=duplicates)


async def _ensure_tenant(ingest: IngestContext, js: JetStreamContext, tenant: str) -> None:
    if tenant in ingest.ensured_tenants:
        return
    async with ingest.ensure_lock:
        if tenant not in ingest.ensured_tenants:
            await ensure_stream(js, ingest.settings, tenant_subjects(ingest.settings, tenant))
            ingest.ensured_tenants.add(tenant)
