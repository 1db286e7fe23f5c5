"""`alertwarden serve` as a real process: API, JetStream, HTTP ingest, webhooks, isolation, stop."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import psycopg
import pytest

from serve_fixture import (
    NATS_URL,
    ServeNames,
    ServeProcess,
    WebhookReceiver,
    free_port,
    serve_env,
    start_serve,
    wait_until,
)

pytestmark = pytest.mark.slow

RULE = {
    "name": "Failed logins per host",
    "match": {"field": "kind", "equals": "login_failed"},
    "group_by": ["host"],
    "threshold": 3,
    "window": "2m",
    "bucket": "10s",
    "cooldown": "10m",
    "severity": "warning",
    "annotations": {"summary": "{count} failed logins on {host}"},
}


def iso(time_s: float) -> str:
    return datetime.fromtimestamp(time_s, UTC).isoformat()


def login_failed(event_id: str, host: str, time_s: float | None = None) -> dict[str, Any]:
    return {"time": iso(time_s or time.time()), "id": event_id, "kind": "login_failed", "host": host}


async def _publish(subject: str, events: list[dict[str, Any]]) -> None:
    client = await nats.connect(NATS_URL)
    try:
        js = client.jetstream()
        for event in events:
            await js.publish(subject, orjson.dumps(event), headers={"Nats-Msg-Id": event["id"]})
    finally:
        await client.close()


def publish(subject: str, events: list[dict[str, Any]]) -> None:
    asyncio.run(_publish(subject, events))


@pytest.fixture
def serve_factory(tmp_path: Path, pg_url: str, names: ServeNames) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(**extra: str) -> ServeProcess:
        serve = start_serve(tmp_path, pg_url, names, name=f"serve{len(started)}", **extra)
        started.append(serve)
        return serve

    yield start
    for serve in started:
        serve.close_clients()
        if serve.process is not None and serve.process.poll() is None:
            serve.kill()


def create_tenant(admin: httpx.Client, tenant: str, *, stateful: bool = True) -> str:
    """Create a tenant with one rule and a tenant token; return the token."""
    assert admin.put(f"/v1/tenants/{tenant}").status_code in (200, 201)
    created = admin.post(f"/v1/tenants/{tenant}/tokens", json={"name": "test"})
    assert created.status_code == 201, created.text
    token: str = created.json()["token"]
    response = admin.put(f"/v1/tenants/{tenant}/rules/ssh-fail", json=RULE)
    assert response.status_code == 200, response.text
    if stateful:
        flag = admin.put(f"/v1/tenants/{tenant}/features/stateful-rules", json={"enabled": True})
        assert flag.status_code == 200
    return token


def rule_status(client: httpx.Client, tenant: str) -> str:
    body = client.get(f"/v1/tenants/{tenant}/rules/ssh-fail").json()
    return str(body["health"]["status"])


def history(client: httpx.Client, tenant: str, **params: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/tenants/{tenant}/history", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_serve_end_to_end(
    serve_factory: Callable[..., ServeProcess], names: ServeNames, webhook: WebhookReceiver
) -> None:
    serve = serve_factory(ALERTWARDEN_WEBHOOK_URLS=webhook.url)
    admin = serve.client()
    assert admin.put("/v1/tenants/acme").status_code in (200, 201)
    token = admin.post("/v1/tenants/acme/tokens", json={"name": "e2e"}).json()["token"]
    tenant = serve.client(token)

    created = tenant.put("/v1/tenants/acme/rules/ssh-fail", json=RULE)
    assert created.status_code == 200
    # The response is built before the service has applied the change.
    assert created.json()["health"]["status"] == "pending"
    wait_until(lambda: rule_status(tenant, "acme") == "inactive", 15, "the rule, inactive while the flag is off")
    # The flag is the operator's switch: the tenant's token may read it, and only the admin switches it.
    assert tenant.put("/v1/tenants/acme/features/stateful-rules", json={"enabled": True}).status_code == 403
    assert admin.put("/v1/tenants/acme/features/stateful-rules", json={"enabled": True}).status_code == 200
    assert tenant.get("/v1/tenants/acme/features/stateful-rules").json()["enabled"] is True
    wait_until(lambda: rule_status(tenant, "acme") == "healthy", 15, "the rule's evaluator to start")

    ingest = tenant.post("/v1/tenants/acme/events", json=[login_failed("e1", "db-01"), login_failed("e2", "db-01")])
    assert ingest.status_code == 202, ingest.text
    # A client retry of the same event is not counted twice.
    assert tenant.post("/v1/tenants/acme/events", json=login_failed("e2", "db-01")).status_code == 202
    publish(names.logs_subject_of("acme"), [login_failed("e3", "db-01")])

    fired = wait_until(lambda: history(tenant, "acme", kind="fired"), 20, "the fired transition")
    assert len(fired) == 1
    assert fired[0]["group"] == {"host": "db-01"}
    assert fired[0]["count"] == 3
    assert fired[0]["rule"] == "ssh-fail"

    bodies = wait_until(webhook.bodies, 20, "the webhook delivery")
    assert len(bodies) == 1
    assert bodies[0]["tenant"] == "acme"
    assert bodies[0]["kind"] == "fired"
    assert bodies[0]["count"] == 3
    assert bodies[0]["annotations"] == {"summary": "3 failed logins on db-01"}
    wait_until(lambda: history(tenant, "acme")[0]["delivered"], 20, "the history row marked delivered")

    groups = tenant.get("/v1/tenants/acme/rules/ssh-fail/groups").json()["items"]
    assert [group["key"] for group in groups] == [["db-01"]]
    assert groups[0]["state"] == "firing"

    metrics = admin.get("/metrics").text
    assert 'alertwarden_transitions_total{kind="fired",rule="ssh-fail",tenant="acme"} 1.0' in metrics
    assert 'alertwarden_events_total{result="matched",tenant="acme"} 3.0' in metrics

    assert serve.terminate() == 0
    log = serve.log_path.read_text()
    assert '"event":"evaluator_stopped"' in log
    assert '"event":"service_stopped"' in log


def test_serve_tenants_isolated(serve_factory: Callable[..., ServeProcess], names: ServeNames) -> None:
    serve = serve_factory()
    admin = serve.client()
    token_a = create_tenant(admin, "tenant-a")
    create_tenant(admin, "tenant-b")
    client_a = serve.client(token_a)
    for tenant in ("tenant-a", "tenant-b"):
        wait_until(lambda t=tenant: rule_status(admin, t) == "healthy", 15, f"{tenant}'s evaluator")

    # Same subject suffix and the same group value, for tenant A only.
    publish(names.logs_subject_of("tenant-a"), [login_failed(f"a{i}", "shared-host") for i in range(3)])
    wait_until(lambda: history(admin, "tenant-a", kind="fired"), 20, "tenant A's alert")
    # B's evaluator has seen the same stream positions by now, and counted none of them.
    time.sleep(1.5)
    assert history(admin, "tenant-b") == []
    assert admin.get("/v1/tenants/tenant-b/rules/ssh-fail/groups").json()["items"] == []

    for path in ("", "/rules", "/rules/ssh-fail", "/rules/ssh-fail/groups", "/history",
                 "/features/stateful-rules"):
        assert client_a.get(f"/v1/tenants/tenant-b{path}").status_code == 404, path
    assert client_a.post("/v1/tenants/tenant-b/events", json=login_failed("x", "h")).status_code == 404
    assert client_a.put("/v1/tenants/tenant-b/rules/ssh-fail", json=RULE).status_code == 404
    assert client_a.put("/v1/tenants/tenant-b/features/stateful-rules", json={"enabled": False}).status_code == 404


def test_serve_rule_update_applies_live(serve_factory: Callable[..., ServeProcess], names: ServeNames) -> None:
    serve = serve_factory()
    admin = serve.client()
    create_tenant(admin, "acme")
    wait_until(lambda: rule_status(admin, "acme") == "healthy", 15, "the evaluator")
    publish(names.logs_subject_of("acme"), [login_failed(f"a{i}", "web-01") for i in range(2)])

    # A threshold of 2 applies without a restart, and the two counted events are kept.
    updated = {**RULE, "threshold": 2}
    assert admin.put("/v1/tenants/acme/rules/ssh-fail", json=updated).status_code == 200
    fired = wait_until(lambda: history(admin, "acme", kind="fired"), 20, "the fired transition")
    assert fired[0]["count"] == 2

    # An invalid update gets 422 and leaves version 2 in force.
    bad = admin.put("/v1/tenants/acme/rules/ssh-fail", json={**RULE, "threshold": "many"})
    assert bad.status_code == 422
    assert "threshold" in bad.text
    assert admin.get("/v1/tenants/acme/rules/ssh-fail").json()["version"] == 2


def test_serve_bad_records_skipped(serve_factory: Callable[..., ServeProcess], names: ServeNames) -> None:
    serve = serve_factory()
    admin = serve.client()
    create_tenant(admin, "acme")
    wait_until(lambda: rule_status(admin, "acme") == "healthy", 15, "the evaluator")

    async def send_bad() -> None:
        client = await nats.connect(NATS_URL)
        js = client.jetstream()
        subject = names.logs_subject_of("acme")
        await js.publish(subject, b"not json")
        await js.publish(subject, b'{"kind": "login_failed", "host": "h"}')
        await js.publish(subject, b"[1, 2]")
        await client.close()

    asyncio.run(send_bad())
    publish(names.logs_subject_of("acme"), [login_failed(f"g{i}", "h") for i in range(3)])
    wait_until(lambda: history(admin, "acme", kind="fired"), 20, "the alert after the bad records")

    def skipped() -> dict[str, float]:
        found = {}
        for line in admin.get("/metrics").text.splitlines():
            if line.startswith("alertwarden_records_skipped_total{"):
                reason = line.split('reason="')[1].split('"')[0]
                found[reason] = float(line.rsplit(" ", 1)[1])
        return found

    counts = wait_until(skipped, 15, "the skipped-record metric")
    assert counts == {"malformed": 1.0, "bad_timestamp": 1.0, "not_an_object": 1.0}


def run_serve_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `serve` until it exits, as a start that fails does."""
    return subprocess.run(
        [sys.executable, "-m", "alertwarden", "serve"], env=env, capture_output=True, text=True, timeout=60
    )


def test_serve_unreachable_nats(tmp_path: Path, pg_url: str, names: ServeNames) -> None:
    env = serve_env(pg_url, names, free_port(), ALERTWARDEN_NATS_URL="nats://127.0.0.1:1")
    result = run_serve_once(env)
    assert result.returncode == 2
    assert "NATS is not reachable at nats://127.0.0.1:1" in result.stderr
    # The cause of the last attempt, not the timeout that ended the wait.
    assert "ConnectionRefusedError" in result.stderr
    assert "ALERTWARDEN_NATS_URL" in result.stderr


def test_serve_unreachable_postgres(tmp_path: Path, names: ServeNames) -> None:
    env = serve_env("postgresql://postgres@127.0.0.1:1/none", names, free_port())
    result = run_serve_once(env)
    assert result.returncode == 2
    assert "PostgreSQL is not reachable" in result.stderr
    assert "ALERTWARDEN_DATABASE_URL" in result.stderr
    # NATS was reachable, and the service closed that connection itself.
    assert "nats_connection_closed" not in result.stderr
    assert "Connection refused. Is the server running" in result.stderr


def test_serve_silent_postgres(tmp_path: Path, names: ServeNames) -> None:
    # A server that accepts connections and never responds, as a hung or half-failed-over one.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        env = serve_env(f"postgresql://postgres@127.0.0.1:{port}/none?connect_timeout=2", names, free_port())

        result = run_serve_once(env)

    assert result.returncode == 2
    assert "PostgreSQL is not reachable" in result.stderr
    assert "timeout expired" in result.stderr
    assert "ALERTWARDEN_DATABASE_URL" in result.stderr


def test_serve_unreachable_both_servers(tmp_path: Path, names: ServeNames) -> None:
    env = serve_env(
        "postgresql://postgres@127.0.0.1:1/none", names, free_port(), ALERTWARDEN_NATS_URL="nats://127.0.0.1:1"
    )
    result = run_serve_once(env)
    assert result.returncode == 2
    assert "PostgreSQL is not reachable" in result.stderr
    assert "ALERTWARDEN_DATABASE_URL" in result.stderr
    assert "NATS is not reachable at nats://127.0.0.1:1" in result.stderr
    assert "ALERTWARDEN_NATS_URL" in result.stderr
    # psycopg's message ends with a question mark, which needs no full stop after it.
    assert "?." not in result.stderr
    # nats-py reports each of its retries during the 10 s connect; one warning stands for them.
    assert result.stderr.count("nats_error") == 1


def test_serve_malformed_database_url(tmp_path: Path, names: ServeNames) -> None:
    env = serve_env("postgresql//postgres:S3cretPW@127.0.0.1:5432/x", names, free_port())
    result = run_serve_once(env)
    assert result.returncode == 2
    assert "invalid ALERTWARDEN_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert "S3cretPW" not in result.stderr
    assert "S3cretPW" not in result.stdout


def nats_server_filters_subject_lists() -> bool:
    """Return True when the NATS server honours a consumer's filter_subjects (2.10 and later)."""

    async def version() -> tuple[int, int]:
        client = await nats.connect(NATS_URL)
        try:
            server = client.connected_server_version
            return server.major, server.minor
        finally:
            await client.close()

    return asyncio.run(version()) >= (2, 10)


@pytest.mark.parametrize("signal", ["logs", "any"])
def test_serve_noisy_tenant_delays_other_less_than_bucket(
    serve_factory: Callable[..., ServeProcess], names: ServeNames, webhook: WebhookReceiver, signal: str
) -> None:
    quiet_events = 1_000
    noisy_events = 100 * quiet_events
    bucket_s = 10
    serve = serve_factory(ALERTWARDEN_WEBHOOK_URLS=webhook.url)
    admin = serve.client()
    # Each rule fires only once its tenant's last event is counted. A logs rule reads one subject,
    # which every nats-server version filters. An `any` rule (the default) reads two, which
    # nats-server before 2.10 does not filter, so each consumer then reads every tenant's events.
    bucket_rule = {**RULE, "signal": signal, "window": "10m", "bucket": f"{bucket_s}s"}
    rules = {
        "noisy": {**bucket_rule, "threshold": noisy_events},
        "quiet": {**bucket_rule, "threshold": quiet_events},
    }
    for tenant, rule in rules.items():
        assert admin.put(f"/v1/tenants/{tenant}").status_code in (200, 201)
        assert admin.put(f"/v1/tenants/{tenant}/rules/ssh-fail", json=rule).status_code == 200

    async def send(tenant: str, count: int) -> None:
        client = await nats.connect(NATS_URL)
        try:
            stamp = iso(time.time())
            for index in range(count):
                body = {"time": stamp, "id": f"{tenant}{index}", "kind": "login_failed", "host": tenant}
                await client.publish(names.logs_subject_of(tenant), orjson.dumps(body))
            await client.flush()
        finally:
            await client.close()

    # Both bursts wait in the stream before either evaluator starts (each reads one window back),
    # and the noisy tenant's evaluator starts first. So the noisy backlog is still being evaluated
    # while the quiet evaluator runs, however fast the machine. When the bursts were published
    # one after the other to running evaluators, a fast machine finished the noisy one first.
    asyncio.run(send("noisy", noisy_events))
    asyncio.run(send("quiet", quiet_events))
    assert admin.put("/v1/tenants/noisy/features/stateful-rules", json={"enabled": True}).status_code == 200
    assert admin.put("/v1/tenants/quiet/features/stateful-rules", json={"enabled": True}).status_code == 200
    quiet_enabled_at = time.time()

    wait_until(lambda: len(webhook.received) == 2, 60, "both alerts")
    received = {body["tenant"]: at for at, body in webhook.received}

    # The quiet tenant's alert arrived within one bucket of its evaluator starting ...
    assert received["quiet"] - quiet_enabled_at < bucket_s
    # ... and, where its consumer reads only its own subjects, before the noisy tenant's backlog
    # was evaluated: it had a hundredth of the work, so only a shared queue puts it behind.
    if signal == "logs" or nats_server_filters_subject_lists():
        assert received["quiet"] < received["noisy"]


def test_serve_regex_timeout_marks_rule_unhealthy(
    serve_factory: Callable[..., ServeProcess], names: ServeNames
) -> None:
    serve = serve_factory()
    admin = serve.client()
    create_tenant(admin, "acme")
    # Two alternatives that match the same text backtrack exponentially on a's ending in b,
    # even in the regex package, which handles (a+)+ without backtracking.
    slow = {**RULE, "match": {"field": "user", "regex": "^(a|a)*$"}, "threshold": 1}
    assert admin.put("/v1/tenants/acme/rules/slow", json=slow).status_code == 200
    wait_until(
        lambda: rule_status(admin, "acme") == "healthy"
        and admin.get("/v1/tenants/acme/rules/slow").json()["health"]["status"] == "healthy",
        15,
        "both rules to run",
    )

    events = [{**login_failed(f"r{i}", "db-01"), "user": "a" * 40 + "b"} for i in range(3)]
    publish(names.logs_subject_of("acme"), events)

    # The sibling rule of the same group still counts and fires.
    fired = wait_until(lambda: history(admin, "acme", kind="fired"), 30, "the sibling's alert")
    assert [item["rule"] for item in fired] == ["ssh-fail"]
    health = wait_until(
        lambda: (body := admin.get("/v1/tenants/acme/rules/slow").json()["health"])["status"] == "unhealthy" and body,
        15,
        "the slow rule to be reported unhealthy",
    )
    assert "regex searches timed out" in health["reason"]
    assert rule_status(admin, "acme") == "healthy"

    metrics = admin.get("/metrics").text
    assert 'alertwarden_rule_healthy{rule="slow",tenant="acme"} 0.0' in metrics
    assert 'alertwarden_rule_healthy{rule="ssh-fail",tenant="acme"} 1.0' in metrics
    assert 'alertwarden_regex_timeouts_total{rule="slow",tenant="acme"} 3.0' in metrics


@pytest.fixture
def unanswered_url() -> Iterator[str]:
    """URL of a loopback port that accepts connections and never responds."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/alerts"
    listener.close()


def start_stuck_delivery(serve: ServeProcess, names: ServeNames) -> None:
    """Make one alert whose webhook delivery hangs, so a graceful stop waits for it."""
    admin = serve.client()
    create_tenant(admin, "acme")
    wait_until(lambda: rule_status(admin, "acme") == "healthy", 15, "the evaluator")
    publish(names.logs_subject_of("acme"), [login_failed(f"s{i}", "db-01") for i in range(3)])
    wait_until(lambda: history(admin, "acme", kind="fired"), 20, "the alert")


def test_serve_second_signal_exits_at_once(
    serve_factory: Callable[..., ServeProcess], names: ServeNames, unanswered_url: str
) -> None:
    import signal

    serve = serve_factory(ALERTWARDEN_WEBHOOK_URLS=unanswered_url)
    start_stuck_delivery(serve, names)
    assert serve.process is not None
    serve.process.send_signal(signal.SIGTERM)
    wait_until(lambda: '"event":"stop_requested"' in serve.log_path.read_text(), 10, "the first signal")
    serve.process.send_signal(signal.SIGTERM)
    assert serve.process.wait(10) == 1
    assert '"event":"stop_forced"' in serve.log_path.read_text()


def test_serve_signal_while_starting_stops_gracefully(tmp_path: Path, pg_url: str, names: ServeNames) -> None:
    import signal

    port = free_port()
    serve = ServeProcess(serve_env(pg_url, names, port), tmp_path / "starting.log", port)
    serve.start()
    try:
        assert serve.process is not None
        # The store is open, and the connection to NATS and the API are still to come.
        wait_until(lambda: '"event":"postgres_store_opened"' in serve.log_path.read_text(), 30, "the store")
        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(30) == 0
        log_text = serve.log_path.read_text()
        assert '"event":"stop_requested"' in log_text
        assert '"event":"service_stopping"' in log_text
    finally:
        if serve.process is not None and serve.process.poll() is None:
            serve.kill()


def test_serve_stop_timeout_exits(
    serve_factory: Callable[..., ServeProcess], names: ServeNames, unanswered_url: str
) -> None:
    serve = serve_factory(ALERTWARDEN_WEBHOOK_URLS=unanswered_url, ALERTWARDEN_SHUTDOWN_TIMEOUT_S="1")
    start_stuck_delivery(serve, names)
    assert serve.terminate(timeout_s=15) == 1
    assert '"event":"stop_timed_out"' in serve.log_path.read_text()


def test_serve_rule_file_reload(
    tmp_path: Path, serve_factory: Callable[..., ServeProcess], names: ServeNames
) -> None:
    rules = tmp_path / "acme.yaml"
    rules.write_text(
        "- id: file-rule\n  match: {field: kind, equals: login_failed}\n  group_by: [host]\n"
        "  threshold: 3\n  window: 2m\n  bucket: 10s\n"
    )
    serve = serve_factory(ALERTWARDEN_RULE_FILES=f"acme={rules}")
    admin = serve.client()
    stored = admin.get("/v1/tenants/acme/rules/file-rule").json()
    assert stored["source"] == "file"
    assert stored["definition"]["window"] == 120
    assert stored["health"]["status"] == "inactive"
    assert admin.put("/v1/tenants/acme/features/stateful-rules", json={"enabled": True}).status_code == 200

    def status() -> str:
        return str(admin.get("/v1/tenants/acme/rules/file-rule").json()["health"]["status"])

    wait_until(lambda: status() == "healthy", 15, "the file rule's evaluator")

    valid = 'alertwarden_rule_files_valid{tenant="acme"} 1.0'
    invalid = 'alertwarden_rule_files_valid{tenant="acme"} 0.0'
    assert valid in admin.get("/metrics").text

    # An invalid file is rejected as a whole; version 1 stays in force.
    rules.write_text("- id: file-rule\n  threshold: many\n")
    wait_until(lambda: invalid in admin.get("/metrics").text, 15, "the rejection in the metrics")
    assert admin.get("/v1/tenants/acme/rules/file-rule").json()["version"] == 1
    assert '"event":"rule_file_rejected"' in serve.log_path.read_text()

    # A valid change applies without a restart: threshold 2 fires on two events.
    rules.write_text(
        "- id: file-rule\n  match: {field: kind, equals: login_failed}\n  group_by: [host]\n"
        "  threshold: 2\n  window: 2m\n  bucket: 10s\n"
    )
    wait_until(lambda: admin.get("/v1/tenants/acme/rules/file-rule").json()["version"] == 2, 15, "the reload")
    assert valid in admin.get("/metrics").text
    wait_until(lambda: status() == "healthy", 15, "the evaluator with version 2")
    publish(names.logs_subject_of("acme"), [login_failed(f"f{i}", "web-01") for i in range(2)])
    fired = wait_until(lambda: history(admin, "acme", kind="fired"), 20, "the alert of version 2")
    assert fired[0]["count"] == 2


def test_serve_restart_reads_events_of_downtime(
    serve_factory: Callable[..., ServeProcess], names: ServeNames
) -> None:
    serve = serve_factory()
    admin = serve.client()
    create_tenant(admin, "acme")
    short = {**RULE, "window": "10s", "bucket": "2s"}
    assert admin.put("/v1/tenants/acme/rules/ssh-fail", json=short).status_code == 200
    wait_until(lambda: rule_status(admin, "acme") == "healthy", 15, "the evaluator")
    assert serve.terminate() == 0

    # Stored while nothing runs, and older than the rule's window when serve starts again.
    publish(names.logs_subject_of("acme"), [login_failed(f"d{i}", "db-01") for i in range(3)])
    time.sleep(11)
    serve.close_clients()
    serve.start()
    serve.wait_ready()
    admin = serve.client()
    wait_until(lambda: len(history(admin, "acme")) >= 2, 20, "the downtime's alert and its recovery")
    assert [item["kind"] for item in history(admin, "acme")] == ["fired", "recovered"]


def test_serve_deleted_rule_group_state_removed(
    serve_factory: Callable[..., ServeProcess], names: ServeNames
) -> None:
    serve = serve_factory()
    admin = serve.client()
    create_tenant(admin, "acme")
    wait_until(lambda: rule_status(admin, "acme") == "healthy", 15, "the evaluator")
    publish(names.logs_subject_of("acme"), [login_failed(f"x{i}", "db-01") for i in range(2)])
    wait_until(lambda: admin.get("/v1/tenants/acme/rules/ssh-fail/groups").json()["items"], 15, "the stored group")

    def stored_rows() -> tuple[int, int]:
        with psycopg.connect(serve.env["ALERTWARDEN_DATABASE_URL"]) as conn:
            states = conn.execute("SELECT count(*) FROM rule_state WHERE tenant_id = 'acme'").fetchone()
            checkpoints = conn.execute(
                "SELECT count(*) FROM input_checkpoints WHERE tenant_id = 'acme'"
            ).fetchone()
        assert states is not None and checkpoints is not None
        return int(states[0]), int(checkpoints[0])

    assert stored_rows() == (1, 1)
    assert admin.delete("/v1/tenants/acme/rules/ssh-fail").status_code == 204
    wait_until(lambda: '"event":"rule_group_state_deleted"' in serve.log_path.read_text(), 15, "the state deletion")
    # A rule group created again starts one window back, not from the old checkpoint.
    assert stored_rows() == (0, 0)


def test_serve_counts_unknown_tenant_messages(
    serve_factory: Callable[..., ServeProcess], names: ServeNames
) -> None:
    serve = serve_factory()
    admin = serve.client()
    create_tenant(admin, "acme")
    wait_until(lambda: rule_status(admin, "acme") == "healthy", 15, "the evaluator")

    publish(names.logs_subject_of("ghost"), [login_failed(f"g{i}", "db-01") for i in range(3)])
    publish(names.logs_subject_of("acme"), [login_failed(f"a{i}", "db-01") for i in range(2)])
    sample = 'alertwarden_unknown_tenant_messages_total{tenant="ghost"} 3.0'
    wait_until(lambda: sample in admin.get("/metrics").text, 20, "the unknown tenant's count")

    metrics = admin.get("/metrics").text
    assert 'alertwarden_unknown_tenant_messages_total{tenant="acme"}' not in metrics
    assert '"event":"unknown_tenant_messages"' in serve.log_path.read_text()


def test_serve_deleted_rule_metrics_removed(serve_factory: Callable[..., ServeProcess], names: ServeNames) -> None:
    serve = serve_factory()
    admin = serve.client()
    create_tenant(admin, "acme")
    wait_until(lambda: rule_status(admin, "acme") == "healthy", 15, "the evaluator")
    publish(names.logs_subject_of("acme"), [login_failed("m1", "db-01")])
    live = 'alertwarden_live_groups{rule="ssh-fail",tenant="acme"} 1.0'
    wait_until(lambda: live in admin.get("/metrics").text, 15, "the rule's live group")
    assert 'alertwarden_rule_healthy{rule="ssh-fail",tenant="acme"} 1.0' in admin.get("/metrics").text

    assert admin.delete("/v1/tenants/acme/rules/ssh-fail").status_code == 204
    wait_until(lambda: '"event":"rule_group_state_deleted"' in serve.log_path.read_text(), 15, "the rule group's stop")

    metrics = admin.get("/metrics").text
    assert 'alertwarden_rule_healthy{rule="ssh-fail"' not in metrics
    assert 'alertwarden_live_groups{rule="ssh-fail"' not in metrics
    assert 'alertwarden_store_ready{rule_group=' not in metrics
    assert 'alertwarden_input_lag_seconds{rule_group=' not in metrics
