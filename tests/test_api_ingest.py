"""POST /v1/tenants/{tenant}/events and GET /metrics against real PostgreSQL and NATS JetStream.

Each test uses its own stream and subject prefix and deletes the stream at the end.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import nats
import orjson
import nats.errors
import pytest
from nats.aio.client import Client

from alertwarden.api import create_app
from alertwarden.events import Signal
from alertwarden.metrics import Metrics
from alertwarden.sources.jsonl import JsonParser
from alertwarden.sources.jetstream import (
    JetStreamInput,
    JetStreamSettings,
    StreamMessage,
    message_id,
    published_size,
)
from alertwarden.store.postgres import PostgresStore

NATS_URL = "nats://127.0.0.1:4222"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MAX_BODY_BYTES = 4096
MAX_EVENTS = 5
MAX_MESSAGE_BYTES = 1024

AT = "2026-12-04T10:00:00Z"
"""Event time of the ingest tests: the endpoint rejects events without one."""


@dataclass
class Env:
    client: httpx.AsyncClient
    nc: Client
    settings: JetStreamSettings
    metrics: Metrics


@pytest.fixture
async def store(pg_store_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(pg_store_url, pool_max=4)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def env(store: PostgresStore) -> AsyncIterator[Env]:
    try:
        nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    except (nats.errors.NoServersError, OSError) as error:
        pytest.skip(f"no NATS server at {NATS_URL}: {error}")
    js = nc.jetstream()
    prefix = "t" + uuid.uuid4().hex[:12]
    settings = JetStreamSettings(
        url=NATS_URL,
        stream=f"AW_TEST_{prefix}",
        logs_subject=f"{prefix}.logs.{{tenant}}.>",
        events_subject=f"{prefix}.events.{{tenant}}.>",
        max_age_s=600,
        max_bytes=64 * 1024 * 1024,
        fetch_timeout_s=0.5,
    )
    metrics = Metrics()
    app = create_app(
        store,
        admin_token=ADMIN_TOKEN,
        max_body_bytes=MAX_BODY_BYTES,
        jetstream=js,
        jetstream_settings=settings,
        max_ingest_events=MAX_EVENTS,
        max_message_bytes=MAX_MESSAGE_BYTES,
        metrics=metrics,
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            yield Env(client, nc, settings, metrics)
    finally:
        try:
            await js.delete_stream(settings.stream)
        except nats.errors.Error:
            pass  # The test failed before a request created the stream.
        await nc.close()


async def create_tenant(client: httpx.AsyncClient) -> str:
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    response = await client.put(f"/v1/tenants/{tenant}", headers=ADMIN)
    assert response.status_code == 201, response.text
    return tenant


async def tenant_headers(client: httpx.AsyncClient, tenant: str) -> dict[str, str]:
    response = await client.post(f"/v1/tenants/{tenant}/tokens", headers=ADMIN, json={"name": "ci"})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def stored_messages(env: Env, tenant: str, expected: int) -> list[StreamMessage]:
    """Read the tenant's messages back until `expected` arrived or the input has caught up."""
    messages: list[StreamMessage] = []
    async with JetStreamInput(env.nc.jetstream(), env.settings, tenant) as reader:
        while len(messages) < expected:
            batch = await reader.fetch_batch()
            if not batch:
                break
            messages.extend(record for record in batch if isinstance(record, StreamMessage))
    return messages


async def test_ingest_stores_events(env: Env) -> None:
    tenant = await create_tenant(env.client)
    headers = await tenant_headers(env.client, tenant)
    events = [
        {"id": "log-1", "time": AT, "message": "Failed password for root"},
        {"class_uid": 3002, "time": 1796378400000, "metadata": {"uid": "ocsf-1"}, "status": "Failure"},
    ]
    response = await env.client.post(f"/v1/tenants/{tenant}/events", headers=headers, json=events)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2, "duplicates": 0}

    messages = await stored_messages(env, tenant, 2)
    assert [message.signal for message in messages] == [Signal.LOGS, Signal.EVENTS]
    assert [message.msg_id for message in messages] == [
        message_id(tenant, Signal.LOGS, "log-1"),
        message_id(tenant, Signal.EVENTS, "ocsf-1"),
    ]
    assert [json.loads(message.data) for message in messages] == events


async def test_ingest_single_object(env: Env) -> None:
    tenant = await create_tenant(env.client)
    response = await env.client.post(
        f"/v1/tenants/{tenant}/events", headers=ADMIN, params={"signal": "events"}, json={"event_id": 7, "class_uid": 3002, "time": 1796378400000}
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0}
    messages = await stored_messages(env, tenant, 1)
    assert len(messages) == 1
    assert messages[0].signal is Signal.EVENTS
    assert messages[0].msg_id == message_id(tenant, Signal.EVENTS, "7")


async def test_ingest_time_without_offset_is_utc(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # A local zone far from UTC, so reading the time as local time would shift it by 9 hours.
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        tenant = await create_tenant(env.client)
        response = await env.client.post(
            f"/v1/tenants/{tenant}/events", headers=ADMIN, json={"time": "2026-12-05T09:00:00", "n": 1}
        )
        messages = await stored_messages(env, tenant, 1)
        # The parser that the evaluators (service/batch.py) read the logs subject with.
        event = JsonParser().parse(messages[0].data)
    finally:
        monkeypatch.undo()
        time.tzset()

    assert response.status_code == 202, response.text
    assert event.time_s == datetime(2026, 12, 5, 9, 0, tzinfo=UTC).timestamp()


async def test_ingest_duplicate_id(env: Env) -> None:
    tenant = await create_tenant(env.client)
    path = f"/v1/tenants/{tenant}/events"
    first = await env.client.post(path, headers=ADMIN, json={"id": "same", "time": AT, "n": 1})
    second = await env.client.post(path, headers=ADMIN, json=[{"id": "same", "time": AT, "n": 2}, {"time": AT, "n": 3}])
    assert first.json() == {"accepted": 1, "duplicates": 0}
    assert second.status_code == 202, second.text
    assert second.json() == {"accepted": 1, "duplicates": 1}

    messages = await stored_messages(env, tenant, 3)
    assert [json.loads(message.data) for message in messages] == [{"id": "same", "time": AT, "n": 1}, {"time": AT, "n": 3}]


async def test_ingest_same_id_other_tenant(env: Env) -> None:
    first = await create_tenant(env.client)
    second = await create_tenant(env.client)
    event = {"id": "1", "time": AT, "kind": "alarm"}

    responses = [
        await env.client.post(f"/v1/tenants/{tenant}/events", headers=ADMIN, json=event)
        for tenant in (first, second)
    ]
    as_ocsf = await env.client.post(
        f"/v1/tenants/{first}/events",
        headers=ADMIN,
        json={"id": "1", "class_uid": 3002, "time": 1796378400000},
    )

    # The stream deduplicates message ids across tenants, so the id is scoped to each.
    assert [response.json() for response in responses] == [{"accepted": 1, "duplicates": 0}] * 2
    assert as_ocsf.json() == {"accepted": 1, "duplicates": 0}
    assert len(await stored_messages(env, second, 1)) == 1


async def test_ingest_ids_differing_in_spaces(env: Env) -> None:
    tenant = await create_tenant(env.client)
    events = [{"id": value, "time": AT} for value in (" lead", "lead", "x\r\nA", "x  A")]

    response = await env.client.post(f"/v1/tenants/{tenant}/events", headers=ADMIN, json=events)

    assert response.json() == {"accepted": 4, "duplicates": 0}


@pytest.mark.parametrize(
    ("event", "field", "described"),
    [
        ({"id": {"a": 1}}, "id", "an object"),
        ({"id": [1]}, "id", "an array"),
        ({"id": True}, "id", "a boolean"),
        ({"id": 1.5}, "id", "a number that is not a 64-bit integer"),
        ({"id": 2**64}, "id", "a number that is not a 64-bit integer"),
        ({"id": ""}, "id", "an empty string"),
        ({"event_id": {"a": 1}}, "event_id", "an object"),
        ({"metadata": {"uid": [1]}}, "metadata.uid", "an array"),
    ],
)
async def test_ingest_invalid_id_422(
    env: Env, event: dict[str, object], field: str, described: str
) -> None:
    tenant = await create_tenant(env.client)
    events = [{"id": "ok", "time": AT}, {**event, "time": AT}]

    response = await env.client.post(f"/v1/tenants/{tenant}/events", headers=ADMIN, json=events)

    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", 1, *field.split(".")]
    assert detail["msg"].startswith(f"invalid event at index 1: {field} is {described}; use")
    rejected: Any = event
    for part in field.split("."):
        rejected = rejected[part]
    # An integer outside 64 bits reached the route as a float.
    assert detail["input"] == (float(rejected) if type(rejected) is int else rejected)


async def test_ingest_message_size_limit(env: Env) -> None:
    tenant = await create_tenant(env.client)

    def event(index: int, pad: int) -> dict[str, object]:
        return {"time": AT, "id": f"e{index}", "pad": "x" * pad}

    # Pad the event so that its message, headers included, is exactly at the limit.
    overhead = published_size(env.settings, tenant, Signal.LOGS, "e1", orjson.dumps(event(1, 0)))
    at_limit = event(1, MAX_MESSAGE_BYTES - overhead)
    over_limit = event(2, MAX_MESSAGE_BYTES - overhead)  # "e2" is as long as "e1", plus one pad byte
    over_limit["pad"] = str(over_limit["pad"]) + "x"

    rejected = await env.client.post(f"/v1/tenants/{tenant}/events", headers=ADMIN, json=[at_limit, over_limit])
    assert rejected.status_code == 413
    assert "event at index 1" in rejected.json()["detail"]
    assert f"{MAX_MESSAGE_BYTES + 1} bytes" in rejected.json()["detail"]
    assert f"limit of {MAX_MESSAGE_BYTES} bytes" in rejected.json()["detail"]

    accepted = await env.client.post(f"/v1/tenants/{tenant}/events", headers=ADMIN, json=[at_limit])
    assert accepted.status_code == 202, accepted.text
    # The rejected request was checked as a whole before anything was published.
    stored = await stored_messages(env, tenant, 2)
    assert [orjson.loads(message.data)["id"] for message in stored] == ["e1"]


async def test_ingest_limits(env: Env) -> None:
    tenant = await create_tenant(env.client)
    path = f"/v1/tenants/{tenant}/events"

    too_many = await env.client.post(path, headers=ADMIN, json=[{"time": AT, "n": n} for n in range(MAX_EVENTS + 1)])
    assert too_many.status_code == 413
    assert f"limit of {MAX_EVENTS}" in too_many.json()["detail"]

    too_large = await env.client.post(path, headers=ADMIN, json={"message": "x" * MAX_BODY_BYTES})
    assert too_large.status_code == 413

    not_object = await env.client.post(path, headers=ADMIN, json=[{"time": AT, "n": 1}, "text"])
    assert not_object.status_code == 422
    detail = not_object.json()["detail"][0]
    assert detail["loc"] == ["body", 1]
    assert "index 1" in detail["msg"]
    assert "it is a string, not a JSON object" in detail["msg"]

    invalid_json = await env.client.post(path, headers=ADMIN, content=b"{not json")
    assert invalid_json.status_code == 422

    no_time = await env.client.post(path, headers=ADMIN, json=[{"time": AT}, {"n": 2}])
    assert no_time.status_code == 422
    assert no_time.json()["detail"][0]["loc"] == ["body", 1]
    assert "timestamp" in no_time.json()["detail"][0]["msg"]

    any_signal = await env.client.post(path, headers=ADMIN, params={"signal": "any"}, json={"n": 1})
    assert any_signal.status_code == 422
    assert "use logs or events" in any_signal.text

    bogus_signal = await env.client.post(path, headers=ADMIN, params={"signal": "bogus"}, json={"n": 1})
    assert bogus_signal.status_code == 422
    assert bogus_signal.json()["detail"][0]["msg"] == (
        "invalid signal 'bogus': use logs or events, or leave it out"
    )

    valid = await env.client.post(path, headers=ADMIN, json={"time": AT, "n": "valid"})
    assert valid.status_code == 202, valid.text
    messages = await stored_messages(env, tenant, 2)
    assert [json.loads(message.data) for message in messages] == [{"time": AT, "n": "valid"}]


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 1500 + b"]" * 1500,
        b'{"time": "' + AT.encode() + b'", "host": "\\ud800"}',
        b'[{"time": "' + AT.encode() + b'"}, {"host": "\\udc00"}]',
        b'{"host": "\xff"}',
    ],
    ids=["nested-1500", "lone-high-surrogate", "lone-low-surrogate-in-array", "invalid-utf8"],
)
async def test_ingest_unparsable_body_422(env: Env, body: bytes) -> None:
    tenant = await create_tenant(env.client)
    path = f"/v1/tenants/{tenant}/events"

    response = await env.client.post(path, headers=ADMIN, content=body)
    valid = await env.client.post(path, headers=ADMIN, json={"time": AT, "n": "valid"})

    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body"]
    assert detail["msg"].startswith("invalid JSON body: ")
    assert valid.status_code == 202, valid.text
    messages = await stored_messages(env, tenant, 2)
    assert [json.loads(message.data) for message in messages] == [{"time": AT, "n": "valid"}]


async def test_ingest_event_too_deep_422(env: Env) -> None:
    tenant = await create_tenant(env.client)
    nested: object = "leaf"
    for _ in range(300):
        nested = [nested]

    response = await env.client.post(
        f"/v1/tenants/{tenant}/events", headers=ADMIN, json=[{"time": AT}, {"time": AT, "x": nested}]
    )

    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", 1]
    assert "invalid event at index 1" in detail["msg"]


async def test_ingest_payload_compact_utf8(env: Env) -> None:
    tenant = await create_tenant(env.client)
    # A UTF-8 byte order mark, escapes of a surrogate pair and of Latin-1 letters, and spaces.
    body = b'\xef\xbb\xbf[ {"time": "' + AT.encode() + b'", "msg": "\\ud83d\\udea8 Gr\\u00fc\\u00dfe"} ]'

    response = await env.client.post(f"/v1/tenants/{tenant}/events", headers=ADMIN, content=body)

    assert response.status_code == 202, response.text
    messages = await stored_messages(env, tenant, 1)
    assert [message.data for message in messages] == [
        ('{"time":"' + AT + '","msg":"🚨 Grüße"}').encode()
    ]


async def test_ingest_other_tenant(env: Env) -> None:
    owner = await create_tenant(env.client)
    other = await create_tenant(env.client)
    headers = await tenant_headers(env.client, other)
    response = await env.client.post(f"/v1/tenants/{owner}/events", headers=headers, json={"time": AT, "n": 1})
    assert response.status_code == 404
    missing = await env.client.post("/v1/tenants/no-such-tenant/events", headers=ADMIN, json={"time": AT, "n": 1})
    assert missing.status_code == 404
    unauthenticated = await env.client.post(f"/v1/tenants/{owner}/events", json={"time": AT, "n": 1})
    assert unauthenticated.status_code == 401


async def test_ingest_without_jetstream(store: PostgresStore) -> None:
    app = create_app(store, admin_token=ADMIN_TOKEN)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        tenant = await create_tenant(client)
        response = await client.post(f"/v1/tenants/{tenant}/events", headers=ADMIN, json={"time": AT, "n": 1})
        metrics = await client.get("/metrics", headers=ADMIN)
    assert response.status_code == 503
    assert "no JetStream connection" in response.json()["detail"]
    assert metrics.status_code == 503


async def test_ingest_jetstream_closed(env: Env) -> None:
    tenant = await create_tenant(env.client)
    await env.nc.close()
    response = await env.client.post(f"/v1/tenants/{tenant}/events", headers=ADMIN, json={"time": AT, "n": 1})
    assert response.status_code == 503
    assert "retry later" in response.json()["detail"]


async def test_metrics_endpoint(env: Env) -> None:
    env.metrics.record_restart("acme", "main")
    response = await env.client.get("/metrics", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'alertwarden_evaluator_restarts_total{rule_group="main",tenant="acme"} 1.0' in response.text

    assert (await env.client.get("/metrics")).status_code == 401
    tenant = await create_tenant(env.client)
    tenant_response = await env.client.get("/metrics", headers=await tenant_headers(env.client, tenant))
    assert tenant_response.status_code == 403


async def test_metrics_content_type(env: Env) -> None:
    response = await env.client.get("/metrics", headers=ADMIN)

    # docs/api.md names this header; prometheus_client 0.26 sends it.
    assert response.headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"
