"""Pull requests to a JetStream consumer, with messages collected by a subscription callback.

nats-py's `PullSubscription.fetch` hands over each message of a batch through its own task,
which costs one event loop turn per message. With many consumers on one loop, a busy tenant's
evaluator then runs between every two messages of a quiet tenant's batch, and the quiet tenant
waits as long as the busy one. A callback subscription moves every buffered message in one turn,
so this module sends the JetStream pull requests itself and keeps what the callback collects.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from alertwarden.sources.timestamps import divide_epoch

STATUS_HEADER = "Status"
DESCRIPTION_HEADER = "Description"
# Statuses that end a pull request: 404 no messages, 408 request expired. 409 also ends it, but
# reports a problem (consumer deleted, too many waiting requests, leadership change).
_REQUEST_DONE = {"404", "408"}
_HEARTBEAT = "100"
_SUBSCRIPTION_MSGS_LIMIT = 1_000_000
_SUBSCRIPTION_BYTES_LIMIT = 512 * 1024 * 1024


class PullError(Exception):
    """The server ended a pull request with an error status, such as 409 Consumer Deleted."""


class Delivery(NamedTuple):
    """Stream sequence and stored time, read from the reply subject of a JetStream message."""

    stream_sequence: int
    stored_at: float


def parse_reply(reply: str | None) -> Delivery | None:
    """Return the stream sequence and stored time (UTC seconds) of a `$JS.ACK` reply subject.

    Handles the 9-token form `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
    seq>.<nanoseconds>.<pending>` and the 12-token form with domain and account hash. Returns
    None for any other subject, and for a message without one.
    """
    if not reply:
        return None
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    base = 2 if len(tokens) == 9 else 4
    try:
        sequence = int(tokens[base + 3])
        nanoseconds = int(tokens[base + 5])
    except (ValueError, IndexError):
        return None
    return Delivery(sequence, nanoseconds_to_seconds(nanoseconds))


def nanoseconds_to_seconds(nanoseconds: int) -> float:
    """Return JetStream's stored time in epoch nanoseconds as seconds.

    divide_epoch gives the same float in the compiled and the pure build. Otherwise a replay by
    the other build would store a transition 1 µs apart from the first run.
    """
    return divide_epoch(nanoseconds, 1_000_000_000)


class PullFetcher:
    """One outstanding pull request at a time on one consumer, buffering its messages.

    The buffer contains at most `batch` messages, the credits of one request. `fetch` returns the
    buffered messages at once, or waits up to `timeout_s` for the first of a new request.
    """

    def __init__(self, client: Client, api_prefix: str, stream: str, consumer: str, batch: int) -> None:
        self.client = client
        self.subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.batch = batch
        self._buffer: list[Msg] = []
        self._credits = 0
        self._error: str | None = None
        self._wake = asyncio.Event()
        self._subscription: Subscription | None = None
        self._inbox = client.new_inbox()

    async def start(self) -> None:
        self._subscription = await self.client.subscribe(
            self._inbox,
            cb=self._on_message,
            pending_msgs_limit=_SUBSCRIPTION_MSGS_LIMIT,
            pending_bytes_limit=_SUBSCRIPTION_BYTES_LIMIT,
        )

    async def stop(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.unsubscribe()

    async def _on_message(self, message: Msg) -> None:
        # Runs in the subscription's task without awaiting, so a burst is collected in one turn.
        status = message.headers.get(STATUS_HEADER) if message.headers else None
        if status is None:
            self._buffer.append(message)
            self._credits = max(0, self._credits - 1)
            self._wake.set()
            return
        if status == _HEARTBEAT:
            return
        self._credits = 0
        if status not in _REQUEST_DONE:
            description = message.headers.get(DESCRIPTION_HEADER, "") if message.headers else ""
            self._error = f"{status} {description}".strip()
        self._wake.set()

    async def fetch(self, timeout_s: float) -> list[Msg]:
        """Return the buffered messages, or those of a new request within `timeout_s`.

        Returns an empty list when the request expired without a message. Raises PullError for
        an error status and TimeoutError when not even the expiry status arrived, which is what
        a lost connection or a request lost in a reconnect looks like.
        """
        if not self._buffer:
            self._raise_error()
            self._wake.clear()
            if self._credits == 0:
                await self._request(timeout_s)
        if not self._buffer:
            try:
                # The server responds by timeout_s at the latest (messages or 408), and the extra
                # second allows for the round trip. This uses asyncio.timeout because wait_for of
                # Python 3.11 drops a cancel that comes as the wait ends (CPython gh-86296).
                async with asyncio.timeout(timeout_s + 1.0):
                    await self._wake.wait()
            except TimeoutError:
                self._credits = 0
                raise
        messages, self._buffer = self._buffer, []
        if not messages:
            self._raise_error()
        return messages

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise PullError(f"pull request on {self.subject} failed: {error}")

    async def _request(self, timeout_s: float) -> None:
        request = {"batch": self.batch, "expires": int(timeout_s * 1_000_000_000)}
        self._credits = self.batch
        await self.client.publish(self.subject, orjson.dumps(request), reply=self._inbox)


MSG_ID_HEADER = "Nats-Msg-Id"
"""The header that carries a message's id, by which JetStream drops a repeated publish."""

_DELIVERY_TOKENS = 9
"""Tokens of a delivery subject:
$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>."""


def accept_messages(source: Any, messages: list[Any], record_type: Any) -> list[Any]:
    """Return the records of `messages` for JetStreamInput `source`, updating its next_sequence.

    The common case (the 9-token reply subject, a subject whose signal `source` has cached, a
    payload within its limit) is handled here. Every other message goes to `source._accept`,
    which counts, logs or drops it. `record_type` is StreamMessage, built with tuple.__new__ from
    its field values: the NamedTuple constructor and _make are interpreted and slower.
    `messages` are nats-py Msg objects, typed Any: compiled code would otherwise check each field
    against Msg's annotations, and `reply` is None for a message published without one.
    """
    records: list[Any] = []
    cache: dict[str, Any] = source._signal_cache
    limit: int = source.max_message_bytes
    next_sequence: int = source.next_sequence
    for message in messages:
        reply: str = message.reply or ""
        subject: str = message.subject
        data: bytes = message.data
        tokens = reply.split(".")
        signal = cache.get(subject)
        if (
            len(tokens) != _DELIVERY_TOKENS
            or tokens[0] != "$JS"
            or tokens[1] != "ACK"
            or not tokens[5].isdecimal()
            or not tokens[7].isdecimal()
            or len(data) > limit
            or signal is None
        ):
            source.next_sequence = next_sequence
            record = source._accept(message)
            next_sequence = source.next_sequence
            if record is not None:
                records.append(record)
            continue
        sequence = int(tokens[5])
        if sequence < next_sequence:
            # A replaced consumer had already sent it.
            continue
        next_sequence = sequence + 1
        headers = message.headers
        msg_id = headers.get(MSG_ID_HEADER) if headers else None
        stored_at = nanoseconds_to_seconds(int(tokens[7]))
        values = (sequence, next_sequence, subject, signal, data, msg_id, stored_at)
        records.append(tuple.__new__(record_type, values))
    source.next_sequence = next_sequence
    return records
