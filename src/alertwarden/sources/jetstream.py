"""NATS JetStream input and publisher: one tenant's log and event subjects, read by stream sequence.

A record's offset is its stream sequence, so a checkpoint offset is the sequence of the first
message not yet applied, and `JetStreamInput(..., start_sequence=offset)` resumes exactly there.
The input reads through an ephemeral pull consumer without acknowledgements: the checkpoint,
not the server, stores the position, so the consumer can be dropped and re-created at any time.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import UTC, datetime
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Self

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from alertwarden.errors import ConfigError, EventError
from alertwarden.events import Signal, SkipReason
from alertwarden.logs import get_logger
from alertwarden.sources.pull import MSG_ID_HEADER, PullError, PullFetcher, accept_messages, parse_reply

log = get_logger(__name__)

TENANT_PLACEHOLDER = "{tenant}"
MAX_TENANT_LENGTH = 64
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576
"""Largest accepted message payload (1 MiB, the default `max_payload` of nats-server)."""

SIGNAL_CACHE_SUBJECTS = 4096
"""Subjects whose signal an input remembers; matching a subject against patterns costs more."""
_WARNED_UNFILTERED: set[str] = set()
"""Inputs already warned that the server ignores filter_subjects: once per process, because a
worker restart or rule change creates a new input."""
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 30.0

_FORBIDDEN_TOKEN_CHARS = re.compile(r"[.*>\s]")


@dataclass(frozen=True, slots=True)
class JetStreamSettings:
    """Connection, stream and consumer settings of the JetStream input.

    Each subject pattern contains `{tenant}` as one whole token, which the tenant id replaces.
    """

    url: str = "nats://127.0.0.1:4222"
    stream: str = "ALERTWARDEN"
    logs_subject: str = "logs.{tenant}.>"
    events_subject: str = "events.{tenant}.>"
    max_age_s: float = 7 * 86400.0
    max_bytes: int = 10 * 1024**3
    duplicate_window_s: float = 120.0
    fetch_batch: int = 256
    fetch_timeout_s: float = 5.0
    consumer_inactive_s: float = 300.0
    """Idle time after which the server deletes an abandoned ephemeral consumer."""
    publish_token: str = "ingest"
    """Token that replaces the `>` or `*` wildcard of a pattern in the subject of a publish."""
    publish_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("logs_subject", "events_subject"):
            _check_pattern(name, getattr(self, name))
        if not self.stream or _FORBIDDEN_TOKEN_CHARS.search(self.stream):
            raise ConfigError(
                f"invalid stream name {self.stream!r}: use a non-empty name without '.', '*', '>' "
                "or whitespace"
            )
        _check_token("publish_token", self.publish_token)
        for name in (
            "max_age_s",
            "duplicate_window_s",
            "fetch_timeout_s",
            "consumer_inactive_s",
            "publish_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(
                    f"invalid {name} {getattr(self, name)!r}: use a number of seconds above 0"
                )
        for name in ("max_bytes", "fetch_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"invalid {name} {getattr(self, name)!r}: use an integer of at least 1"
                )

    def pattern(self, signal: Signal) -> str:
        if signal is Signal.LOGS:
            return self.logs_subject
        if signal is Signal.EVENTS:
            return self.events_subject
        raise ValueError(f"invalid signal {signal.value!r} for a subject: use logs or events")


def _check_token(name: str, value: str) -> None:
    if not value or _FORBIDDEN_TOKEN_CHARS.search(value):
        raise ConfigError(
            f"invalid {name} {value!r}: use a non-empty subject token without '.', '*', '>' or whitespace"
        )


def _check_pattern(name: str, pattern: str) -> None:
    tokens = pattern.split(".")
    if tokens.count(TENANT_PLACEHOLDER) != 1 or pattern.count(TENANT_PLACEHOLDER) != 1:
        raise ConfigError(
            f"invalid {name} {pattern!r}: it needs {TENANT_PLACEHOLDER} exactly once, as a whole token "
            "such as logs.{tenant}.>"
        )
    for index, token in enumerate(tokens):
        last = index == len(tokens) - 1
        if token in (TENANT_PLACEHOLDER, "*") or (token == ">" and last):
            continue
        if not token or _FORBIDDEN_TOKEN_CHARS.search(token):
            raise ConfigError(
                f"invalid {name} {pattern!r}: token {token!r} is not a subject token; '>' may only "
                "be the last token"
            )


# A tenant id becomes a NATS subject token, a metric label value, a key in every store and a URL
# path segment. ASCII letters, digits, '_' and '-' need no escaping in any of them. The first
# character excludes '_', which starts the "_other" label of unknown tenants, and '-', which a
# command line would read as an option.
TENANT_ID_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_TENANT_LENGTH - 1}}}")
TENANT_ID_RULE = (
    f"1-{MAX_TENANT_LENGTH} ASCII letters, digits, '_' or '-', starting with a letter or digit"
)


def validate_tenant(tenant: str, field: str = "tenant id") -> str:
    """Return `tenant` when it matches TENANT_ID_PATTERN; raise ConfigError naming `field` otherwise."""
    if not isinstance(tenant, str):
        raise ConfigError(f"invalid {field} {tenant!r}: use a string of {TENANT_ID_RULE}")
    if len(tenant) > MAX_TENANT_LENGTH:
        raise ConfigError(
            f"invalid {field} {tenant!r}: it has {len(tenant)} characters. Use {TENANT_ID_RULE}"
        )
    if TENANT_ID_PATTERN.fullmatch(tenant) is None:
        raise ConfigError(f"invalid {field} {tenant!r}: use {TENANT_ID_RULE}")
    return tenant


def tenant_subject(settings: JetStreamSettings, tenant: str, signal: Signal) -> str:
    """Return the subject pattern of one tenant and signal, such as `logs.acme.>`."""
    return settings.pattern(signal).replace(TENANT_PLACEHOLDER, validate_tenant(tenant))


def tenant_subjects(settings: JetStreamSettings, tenant: str) -> tuple[str, str]:
    """Return the logs and events subject patterns of one tenant."""
    return tenant_subject(settings, tenant, Signal.LOGS), tenant_subject(
        settings, tenant, Signal.EVENTS
    )


def tenant_of_subject(settings: JetStreamSettings, subject: str) -> str | None:
    """Return the tenant token of a concrete subject that one of the patterns matches, or None."""
    for signal in (Signal.LOGS, Signal.EVENTS):
        tokens = settings.pattern(signal).split(".")
        index = tokens.index(TENANT_PLACEHOLDER)
        tokens[index] = "*"
        if subject_matches(".".join(tokens), subject):
            return subject.split(".")[index]
    return None


def subject_matches(pattern: str, subject: str) -> bool:
    """Return True when the concrete `subject` matches `pattern` with NATS wildcards.

    A pattern also matches another pattern that it covers, such as `logs.>` and `logs.a.>`.
    """
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    for index, token in enumerate(pattern_tokens):
        if token == ">":
            return len(subject_tokens) > index
        if index >= len(subject_tokens):
            return False
        if token != "*" and token != subject_tokens[index]:
            return False
    return len(subject_tokens) == len(pattern_tokens)


async def ensure_stream(
    js: JetStreamContext, settings: JetStreamSettings, subjects: Iterable[str]
) -> list[str]:
    """Create the stream with `subjects`, or add those that an existing stream does not cover.

    Build `subjects` with `tenant_subjects`, which validates the tenant id. A new stream uses
    file storage, limits retention and the max age, max bytes and duplicate window of
    `settings`. The limits of an existing stream are left as they are. Returns the stream's
    subjects afterwards.
    """
    requested = list(dict.fromkeys(subjects))
    for subject in requested:
        if "" in subject.split(".") or re.search(r"\s", subject):
            raise ConfigError(
                f"invalid subject {subject!r}: use non-empty tokens without whitespace"
            )

    try:
        info = await js.stream_info(settings.stream)
    except nats.js.errors.NotFoundError:
        config = StreamConfig(
            name=settings.stream,
            subjects=requested,
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            max_age=settings.max_age_s,
            max_bytes=settings.max_bytes,
            duplicate_window=settings.duplicate_window_s,
        )
        created = await js.add_stream(config=config)
        log.info("jetstream_stream_created", stream=settings.stream, subjects=requested)
        return list(created.config.subjects or [])

    existing = list(info.config.subjects or [])
    missing = [s for s in requested if not any(subject_matches(have, s) for have in existing)]
    if not missing:
        return existing
    info.config.subjects = existing + missing
    updated = await js.update_stream(config=info.config)
    log.info("jetstream_stream_subjects_added", stream=settings.stream, added=missing)
    return list(updated.config.subjects or [])


class StreamMessage(NamedTuple):
    """One JetStream message of the tenant.

    `offset` is the stream sequence and `end_offset` the sequence after it, the checkpoint
    offset once this message is applied. `msg_id` is the `Nats-Msg-Id` header, or None.
    `stored_at` is when the server stored the message, in UTC seconds: it is kept with the
    message, so a replay gets the same arrival times as the first read.
    """

    offset: int
    end_offset: int
    subject: str
    signal: Signal
    data: bytes
    msg_id: str | None
    stored_at: float


class OversizedMessage(NamedTuple):
    """A message over the input's size limit; its payload is not kept."""

    offset: int
    end_offset: int
    subject: str
    signal: Signal
    length_bytes: int
    max_message_bytes: int
    stored_at: float

    def error(self) -> EventError:
        """Return the skip error the engine counts for this message."""
        return EventError(
            SkipReason.OVERSIZED,
            f"message at stream sequence {self.offset} on {self.subject} is {self.length_bytes} bytes "
            f"long, over the limit of {self.max_message_bytes} bytes; raise the limit or split the record",
        )


StreamRecord = StreamMessage | OversizedMessage


class JetStreamInput:
    """One tenant's log and event subjects, read in stream order from a start sequence.

    `signals` chooses the subjects read: logs, events or both. With one of them the consumer
    filters on the server on every nats-server version.
    `start_sequence` is a checkpoint offset: the first message delivered is the tenant's first
    message at or after it. With 0 or 1 the read starts at the first message stored at or after
    `start_time` (UTC seconds), or at the start of the stream without one. `next_sequence`
    is the sequence after the last message received, of any subject, and a re-created consumer
    starts there. Messages of other subjects are dropped on receipt and never returned, even
    when the server ignores the consumer's subject filter.
    """

    def __init__(
        self,
        js: JetStreamContext,
        settings: JetStreamSettings,
        tenant: str,
        start_sequence: int = 0,
        *,
        start_time: float | None = None,
        signals: Iterable[Signal] = (Signal.LOGS, Signal.EVENTS),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if start_sequence < 0:
            raise ValueError(f"invalid start_sequence {start_sequence}: use 0 or a stream sequence")
        if max_message_bytes < 1:
            raise ValueError(f"invalid max_message_bytes {max_message_bytes}: use at least 1")
        self.js = js
        self.settings = settings
        self.tenant = validate_tenant(tenant)
        self.name = f"jetstream:{settings.stream}:{tenant}"
        self.max_message_bytes = max_message_bytes
        self.next_sequence = max(start_sequence, 1)
        self.start_time = start_time
        requested = {Signal.LOGS, Signal.EVENTS} if Signal.ANY in set(signals) else set(signals)
        self.subjects = {
            signal: tenant_subject(settings, tenant, signal)
            for signal in (Signal.LOGS, Signal.EVENTS)
            if signal in requested
        }
        if not self.subjects:
            raise ValueError("invalid signals: give at least one of logs, events or any")
        self.oversized_messages = 0
        self.other_subject_messages = 0
        """Messages of subjects outside the tenant's, received only when the server ignores filters."""
        self.consumer_restarts = 0
        self._puller: PullFetcher | None = None
        self._signal_cache: dict[str, Signal | None] = {}
        self._consumer: str | None = None
        self._retry_s = RETRY_INITIAL_S

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Unsubscribe and delete the consumer. If the delete fails, the server removes it when idle."""
        puller, consumer = self._puller, self._consumer
        self._puller = None
        self._consumer = None
        if puller is not None:
            try:
                await puller.stop()
            except nats.errors.Error as error:
                log.debug("jetstream_unsubscribe_failed", input=self.name, error=str(error))
        if consumer is not None:
            try:
                await self.js.delete_consumer(self.settings.stream, consumer)
            except (TimeoutError, nats.errors.Error) as error:
                log.debug(
                    "jetstream_consumer_delete_failed",
                    input=self.name,
                    consumer=consumer,
                    error=str(error),
                )

    async def open(self) -> int:
        """Create the consumer now and return `next_sequence`, the first sequence it reads."""
        await self._open()
        return self.next_sequence

    async def records(self) -> AsyncIterator[StreamRecord]:
        """Yield the tenant's messages without end, waiting for new ones."""
        while True:
            for record in await self.fetch_batch():
                yield record

    async def fetch_batch(self) -> list[StreamRecord]:
        """Return the next messages in stream order, or an empty list after the fetch timeout.

        A failed fetch (server restart, lost consumer, reconnect) is logged, and the consumer
        is re-created at `next_sequence` after a delay that doubles on each failure in a row,
        up to RETRY_MAX_S. This repeats within the call, so an empty list always means that
        the input has caught up. A closed connection raises ConnectionClosedError.
        """
        while True:
            try:
                puller = await self._open()
                messages = await puller.fetch(self.settings.fetch_timeout_s)
                if not messages:
                    return []
            except TimeoutError:
                # Includes nats.errors.TimeoutError. No message arrived, which is also what a
                # fetch on a consumer that the server deleted looks like, so check that it exists.
                if await self._consumer_exists():
                    return []
                continue
            except nats.errors.ConnectionClosedError:
                raise
            except (nats.errors.Error, PullError) as error:
                await self._recover(error)
                continue

            self._retry_s = RETRY_INITIAL_S
            records = self._accept_all(messages)
            # A batch of only other tenants' messages is no sign of having caught up.
            if records:
                return records

    def _accept_all(self, messages: list[Msg]) -> list[StreamRecord]:
        """Turn a fetched batch into records, as `_accept` does for each message.

        accept_messages (pull.py, compiled) handles the common case and calls `_accept` for the rest.
        """
        return accept_messages(self, messages, StreamMessage)

    def _accept(self, message: Msg) -> StreamRecord | None:
        delivery = parse_reply(message.reply)
        if delivery is None:
            log.warning(
                "jetstream_message_dropped",
                input=self.name,
                reply=message.reply,
                reason="the reply subject is not a JetStream delivery subject",
            )
            return None
        sequence, stored_at = delivery
        # A consumer delivers in stream order, so a lower sequence can only be a message that a
        # replaced consumer had already sent.
        if sequence < self.next_sequence:
            return None
        self.next_sequence = sequence + 1

        signal = self._signal_of(message.subject)
        if signal is None:
            self.other_subject_messages += 1
            return None
        if len(message.data) > self.max_message_bytes:
            self.oversized_messages += 1
            return OversizedMessage(
                sequence,
                sequence + 1,
                message.subject,
                signal,
                len(message.data),
                self.max_message_bytes,
                stored_at,
            )
        headers = message.headers or {}
        return StreamMessage(
            sequence,
            sequence + 1,
            message.subject,
            signal,
            message.data,
            headers.get(MSG_ID_HEADER),
            stored_at,
        )

    def _signal_of(self, subject: str) -> Signal | None:
        cache = self._signal_cache
        if subject in cache:
            return cache[subject]
        found = None
        for signal, pattern in self.subjects.items():
            if subject_matches(pattern, subject):
                found = signal
                break
        if len(cache) >= SIGNAL_CACHE_SUBJECTS:
            # Publishers choose subjects, so the cache starts over rather than grow.
            cache.clear()
        cache[subject] = found
        return found

    async def _open(self) -> PullFetcher:
        if self._puller is not None:
            return self._puller

        patterns = list(self.subjects.values())
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            inactive_threshold=self.settings.consumer_inactive_s,
        )
        if len(patterns) == 1:
            # One filter subject works on every nats-server version; filter_subjects needs 2.10.
            config.filter_subject = patterns[0]
        else:
            config.filter_subjects = patterns
        by_time = self.next_sequence <= 1 and self.start_time is not None
        if by_time:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.fromtimestamp(self.start_time or 0.0, UTC)
        elif self.next_sequence <= 1:
            config.deliver_policy = DeliverPolicy.ALL
        else:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self.next_sequence

        info = await self.js.add_consumer(self.settings.stream, config=config)
        if len(patterns) > 1 and not info.config.filter_subjects:
            # nats-server before 2.10 (seen with 2.9.10) ignores filter_subjects and sends the
            # whole stream. _accept drops the other subjects, so the counts are the same.
            # NOTE: such an input then reads every tenant's messages, so a busy tenant delays
            # it as much as its own messages would. Use nats-server 2.10 or later, or rules of
            # one signal (logs or events) per rule group, which filter with one subject.
            if self.name not in _WARNED_UNFILTERED:
                log.warning(
                    "jetstream_filter_ignored",
                    input=self.name,
                    note="the server ignored filter_subjects, so this input reads the whole stream",
                    subjects=patterns,
                    fix="upgrade nats-server to 2.10 or later, or give the rule group's rules one signal",
                )
                _WARNED_UNFILTERED.add(self.name)
        if by_time and info.delivered is not None and info.delivered.stream_seq is not None:
            # A new consumer reports the sequence before its first message as delivered, which
            # turns the start time into a sequence that a checkpoint can store.
            self.next_sequence = max(self.next_sequence, info.delivered.stream_seq + 1)
        self._consumer = info.name
        # NOTE: the connection and API prefix are private attributes of nats-py's
        # JetStreamContext (checked with nats-py 2.16). They are used because the public fetch
        # costs one event loop turn per message (see alertwarden.sources.pull).
        puller = PullFetcher(
            self.js._nc, self.js._prefix, self.settings.stream, info.name, self.settings.fetch_batch
        )
        await puller.start()
        self._puller = puller
        await self._warn_on_gap()
        return puller

    async def _warn_on_gap(self) -> None:
        if self.next_sequence <= 1:
            return
        state = (await self.js.stream_info(self.settings.stream)).state
        if state.messages > 0 and state.first_seq > self.next_sequence:
            log.warning(
                "jetstream_messages_expired",
                input=self.name,
                note="messages expired before they were read; resuming at the stream's first message",
                expected_sequence=self.next_sequence,
                first_sequence=state.first_seq,
            )
        elif self.next_sequence > state.last_seq + 1:
            log.warning(
                "jetstream_start_past_stream_end",
                input=self.name,
                note="if the stream was re-created, reset the checkpoint to read its messages",
                expected_sequence=self.next_sequence,
                last_sequence=state.last_seq,
            )

    async def _consumer_exists(self) -> bool:
        """Return False, after dropping the consumer, when the server no longer has it."""
        if self._puller is None or self._consumer is None:
            return False
        try:
            await self.js.consumer_info(self.settings.stream, self._consumer)
        except (TimeoutError, nats.errors.Error) as error:
            await self._recover(error)
            return False
        return True

    async def _recover(self, error: BaseException) -> None:
        log.warning(
            "jetstream_fetch_failed",
            input=self.name,
            note="re-creating the consumer",
            next_sequence=self.next_sequence,
            error=repr(error),
            retry_in_s=self._retry_s,
        )
        await self.close()
        self.consumer_restarts += 1
        await asyncio.sleep(self._retry_s)
        self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)


class PublishedEvent(NamedTuple):
    """Where one published event was stored, and whether JetStream dropped it as a repeat."""

    event_id: str | None
    sequence: int
    duplicate: bool


def publish_subject(settings: JetStreamSettings, tenant: str, signal: Signal) -> str:
    """Return the concrete subject that events of one tenant and signal are published to."""
    tokens = tenant_subject(settings, tenant, signal).split(".")
    return ".".join(settings.publish_token if token in ("*", ">") else token for token in tokens)


PUBLISH_WINDOW = 256
"""Maximum messages of one publish_events call awaiting their JetStream acknowledgement."""

EXPECTED_STREAM_HEADER = "Nats-Expected-Stream"
"""Header that `publish_events` adds (through nats-py's `stream=`), so only this stream stores it."""


def message_id(tenant: str, signal: Signal, event_id: str) -> str:
    """Return the `Nats-Msg-Id` of an event: tenant, signal and a digest of the event's id.

    JetStream drops a repeated message id across the whole stream, so the bare event id would
    let one tenant's event hide another tenant's event of the same id. The digest keeps ids that
    differ only in spaces or control characters apart, which a header value would not.
    """
    digest = hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"{tenant}.{signal.value}.{digest}"


def published_size(
    settings: JetStreamSettings, tenant: str, signal: Signal, event_id: str | None, payload: bytes
) -> int:
    """Return the bytes that nats-server compares with its max_payload for one publish_events message.

    The server counts the header block too, and closes the connection of a client that sends a
    larger message, so callers check this before publishing.
    """
    headers = {EXPECTED_STREAM_HEADER: settings.stream}
    if event_id:
        headers[MSG_ID_HEADER] = message_id(tenant, signal, event_id)
    # The header block as nats-py writes it: a version line, one line per header, a blank line.
    block = "NATS/1.0\r\n" + "".join(f"{key}: {value}\r\n" for key, value in headers.items()) + "\r\n"
    return len(block.encode()) + len(payload)


async def publish_events(
    js: JetStreamContext,
    settings: JetStreamSettings,
    tenant: str,
    signal: Signal,
    events: Sequence[tuple[str | None, bytes]],
) -> list[PublishedEvent]:
    """Publish `(event id, payload)` pairs in order and return after JetStream stored each one.

    An event id becomes the `Nats-Msg-Id` header (see message_id), so the stream drops a repeat
    of the same id, tenant and signal within its duplicate window. That event is returned with
    `duplicate=True` and the sequence of the first copy. An event without id is always stored.

    Up to PUBLISH_WINDOW messages are in flight before their acknowledgements are awaited. One
    round trip per event made a request of 1000 events wait for 1000 turns of the event loop,
    each of which a busy evaluator could prolong. Raises TimeoutError when the acknowledgements
    of a window take longer than `publish_timeout_s`.
    """
    subject = publish_subject(settings, tenant, signal)
    results: list[PublishedEvent] = []
    for start in range(0, len(events), PUBLISH_WINDOW):
        window = events[start : start + PUBLISH_WINDOW]
        pending: list[asyncio.Future[Any]] = []
        try:
            # Each call queues its message on the connection before it returns, so JetStream
            # receives and stores them in order.
            for event_id, data in window:
                headers: dict[str, Any] | None = (
                    {MSG_ID_HEADER: message_id(tenant, signal, event_id)} if event_id else None
                )
                pending.append(
                    await js.publish_async(subject, data, stream=settings.stream, headers=headers)
                )
            async with asyncio.timeout(settings.publish_timeout_s):
                acks = await asyncio.gather(*pending)
        finally:
            # Frees nats-py's in-flight slots of acknowledgements that will not be awaited.
            for future in pending:
                future.cancel()
        for (event_id, _), ack in zip(window, acks, strict=True):
            results.append(PublishedEvent(event_id, ack.seq, bool(ack.duplicate)))
    return results
