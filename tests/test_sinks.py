"""Tests of the console, JSON lines, webhook and fan-out sinks."""

from __future__ import annotations

import asyncio
import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from alertwarden.errors import ConfigError, OutputClosedError, SinkError
from alertwarden.sinks.base import Notification
from alertwarden.sinks import remote as remote_module
from alertwarden.sinks.fanout import FanoutError, FanoutSink
from alertwarden.sinks.remote import RemoteDelivery
from alertwarden.sinks.stdout import (
    ConsoleSink,
    JsonLinesSink,
    format_console_line,
)
from alertwarden.sinks.webhook import WebhookSink, parse_retry_after_s, redact_url

AT_S = datetime(2024, 3, 5, 10, 0, 20, tzinfo=UTC).timestamp()


def make_notification(**changes: object) -> Notification:
    base = Notification(
        transition_id="5f2a9c0e1b7d4e6f8a3b2c1d0e9f8a7b",
        tenant="acme",
        rule_group="ssh",
        rule_id="ssh-brute",
        rule_name="SSH brute force",
        at=AT_S,
        kind="fired",
        count=5,
        threshold=5,
        window_s=600,
        group={"src_ip": "1.2.3.4"},
        severity="high",
        labels={"team": "secops"},
        annotations={"summary": "5 failed logins from 1.2.3.4"},
    )
    return replace(base, **changes)


# ---------------------------------------------------------------------------------------------
# Console sink


@pytest.mark.parametrize(
    ("kind", "count", "expected"),
    [
        (
            "fired",
            5,
            "2024-03-05T10:00:20Z FIRED        ssh-brute  src_ip=1.2.3.4  count=5/5 in 10m"
            "  5 failed logins from 1.2.3.4",
        ),
        (
            "recovered",
            2,
            "2024-03-05T10:00:20Z RECOVERED    ssh-brute  src_ip=1.2.3.4  count=2/5 in 10m"
            "  5 failed logins from 1.2.3.4",
        ),
        (
            "cooldown_hit",
            7,
            "2024-03-05T10:00:20Z COOLDOWN_HIT ssh-brute  src_ip=1.2.3.4  count=7/5 in 10m"
            "  5 failed logins from 1.2.3.4",
        ),
        (
            "renotified",
            9,
            "2024-03-05T10:00:20Z RENOTIFIED   ssh-brute  src_ip=1.2.3.4  count=9/5 in 10m"
            "  5 failed logins from 1.2.3.4",
        ),
    ],
)
async def test_console_line_per_kind(kind: str, count: int, expected: str) -> None:
    stream = io.StringIO()
    sink = ConsoleSink(stream, color=False)

    await sink.send(make_notification(kind=kind, count=count))

    assert stream.getvalue() == expected + "\n"


async def test_console_auto_color_plain_on_pipe() -> None:
    stream = io.StringIO()
    sink = ConsoleSink(stream)

    await sink.send(make_notification())

    assert "\x1b[" not in stream.getvalue()
    assert stream.getvalue() == format_console_line(make_notification()) + "\n"


async def test_console_forced_color_styles_kind() -> None:
    stream = io.StringIO()
    sink = ConsoleSink(stream, color=True)

    await sink.send(make_notification())

    output = stream.getvalue()
    assert "\x1b[" in output
    # Fired is red (SGR 31). Without the escape codes, the text is the plain line.
    assert "31m" in output
    plain = _strip_ansi(output)
    assert plain == format_console_line(make_notification()) + "\n"


async def test_console_recovered_is_green() -> None:
    stream = io.StringIO()
    await ConsoleSink(stream, color=True).send(make_notification(kind="recovered"))

    assert "\x1b[32m" in stream.getvalue()


def test_console_line_missing_group_value() -> None:
    line = format_console_line(make_notification(group={"src_ip": None, "user": "root"}))

    assert "src_ip=<missing> user=root" in line


def test_console_line_quotes_spaces() -> None:
    line = format_console_line(make_notification(group={"user": "john smith", "empty": ""}))

    assert 'user="john smith" empty=""' in line


def test_console_line_escapes_control_characters() -> None:
    notification = make_notification(
        group={"user": "evil\nFAKE LINE"},
        annotations={"summary": "bell\x07 and \x1b[31mred\x9b"},
    )

    line = format_console_line(notification)

    assert "\n" not in line
    assert "\x1b" not in line
    assert "\x07" not in line
    assert "\x9b" not in line
    assert 'user="evil\\nFAKE LINE"' in line
    assert line.endswith("bell\\x07 and \\x1b[31mred\\x9b")


def test_console_line_message_fallbacks() -> None:
    first = format_console_line(make_notification(annotations={"runbook": "see wiki"}))
    by_name = format_console_line(make_notification(annotations={}))
    nothing = format_console_line(make_notification(annotations={}, rule_name="ssh-brute"))

    assert first.endswith("count=5/5 in 10m  see wiki")
    assert by_name.endswith("count=5/5 in 10m  SSH brute force")
    assert nothing.endswith("count=5/5 in 10m")


def test_console_line_no_group() -> None:
    line = format_console_line(make_notification(group={}, annotations={}))

    assert line == "2024-03-05T10:00:20Z FIRED        ssh-brute  count=5/5 in 10m  SSH brute force"


class _BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


async def test_console_broken_pipe_raises_output_closed() -> None:
    with pytest.raises(OutputClosedError, match="closed by its reader") as raised:
        await ConsoleSink(_BrokenStream(), color=False).send(make_notification())

    assert isinstance(raised.value, SinkError)
    assert isinstance(raised.value.__cause__, BrokenPipeError)


class _FlushCountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


async def test_console_flushes_each_line() -> None:
    stream = _FlushCountingStream()
    sink = ConsoleSink(stream, color=False)

    await sink.send(make_notification())
    await sink.send(make_notification(kind="recovered"))

    assert stream.flushes == 2


# ---------------------------------------------------------------------------------------------
# JSON lines sink


async def test_jsonl_round_trip() -> None:
    stream = _FlushCountingStream()
    sink = JsonLinesSink(stream)
    notifications = [make_notification(), make_notification(kind="recovered", group={"ip": None})]

    for notification in notifications:
        await sink.send(notification)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert [orjson.loads(line) for line in lines] == [n.as_dict() for n in notifications]
    assert stream.flushes == 2


async def test_jsonl_at_is_utc_z() -> None:
    stream = io.StringIO()
    await JsonLinesSink(stream).send(make_notification(at=AT_S + 0.25))

    assert orjson.loads(stream.getvalue())["at"] == "2024-03-05T10:00:20.250000Z"


@given(
    summary=st.text(),
    value=st.one_of(st.none(), st.text()),
)
async def test_jsonl_one_line_any_text(summary: str, value: str | None) -> None:
    stream = io.StringIO()
    notification = make_notification(annotations={"summary": summary}, group={"k": value})

    await JsonLinesSink(stream).send(notification)

    text = stream.getvalue()
    assert text.count("\n") == 1
    assert text.endswith("\n")
    assert orjson.loads(text) == notification.as_dict()


@given(value=st.text())
def test_console_line_is_one_line(value: str) -> None:
    line = format_console_line(make_notification(group={"k": value}, annotations={"s": value}))

    assert "\n" not in line
    assert "\r" not in line
    assert "\x1b" not in line


# ---------------------------------------------------------------------------------------------
# Webhook sink against a real HTTP server on 127.0.0.1


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedServer:
    """State of an HTTP server that replies to POSTs from a script of (status, headers, delay_s).

    When the script runs out, the server replies 200.
    """

    port: int
    requests: list[RecordedRequest] = field(default_factory=list)
    replies: list[tuple[int, dict[str, str], float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/alerts"

    def script(self, *replies: int | tuple) -> None:
        for reply in replies:
            if isinstance(reply, int):
                self.replies.append((reply, {}, 0.0))
            elif len(reply) == 2:
                self.replies.append((reply[0], reply[1], 0.0))
            else:
                self.replies.append(reply)

    def next_reply(self) -> tuple[int, dict[str, str], float]:
        with self.lock:
            return self.replies.pop(0) if self.replies else (200, {}, 0.0)


def _make_handler(server_state: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - name fixed by http.server
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with server_state.lock:
                server_state.requests.append(
                    RecordedRequest("POST", self.path, dict(self.headers.items()), body)
                )
            status, headers, delay_s = server_state.next_reply()
            if delay_s:
                time.sleep(delay_s)
            payload = b'{"ok": true}'
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                # The client closed the connection after its timeout, so no reply can be sent.
                pass

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def http_server() -> Iterator[ScriptedServer]:
    state = ScriptedServer(port=0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port() -> int:
    # Bind and release a port, so nothing listens on it and connecting is refused.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FakeSleep:
    def __init__(self) -> None:
        self.delays_s: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays_s.append(delay_s)


def make_webhook(url: str, sleep: FakeSleep, **options: object) -> WebhookSink:
    # A fixed random fraction of 0.5 makes every jittered delay 3/4 of the backoff.
    return WebhookSink(
        url, sleep=sleep, random_fraction=lambda: 0.5, **options  # type: ignore[arg-type]
    )


async def test_webhook_success_first_try(http_server: ScriptedServer) -> None:
    sleep = FakeSleep()
    sink = make_webhook(http_server.url, sleep)
    notification = make_notification()

    try:
        await sink.send(notification)
    finally:
        await sink.close()

    assert len(http_server.requests) == 1
    request = http_server.requests[0]
    assert request.method == "POST"
    assert request.path == "/hooks/alerts"
    assert orjson.loads(request.body) == notification.as_dict()
    assert sleep.delays_s == []


async def test_webhook_headers(http_server: ScriptedServer) -> None:
    sink = make_webhook(
        http_server.url,
        FakeSleep(),
        headers={"Authorization": "Bearer s3cret", "content-type": "text/plain"},
    )
    try:
        await sink.send(make_notification())
    finally:
        await sink.close()

    headers = {name.lower(): value for name, value in http_server.requests[0].headers.items()}
    assert headers["idempotency-key"] == "5f2a9c0e1b7d4e6f8a3b2c1d0e9f8a7b"
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == "Bearer s3cret"


async def test_webhook_500_500_200_retries(http_server: ScriptedServer) -> None:
    http_server.script(500, 500, 200)
    sleep = FakeSleep()
    sink = make_webhook(http_server.url, sleep, backoff_initial_s=1.0, backoff_max_s=30.0)

    with structlog.testing.capture_logs() as logs:
        try:
            await sink.send(make_notification())
        finally:
            await sink.close()

    assert len(http_server.requests) == 3
    keys = {request.headers["Idempotency-Key"] for request in http_server.requests}
    assert keys == {"5f2a9c0e1b7d4e6f8a3b2c1d0e9f8a7b"}
    # Equal jitter with a random fraction of 0.5: 3/4 of 1 s, then 3/4 of 2 s.
    assert sleep.delays_s == [0.75, 1.5]
    retries = [entry for entry in logs if entry["event"] == "webhook_retry"]
    assert [entry["attempt"] for entry in retries] == [1, 2]
    assert all(entry["log_level"] == "warning" for entry in retries)
    assert all(entry["status"] == 500 for entry in retries)
    assert all(entry["transition_id"] == "5f2a9c0e1b7d4e6f8a3b2c1d0e9f8a7b" for entry in retries)
    assert not [entry for entry in logs if entry["log_level"] == "error"]


async def test_webhook_400_no_retry(http_server: ScriptedServer) -> None:
    http_server.script(400)
    sleep = FakeSleep()
    sink = make_webhook(http_server.url, sleep)

    with structlog.testing.capture_logs() as logs:
        try:
            with pytest.raises(SinkError, match="400 Bad Request") as caught:
                await sink.send(make_notification())
        finally:
            await sink.close()

    assert len(http_server.requests) == 1
    assert sleep.delays_s == []
    assert "http://127.0.0.1" in str(caught.value)
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["event"] == "webhook_delivery_failed"
    assert errors[0]["status"] == 400


async def test_webhook_exhausts_on_5xx(http_server: ScriptedServer) -> None:
    http_server.script(503, 503, 503)
    sink = make_webhook(http_server.url, FakeSleep(), max_attempts=3)

    try:
        with pytest.raises(SinkError, match="after 3 attempts: last status 503"):
            await sink.send(make_notification())
    finally:
        await sink.close()

    assert len(http_server.requests) == 3


async def test_webhook_connection_refused(closed_port: int) -> None:
    sleep = FakeSleep()
    sink = make_webhook(f"http://127.0.0.1:{closed_port}/hook", sleep, max_attempts=4)

    with structlog.testing.capture_logs() as logs:
        try:
            with pytest.raises(SinkError, match="after 4 attempts: ConnectError") as caught:
                await sink.send(make_notification())
        finally:
            await sink.close()

    assert f"http://127.0.0.1:{closed_port}/hook" in str(caught.value)
    assert len(sleep.delays_s) == 3
    assert [entry["attempt"] for entry in logs if entry["event"] == "webhook_retry"] == [1, 2, 3]
    failures = [entry for entry in logs if entry["event"] == "webhook_delivery_failed"]
    assert [entry["attempt"] for entry in failures] == [4]


async def test_webhook_timeout_retried(http_server: ScriptedServer) -> None:
    http_server.script((200, {}, 1.0), 200)
    sink = make_webhook(http_server.url, FakeSleep(), timeout_s=0.1)

    try:
        await sink.send(make_notification())
    finally:
        await sink.close()

    assert len(http_server.requests) == 2


async def test_webhook_retry_after_honoured(http_server: ScriptedServer) -> None:
    http_server.script((429, {"Retry-After": "7"}), (503, {"Retry-After": "120"}), 200)
    sleep = FakeSleep()
    sink = make_webhook(http_server.url, sleep, backoff_max_s=60.0)

    try:
        await sink.send(make_notification())
    finally:
        await sink.close()

    # The second Retry-After (120 s) is capped at backoff_max_s.
    assert sleep.delays_s == [7.0, 60.0]
    assert len(http_server.requests) == 3


async def test_webhook_retry_after_http_date(http_server: ScriptedServer) -> None:
    far_future = format_datetime(datetime(2999, 1, 1, tzinfo=UTC), usegmt=True)
    http_server.script((503, {"Retry-After": far_future}), 200)
    sleep = FakeSleep()
    sink = make_webhook(http_server.url, sleep, backoff_max_s=12.0)

    try:
        await sink.send(make_notification())
    finally:
        await sink.close()

    assert sleep.delays_s == [12.0]


async def test_webhook_backoff_capped(closed_port: int) -> None:
    sleep = FakeSleep()
    sink = WebhookSink(
        f"http://127.0.0.1:{closed_port}/",
        max_attempts=6,
        backoff_initial_s=1.0,
        backoff_max_s=5.0,
        sleep=sleep,
        random_fraction=lambda: 0.999,
    )
    try:
        with pytest.raises(SinkError):
            await sink.send(make_notification())
    finally:
        await sink.close()

    assert len(sleep.delays_s) == 5
    assert all(delay_s <= 5.0 for delay_s in sleep.delays_s)
    assert sleep.delays_s[-1] > 4.9


async def test_webhook_credentials_not_in_error(closed_port: int) -> None:
    url = f"http://alice:hunter2@127.0.0.1:{closed_port}/hook?token=tok-abc123"
    sink = make_webhook(url, FakeSleep(), max_attempts=2)

    with structlog.testing.capture_logs() as logs:
        try:
            with pytest.raises(SinkError) as caught:
                await sink.send(make_notification())
        finally:
            await sink.close()

    message = str(caught.value)
    assert f"http://127.0.0.1:{closed_port}/hook?<redacted>" in message
    for secret in ("alice", "hunter2", "tok-abc123"):
        assert secret not in message
        assert secret not in repr(logs)
        assert secret not in sink.name


async def test_webhook_basic_auth_sent(http_server: ScriptedServer) -> None:
    url = http_server.url.replace("http://", "http://alice:hunter2@")
    sink = make_webhook(url, FakeSleep())
    try:
        await sink.send(make_notification())
    finally:
        await sink.close()

    assert http_server.requests[0].headers["Authorization"].startswith("Basic ")


async def test_webhook_uses_given_client(http_server: ScriptedServer) -> None:
    async with httpx.AsyncClient() as client:
        sink = make_webhook(http_server.url, FakeSleep(), client=client)
        await sink.send(make_notification())
        await sink.close()
        # close() leaves a client it did not create open for its owner.
        assert not client.is_closed

    assert len(http_server.requests) == 1


def test_redact_url_masks_secrets() -> None:
    slack = httpx.URL("https://hooks.example.com/services/T0001/B0001/XXXXXXXXXXXXXXXXXXXXXXXX")
    with_user = httpx.URL("https://bob:pw@[::1]:8443/a/b?key=v")

    assert redact_url(slack) == "https://hooks.example.com/services/T0001/B0001/<redacted>"
    assert redact_url(with_user) == "https://[::1]:8443/a/b?<redacted>"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/hook", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("example.com/hook", "scheme ''"),
        ("http:///hook", "host is missing"),
        ("http://[internal/hook", "host contains characters"),
        ("https://hooks example.com/x", "host contains characters"),
        ("http://127.0.0.1:99999/hook", "port 99999: use a port from 1 to 65535"),
        ("http://127.0.0.1:0/hook", "port 0"),
    ],
)
def test_webhook_url_validation(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WebhookSink(url)


def test_webhook_bad_url_hides_credentials() -> None:
    with pytest.raises(ConfigError) as caught:
        WebhookSink("ftp://alice:hunter2@example.com/hook")

    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("options", "field_name"),
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"backoff_initial_s": -1}, "backoff_initial_s"),
        ({"backoff_initial_s": 5.0, "backoff_max_s": 1.0}, "backoff_max_s"),
    ],
)
def test_webhook_option_validation(options: dict[str, float], field_name: str) -> None:
    with pytest.raises(ConfigError, match=field_name):
        WebhookSink("http://127.0.0.1/hook", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("5", 5.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("-3", None),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 0.0),
    ],
)
def test_parse_retry_after_cases(value: str | None, expected: float | None) -> None:
    assert parse_retry_after_s(value, now_s=1000.0) == expected


def test_parse_retry_after_future_date() -> None:
    assert parse_retry_after_s("Thu, 01 Jan 1970 00:01:40 GMT", now_s=60.0) == 40.0


# ---------------------------------------------------------------------------------------------
# Fan-out sink


class RecordingSink:
    def __init__(self, name: str, error: Exception | None = None) -> None:
        self.name = name
        self.error = error
        self.sent: list[Notification] = []
        self.closed = False

    async def send(self, notification: Notification) -> None:
        self.sent.append(notification)
        if self.error is not None:
            raise self.error

    async def close(self) -> None:
        self.closed = True


async def test_fanout_all_delivered() -> None:
    sinks = [RecordingSink("a"), RecordingSink("b")]
    notification = make_notification()

    await FanoutSink(sinks).send(notification)

    assert sinks[0].sent == [notification]
    assert sinks[1].sent == [notification]


async def test_fanout_partial_failure() -> None:
    failing_webhook = RecordingSink("webhook x", SinkError("receiver down"))
    failing_bug = RecordingSink("buggy", RuntimeError("boom"))
    healthy = RecordingSink("console")
    fanout = FanoutSink([failing_webhook, healthy, failing_bug])
    notification = make_notification()

    with pytest.raises(FanoutError) as caught:
        await fanout.send(notification)

    assert healthy.sent == [notification]
    assert failing_webhook.sent == [notification]
    assert failing_bug.sent == [notification]
    assert isinstance(caught.value, SinkError)
    assert [name for name, _ in caught.value.failures] == ["webhook x", "buggy"]
    assert "2 of 3 sinks failed" in str(caught.value)
    assert "webhook x: receiver down" in str(caught.value)
    assert "buggy: boom" in str(caught.value)


async def test_fanout_real_sinks_partial_failure(closed_port: int) -> None:
    stream = io.StringIO()
    webhook = make_webhook(f"http://127.0.0.1:{closed_port}/", FakeSleep(), max_attempts=2)
    fanout = FanoutSink([webhook, JsonLinesSink(stream)])

    try:
        with pytest.raises(FanoutError, match="1 of 2 sinks failed") as caught:
            await fanout.send(make_notification())
    finally:
        await fanout.close()

    assert orjson.loads(stream.getvalue()) == make_notification().as_dict()
    assert isinstance(caught.value.__cause__, SinkError)
    assert caught.value.failures[0][0] == f"webhook http://127.0.0.1:{closed_port}/"


async def test_fanout_closes_all() -> None:
    sinks = [RecordingSink("a"), RecordingSink("b")]

    await FanoutSink(sinks).close()

    assert sinks[0].closed
    assert sinks[1].closed


def test_fanout_rejects_empty() -> None:
    with pytest.raises(ConfigError, match="at least one sink"):
        FanoutSink([])


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


async def test_remote_drain_waits_for_outbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote_module, "MAX_PENDING", 1)
    outbox = {history_id: make_notification(transition_id=f"t{history_id}") for history_id in (1, 2, 3)}
    received: list[str] = []
    delivered: list[int | None] = []

    class RecordingSink:
        name = "recording"

        async def send(self, notification: Notification) -> None:
            received.append(notification.transition_id)

        async def close(self) -> None:
            return None

    async def on_delivered(history_id: int | None) -> None:
        delivered.append(history_id)
        outbox.pop(history_id or 0, None)

    async def refill(after_id: int, limit: int) -> list[tuple[int, Notification]]:
        # A store read takes a while, and drain must wait through it.
        await asyncio.sleep(0.1)
        return [(key, outbox[key]) for key in sorted(outbox) if key > after_id][:limit]

    remote = RemoteDelivery(RecordingSink(), on_delivered, name="recording", refill=refill)
    # All three are put before the worker runs, so two of them wait in the outbox.
    for history_id in (1, 2, 3):
        remote.put(history_id, outbox[history_id])
    remote.start()

    assert await remote.drain(5.0)
    await remote.stop()

    assert received == ["t1", "t2", "t3"]
    assert delivered == [1, 2, 3]
    assert remote.dropped == 2
