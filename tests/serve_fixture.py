"""A real `alertwarden serve` process for tests, with its own database, stream, subjects and port.

Also a webhook receiver on loopback that records every JSON body it is sent. conftest.py loads
this module as a plugin, so the `names` and `webhook` fixtures are available to every test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

NATS_URL = os.environ.get("ALERTWARDEN_TEST_NATS_URL", "nats://127.0.0.1:4222")
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Poll `condition` until it returns a truthy value; fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that stores each POSTed JSON body with its receive time."""

    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with receiver._lock:
                    receiver.received.append((time.time(), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [body for _, body in self.received]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class ServeProcess:
    """One `python -m alertwarden serve` child process and the environment it runs with."""

    env: dict[str, str]
    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "alertwarden", "serve", "--log-format", "json"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                return httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout_s, "serve to become ready")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def client(self, token: str = ADMIN_TOKEN) -> httpx.Client:
        """Return an API client with `token`; close_clients() closes it."""
        client = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        self.clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()


@dataclass(frozen=True)
class ServeNames:
    """Unique stream and subject names of one test."""

    prefix: str
    stream: str
    logs_subject: str
    events_subject: str

    @classmethod
    def new(cls) -> ServeNames:
        prefix = "s" + uuid.uuid4().hex[:12]
        return cls(prefix, f"AW_SERVE_{prefix}", f"{prefix}.logs.{{tenant}}.>", f"{prefix}.events.{{tenant}}.>")

    def logs_subject_of(self, tenant: str) -> str:
        return f"{self.prefix}.logs.{tenant}.app"


def serve_env(database_url: str, names: ServeNames, port: int, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ALERTWARDEN_")}
    env.update(
        ALERTWARDEN_DATABASE_URL=database_url,
        ALERTWARDEN_NATS_URL=NATS_URL,
        ALERTWARDEN_STREAM=names.stream,
        ALERTWARDEN_LOGS_SUBJECT=names.logs_subject,
        ALERTWARDEN_EVENTS_SUBJECT=names.events_subject,
        ALERTWARDEN_BIND_PORT=str(port),
        ALERTWARDEN_ADMIN_TOKEN=ADMIN_TOKEN,
        ALERTWARDEN_RULES_POLL_S="0.5",
        ALERTWARDEN_FETCH_TIMEOUT_S="0.5",
        ALERTWARDEN_TICK_DELAY_S="0.5",
        ALERTWARDEN_SHUTDOWN_TIMEOUT_S="20",
        # JetStream reserves max_bytes of its storage for each stream; the default is 10 GiB.
        ALERTWARDEN_STREAM_MAX_BYTES=str(256 * 1024 * 1024),
    )
    env.update(extra)
    return env


def delete_stream(stream: str) -> None:
    """Delete a test stream; a missing stream is fine."""
    import asyncio

    import nats
    import nats.js.errors

    async def delete() -> None:
        client = await nats.connect(NATS_URL)
        try:
            await client.jetstream().delete_stream(stream)
        except nats.js.errors.NotFoundError:
            pass
        finally:
            await client.close()

    asyncio.run(delete())


def start_serve(
    tmp_path: Path, database_url: str, names: ServeNames, name: str = "serve", **extra: str
) -> ServeProcess:
    port = free_port()
    serve = ServeProcess(serve_env(database_url, names, port, **extra), tmp_path / f"{name}.log", port)
    serve.start()
    serve.wait_ready()
    return serve



@pytest.fixture
def names() -> Iterator[ServeNames]:
    """Unique stream and subject names; the stream is deleted after the test."""
    created = ServeNames.new()
    yield created
    delete_stream(created.stream)


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    """A running webhook receiver on loopback."""
    receiver = WebhookReceiver()
    receiver.start()
    yield receiver
    receiver.stop()
