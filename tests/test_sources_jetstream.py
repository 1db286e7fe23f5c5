"""JetStream input and publisher against the NATS server on 127.0.0.1:4222.

Each test uses its own stream and subject prefix and deletes the stream at the end, so tests
never see each other's messages and leave nothing behind on the shared server.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType

from alertwarden.errors import ConfigError
from alertwarden.events import Signal, SkipReason
from alertwarden.sources.pull import parse_reply
from alertwarden.sources.jetstream import (
    MSG_ID_HEADER,
    JetStreamInput,
    JetStreamSettings,
    OversizedMessage,
    StreamMessage,
    StreamRecord,
    ensure_stream,
    message_id,
    publish_events,
    publish_subject,
    published_size,
    subject_matches,
    tenant_subjects,
    validate_tenant,
)

NATS_URL = "nats://127.0.0.1:4222"


@dataclass
class Server:
    nc: Client
    js: JetStreamContext
    settings: JetStreamSettings


@pytest.fixture
async def server() -> AsyncIterator[Server]:
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
        fetch_batch=4,
        fetch_timeout_s=0.5,
    )
    try:
        yield Server(nc, js, settings)
    finally:
        try:
            await js.delete_stream(settings.stream)
        except nats.errors.Error:
            pass  # The test failed before it created the stream.
        await nc.close()


async def publish(server: Server, tenant: str, signal: Signal, payloads: list[bytes]) -> list[int]:
    events = [(None, payload) for payload in payloads]
    published = await publish_events(server.js, server.settings, tenant, signal, events)
    return [event.sequence for event in published]


async def read_all(source: JetStreamInput) -> list[StreamRecord]:
    """Fetch until a fetch times out with nothing, which means the input has caught up."""
    records: list[StreamRecord] = []
    while batch := await source.fetch_batch():
        records.extend(batch)
    return records


async def read_count(source: JetStreamInput, count: int) -> list[StreamRecord]:
    records: list[StreamRecord] = []
    while len(records) < count:
        batch = await source.fetch_batch()
        assert batch, f"input caught up after {len(records)} records, expected {count}"
        records.extend(batch)
    return records


TENANT_RULE = "1-64 ASCII letters, digits, '_' or '-', starting with a letter or digit"


@pytest.mark.parametrize("tenant", ["acme-1_prod", "A", "0", "9lives", "a-", "b_", "x" * 64])
def test_validate_tenant_accepts(tenant: str) -> None:
    assert validate_tenant(tenant) == tenant


@pytest.mark.parametrize(
    "tenant",
    [
        "", "a.b", "a*", ">", "a b", "a\tb", "a\x00b", "acme\n", "café", "\uff21cme", "a\u0661",
        "a:b", "a/b", "a@b", "a+b", "-acme", "_acme", "a\u200bb",
    ],
)
def test_validate_tenant_rejects(tenant: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_tenant(tenant)
    assert str(caught.value) == f"invalid tenant id {tenant!r}: use {TENANT_RULE}"


def test_validate_tenant_rejects_long() -> None:
    tenant = "x" * 65
    with pytest.raises(ConfigError) as caught:
        validate_tenant(tenant)
    assert str(caught.value) == (
        f"invalid tenant id {tenant!r}: it has 65 characters. Use {TENANT_RULE}"
    )


def test_validate_tenant_names_field() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_tenant("café", field="--tenant")
    assert str(caught.value) == f"invalid --tenant 'café': use {TENANT_RULE}"


def test_validate_tenant_rejects_non_string() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_tenant(7)  # type: ignore[arg-type]
    assert str(caught.value).startswith("invalid tenant id 7: use a string of 1-64 ASCII letters")


def test_tenant_subjects_rejects_bad_tenant() -> None:
    with pytest.raises(ConfigError, match=r"'a\.b'"):
        tenant_subjects(JetStreamSettings(), "a.b")


def test_settings_reject_pattern_without_tenant() -> None:
    with pytest.raises(ConfigError, match="logs_subject"):
        JetStreamSettings(logs_subject="logs.>")


def test_settings_reject_zero_batch() -> None:
    with pytest.raises(ConfigError, match="fetch_batch"):
        JetStreamSettings(fetch_batch=0)


def test_subject_matches_wildcards() -> None:
    assert subject_matches("logs.a.>", "logs.a.x.y")
    assert not subject_matches("logs.a.>", "logs.a")
    assert not subject_matches("logs.a.>", "logs.ab.x")
    assert subject_matches("logs.*.x", "logs.a.x")
    assert not subject_matches("logs.*.x", "logs.a.x.y")
    assert subject_matches("logs.>", "logs.a.>")


def test_publish_subject_replaces_wildcard() -> None:
    settings = JetStreamSettings()
    assert publish_subject(settings, "acme", Signal.LOGS) == "logs.acme.ingest"
    assert publish_subject(settings, "acme", Signal.EVENTS) == "events.acme.ingest"


async def test_ensure_stream_creates(server: Server) -> None:
    subjects = list(tenant_subjects(server.settings, "acme"))

    result = await ensure_stream(server.js, server.settings, subjects)

    info = await server.js.stream_info(server.settings.stream)
    assert sorted(result) == sorted(subjects)
    assert sorted(info.config.subjects or []) == sorted(subjects)
    assert info.config.storage == StorageType.FILE
    assert info.config.retention == RetentionPolicy.LIMITS
    assert info.config.max_age == 600
    assert info.config.max_bytes == 64 * 1024 * 1024


async def test_ensure_stream_extends(server: Server) -> None:
    first = list(tenant_subjects(server.settings, "acme"))
    second = list(tenant_subjects(server.settings, "globex"))
    await ensure_stream(server.js, server.settings, first)

    await ensure_stream(server.js, server.settings, second)
    again = await ensure_stream(server.js, server.settings, first + second)

    info = await server.js.stream_info(server.settings.stream)
    assert sorted(info.config.subjects or []) == sorted(first + second)
    assert sorted(again) == sorted(first + second)


async def test_input_reads_from_start(server: Server) -> None:
    await ensure_stream(server.js, server.settings, tenant_subjects(server.settings, "acme"))
    logs = [b'{"n": %d}' % i for i in range(6)]
    events = [b'{"e": %d}' % i for i in range(3)]
    log_seqs = await publish(server, "acme", Signal.LOGS, logs)
    event_seqs = await publish(server, "acme", Signal.EVENTS, events)

    async with JetStreamInput(server.js, server.settings, "acme", 0) as source:
        records = await read_all(source)

    assert [r.offset for r in records] == log_seqs + event_seqs
    assert [r.offset for r in records] == list(range(1, 10))
    assert [r.end_offset for r in records] == list(range(2, 11))
    assert all(isinstance(r, StreamMessage) for r in records)
    assert [r.data for r in records if isinstance(r, StreamMessage)] == logs + events
    assert [r.signal for r in records] == [Signal.LOGS] * 6 + [Signal.EVENTS] * 3
    assert records[0].subject == publish_subject(server.settings, "acme", Signal.LOGS)
    assert source.next_sequence == 10


async def test_input_reads_from_middle(server: Server) -> None:
    await ensure_stream(server.js, server.settings, tenant_subjects(server.settings, "acme"))
    payloads = [b'{"n": %d}' % i for i in range(10)]
    sequences = await publish(server, "acme", Signal.LOGS, payloads)

    async with JetStreamInput(server.js, server.settings, "acme", sequences[4]) as source:
        records = await read_all(source)

    assert [r.offset for r in records] == sequences[4:]
    assert [r.data for r in records if isinstance(r, StreamMessage)] == payloads[4:]


async def test_input_isolates_tenants(server: Server) -> None:
    for tenant in ("acme", "globex"):
        await ensure_stream(server.js, server.settings, tenant_subjects(server.settings, tenant))
    payloads = [b'{"same": %d}' % i for i in range(5)]
    acme_seqs: list[int] = []
    for payload in payloads:
        acme_seqs += await publish(server, "acme", Signal.LOGS, [payload])
        await publish(server, "globex", Signal.LOGS, [payload])
        await publish(server, "globex", Signal.EVENTS, [payload])

    async with JetStreamInput(server.js, server.settings, "acme", 0) as source:
        records = await read_all(source)

    assert [r.offset for r in records] == acme_seqs
    assert all(".acme." in r.subject for r in records)
    assert [r.data for r in records if isinstance(r, StreamMessage)] == payloads


async def test_publish_dedups_msg_id(server: Server) -> None:
    await ensure_stream(server.js, server.settings, tenant_subjects(server.settings, "acme"))

    first = await publish_events(
        server.js, server.settings, "acme", Signal.EVENTS, [("ev-1", b"{}"), (None, b"{}")]
    )
    second = await publish_events(
        server.js, server.settings, "acme", Signal.EVENTS, [("ev-1", b"{}"), (None, b"{}")]
    )

    assert [event.duplicate for event in first] == [False, False]
    assert [event.duplicate for event in second] == [True, False]
    assert second[0].sequence == first[0].sequence
    info = await server.js.stream_info(server.settings.stream)
    assert info.state.messages == 3
    async with JetStreamInput(server.js, server.settings, "acme", 0) as source:
        records = await read_all(source)
    msg_ids = [r.msg_id for r in records if isinstance(r, StreamMessage)]
    assert msg_ids == [message_id("acme", Signal.EVENTS, "ev-1"), None, None]


async def test_publish_many_in_order(server: Server) -> None:
    await ensure_stream(server.js, server.settings, tenant_subjects(server.settings, "acme"))
    # More than one window of in-flight messages, with a repeated id in the second window.
    events: list[tuple[str | None, bytes]] = [(f"ev-{n}", b"%d" % n) for n in range(600)]
    events[400] = ("ev-3", b"again")

    published = await publish_events(server.js, server.settings, "acme", Signal.LOGS, events)

    assert [event.event_id for event in published] == [event_id for event_id, _ in events]
    assert [event.duplicate for event in published].count(True) == 1
    assert published[400].duplicate
    assert published[400].sequence == published[3].sequence
    stored = [event.sequence for event in published if not event.duplicate]
    assert stored == list(range(1, 600))


async def test_publish_without_ack_times_out(server: Server) -> None:
    # A core subscriber on a subject that no stream stores: the message is delivered, but
    # nothing acknowledges it.
    settings = dataclasses.replace(server.settings, publish_timeout_s=0.5)
    subject = publish_subject(settings, "acme", Signal.LOGS)
    silent = await server.nc.subscribe(subject)
    try:
        with pytest.raises(TimeoutError):
            await publish_events(server.js, settings, "acme", Signal.LOGS, [("ev-1", b"{}")])
    finally:
        await silent.unsubscribe()

    # The in-flight slot of the message that timed out was freed.
    assert server.js.publish_async_pending() == 0


async def test_input_reads_msg_id_header(server: Server) -> None:
    await ensure_stream(server.js, server.settings, tenant_subjects(server.settings, "acme"))
    subject = publish_subject(server.settings, "acme", Signal.LOGS)
    await server.js.publish(subject, b"{}", headers={MSG_ID_HEADER: "abc"})

    async with JetStreamInput(server.js, server.settings, "acme", 0) as source:
        records = await read_all(source)

    assert len(records) == 1
    assert isinstance(records[0], StreamMessage)
    assert records[0].msg_id == "abc"


async def test_input_skips_oversized(server: Server) -> None:
    await ensure_stream(server.js, server.settings, tenant_subjects(server.settings, "acme"))
    payloads = [b"a" * 10, b"b" * 101, b"c" * 100]
    sequences = await publish(server, "acme", Signal.LOGS, payloads)

    async with JetStreamInput(
        server.js, server.settings, "acme", 0, max_message_bytes=100
    ) as source:
        records = await read_all(source)

    assert [r.offset for r in records] == sequences
    assert isinstance(records[0], StreamMessage)
    assert isinstance(records[2], StreamMessage)
    oversized = records[1]
    assert isinstance(oversized, OversizedMessage)
    assert oversized.length_bytes == 101
    assert oversized.error().reason == SkipReason.OVERSIZED
    assert str(sequences[1]) in str(oversized.error())
    assert source.oversized_messages == 1


async def test_input_reopens_at_stored_sequence(server: Server) -> None:
    await ensure_stream(server.js, server.settings, tenant_subjects(server.settings, "acme"))
    payloads = [b'{"n": %d}' % i for i in range(11)]
    sequences = await publish(server, "acme", Signal.LOGS, payloads)

    # fetch_batch is 4, so the first input stops in the middle of its second batch.
    async with JetStreamInput(server.js, server.settings, "acme", 0) as source:
        part = (await read_count(source, 6))[:6]
    stored = part[-1].end_offset
    later = await publish(server, "acme", Signal.EVENTS, [b'{"late": 1}'])

    async with JetStreamInput(server.js, server.settings, "acme", stored) as source:
        rest = await read_all(source)

    assert [r.offset for r in part] == sequences[:6]
    assert [r.offset for r in rest] == sequences[6:] + later
    assert [r.data for r in rest if isinstance(r, StreamMessage)] == payloads[6:] + [b'{"late": 1}']


async def test_input_recreates_lost_consumer(server: Server) -> None:
    await ensure_stream(server.js, server.settings, tenant_subjects(server.settings, "acme"))
    payloads = [b'{"n": %d}' % i for i in range(8)]
    sequences = await publish(server, "acme", Signal.LOGS, payloads)

    async with JetStreamInput(server.js, server.settings, "acme", 0) as source:
        # A fetch returns what has arrived so far, which may be less than one whole batch.
        first = await source.fetch_batch()
        while len(first) < 4:
            first += await source.fetch_batch()
        # A server restart drops ephemeral consumers; deleting it has the same effect here.
        assert source._consumer is not None
        await server.js.delete_consumer(server.settings.stream, source._consumer)
        rest = await read_all(source)
        restarts = source.consumer_restarts

    assert [r.offset for r in first] == sequences[:4]
    assert [r.offset for r in rest] == sequences[4:]
    assert restarts >= 1


async def test_input_records_iterates(server: Server) -> None:
    await ensure_stream(server.js, server.settings, tenant_subjects(server.settings, "acme"))
    payloads = [b'{"n": %d}' % i for i in range(6)]
    sequences = await publish(server, "acme", Signal.EVENTS, payloads)

    received: list[StreamRecord] = []
    async with JetStreamInput(server.js, server.settings, "acme", sequences[1]) as source:
        records = source.records()
        async for record in records:
            received.append(record)
            if len(received) == 5:
                break
        await records.aclose()

    assert [r.offset for r in received] == sequences[1:]
    assert all(r.signal is Signal.EVENTS for r in received)


async def test_input_past_end_waits(server: Server) -> None:
    await ensure_stream(server.js, server.settings, tenant_subjects(server.settings, "acme"))
    await publish(server, "acme", Signal.LOGS, [b"{}", b"{}"])

    async with JetStreamInput(server.js, server.settings, "acme", 4) as source:
        before = await source.fetch_batch()
        sequences = await publish(server, "acme", Signal.LOGS, [b"3", b"4", b"5"])
        after = await read_all(source)

    assert before == []
    assert [r.offset for r in after] == [4, 5]
    assert sequences == [3, 4, 5]


async def test_input_skips_other_tenant_batches(server: Server) -> None:
    for tenant in ("acme", "globex"):
        await ensure_stream(server.js, server.settings, tenant_subjects(server.settings, tenant))
    await publish(server, "globex", Signal.LOGS, [b"{}"] * 10)
    sequences = await publish(server, "acme", Signal.LOGS, [b'{"mine": 1}'])

    async with JetStreamInput(server.js, server.settings, "acme", 0) as source:
        records = await read_all(source)

    assert [r.offset for r in records] == sequences
    assert sequences == [11]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("$JS.ACK.S.C.1.42.7.1796425056287171514.98", (42, 1796425056.2871716)),
        ("$JS.ACK.hub.acct.S.C.1.43.8.1796425056000000000.0.rand", (43, 1796425056.0)),
    ],
)
def test_parse_reply_forms(reply: str, expected: tuple[int, float]) -> None:
    delivery = parse_reply(reply)
    assert delivery is not None
    assert delivery.stream_sequence == expected[0]
    assert delivery.stored_at == pytest.approx(expected[1], abs=1e-6)


@pytest.mark.parametrize("reply", [None, "", "_INBOX.abc", "$JS.ACK.S.C.1.x.7.9.0", "$JS.API.X.1.2.3.4.5.6"])
def test_parse_reply_rejects_other_subjects(reply: str | None) -> None:
    assert parse_reply(reply) is None


# ------------------------------------------------------------ batch acceptance, no server


def delivered(subject: str, reply: str | None, data: bytes = b"{}", msg_id: str | None = None) -> Msg:
    headers = {MSG_ID_HEADER: msg_id} if msg_id is not None else None
    return Msg(_client=None, subject=subject, reply=reply, data=data, headers=headers)  # type: ignore[arg-type]


def ack(sequence: int, nanoseconds: int = 1_700_000_000_500_000_000) -> str:
    return f"$JS.ACK.AW.c1.1.{sequence}.{sequence}.{nanoseconds}.0"


def offline_input(max_message_bytes: int = 64) -> JetStreamInput:
    settings = JetStreamSettings(logs_subject="p.logs.{tenant}.>", events_subject="p.events.{tenant}.>")
    return JetStreamInput(
        None,  # type: ignore[arg-type]
        settings,
        "acme",
        5,
        signals=(Signal.LOGS, Signal.EVENTS),
        max_message_bytes=max_message_bytes,
    )


BATCH = [
    delivered("p.logs.acme.ingest", ack(5)),
    delivered("p.logs.acme.ingest", ack(6), msg_id="ev-6"),
    # A consumer re-created at an earlier sequence delivers this again.
    delivered("p.logs.acme.ingest", ack(4)),
    delivered("p.logs.acme.ingest", "$JS.ACK.hub.ACCHASH.AW.c1.1.7.7.1700000000700000000.0.rnd"),
    delivered("p.logs.globex.ingest", ack(8)),
    delivered("p.logs.acme.ingest", ack(9), data=b"x" * 65),
    delivered("p.events.acme.ingest", ack(10)),
    delivered("p.logs.acme.ingest", "_INBOX.abc"),
    # Published to the inbox without a reply subject.
    delivered("p.logs.acme.ingest", None),
    delivered("p.logs.acme.ingest", "$JS.ACK.AW.c1.1.x11.11.1700000001000000000.0"),
    delivered("p.logs.acme.ingest", ack(12), msg_id="ev-12"),
]


def test_accept_all_matches_accept_per_message() -> None:
    batched = offline_input()
    single = offline_input()

    records = batched._accept_all(BATCH)
    expected = [record for message in BATCH if (record := single._accept(message)) is not None]

    assert records == expected
    assert [type(record) for record in records] == [
        StreamMessage,
        StreamMessage,
        StreamMessage,
        OversizedMessage,
        StreamMessage,
        StreamMessage,
    ]
    assert [record.offset for record in records] == [5, 6, 7, 9, 10, 12]
    assert [record.signal for record in records] == [Signal.LOGS] * 4 + [Signal.EVENTS, Signal.LOGS]
    assert records[1].msg_id == "ev-6"
    assert records[5].msg_id == "ev-12"
    assert records[0].stored_at == pytest.approx(1_700_000_000.5)
    assert records[2].stored_at == pytest.approx(1_700_000_000.7)
    assert (batched.next_sequence, batched.other_subject_messages, batched.oversized_messages) == (13, 1, 1)
    assert (single.next_sequence, single.other_subject_messages, single.oversized_messages) == (13, 1, 1)


async def test_published_size_matches_server_limit(server: Server) -> None:
    await ensure_stream(server.js, server.settings, tenant_subjects(server.settings, "acme"))
    limit = server.nc.max_payload
    overhead = published_size(server.settings, "acme", Signal.LOGS, "ev-1", b"")
    fits = b"x" * (limit - overhead)
    assert published_size(server.settings, "acme", Signal.LOGS, "ev-1", fits) == limit

    published = await publish_events(server.js, server.settings, "acme", Signal.LOGS, [("ev-1", fits)])
    assert published[0].duplicate is False

    # One byte more and the server closes the connection that sent it, so this one is separate.
    other = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    try:
        settings = dataclasses.replace(server.settings, publish_timeout_s=1.0)
        with pytest.raises((nats.errors.Error, TimeoutError)):
            await publish_events(other.jetstream(), settings, "acme", Signal.LOGS, [("ev-2", fits + b"x")])
        assert other.is_closed
        assert "maximum payload" in str(other.last_error).lower()
    finally:
        await other.close()
