"""`serve` across a restart of its NATS server: the position survives, nothing is lost or doubled.

The test runs its own nats-server (Debian's `nats-server` package) with JetStream on a free
loopback port and a file store in the test's folder, so it can stop and start that server
without touching the shared one.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import psycopg
import pytest

from serve_fixture import ServeNames, ServeProcess, free_port, start_serve, wait_until

pytestmark = pytest.mark.slow

RULE = {
    "match": {"field": "kind", "equals": "login_failed"},
    "group_by": ["host"],
    "signal": "logs",
    "threshold": 50,
    "window": "10m",
    # The groups endpoint reads the state stored by the last flush, once per bucket.
    "bucket": "10s",
    "cooldown": "1h",
}


@dataclass
class NatsServer:
    """A nats-server child process with JetStream, bound to 127.0.0.1."""

    store_dir: Path
    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(binary).exists():
            pytest.fail("nats-server is not installed: apt-get install nats-server")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_until(self._accepts, 20, f"nats-server on port {self.port}")

    def _accepts(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"nats-server exited with {self.process.returncode}: {self.log_path.read_text()[-2000:]}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        """Stop the server gracefully, as an orchestrator's restart does; its store stays."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(20)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream", tmp_path / "nats-server.log", free_port())
    server.start()
    yield server
    server.stop()


def login_failed(event_id: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {"time": now, "id": event_id, "kind": "login_failed", "host": "db-01"}


def publish(url: str, subject: str, events: list[dict[str, Any]]) -> None:
    async def send() -> None:
        client = await nats.connect(url)
        try:
            js = client.jetstream()
            for event in events:
                await js.publish(subject, orjson.dumps(event), headers={"Nats-Msg-Id": event["id"]})
        finally:
            await client.close()

    asyncio.run(send())


def group_count(admin: httpx.Client) -> int:
    items = admin.get("/v1/tenants/acme/rules/logins/groups").json()["items"]
    return int(items[0]["count"]) if items else 0


def stored_counts(database_url: str) -> list[int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT counts FROM rule_state WHERE tenant_id = 'acme'").fetchall()
    return [sum(counts) for (counts,) in rows]


def readiness(serve: ServeProcess) -> tuple[int, dict[str, Any]]:
    response = httpx.get(serve.base_url + "/readyz", timeout=5)
    return response.status_code, response.json()


def test_serve_survives_nats_restart(
    tmp_path: Path, pg_url: str, nats_server: NatsServer
) -> None:
    names = ServeNames.new()
    serve = start_serve(tmp_path, pg_url, names, ALERTWARDEN_NATS_URL=nats_server.url)
    stop: Callable[[], None] = serve.kill
    try:
        admin = serve.client()
        assert admin.put("/v1/tenants/acme").status_code in (200, 201)
        assert admin.put("/v1/tenants/acme/rules/logins", json=RULE).status_code == 200
        flag = admin.put("/v1/tenants/acme/features/stateful-rules", json={"enabled": True})
        assert flag.status_code == 200
        wait_until(lambda: readiness(serve)[0] == 200, 20, "the evaluator")

        subject = names.logs_subject_of("acme")
        # Frozen while the events arrive, so the server stops with messages not yet read and
        # a pull request in flight.
        assert serve.process is not None
        serve.process.send_signal(signal.SIGSTOP)
        try:
            publish(nats_server.url, subject, [login_failed(f"a{i}") for i in range(40)])
            nats_server.stop()
        finally:
            serve.process.send_signal(signal.SIGCONT)
        status, body = wait_until(
            lambda: (r := readiness(serve))[0] == 503 and r, 20, "/readyz to report the lost connection"
        )
        assert body["checks"]["jetstream"] == "disconnected", body

        nats_server.start()
        wait_until(lambda: readiness(serve)[0] == 200, 60, "serve to reconnect")
        publish(nats_server.url, subject, [login_failed(f"b{i}") for i in range(20)])
        wait_until(lambda: group_count(admin) >= 60, 60, "all 60 events to be counted")
        history = admin.get("/v1/tenants/acme/history").json()["items"]
        assert [(item["kind"], item["count"]) for item in history] == [("fired", 50)]

        # The graceful stop flushes what was counted since, such as a message read twice.
        assert serve.terminate() == 0
        stop = lambda: None  # noqa: E731 - already stopped
        assert stored_counts(pg_url) == [60]
    finally:
        serve.close_clients()
        if serve.process is not None and serve.process.poll() is None:
            stop()
