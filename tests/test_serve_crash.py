"""Crash recovery of `alertwarden serve`: kill -9 during a stream, compare with a run never killed.

Two serve processes read the same JetStream stream into two databases. One is killed with
SIGKILL at random moments and restarted; the other runs undisturbed. Both see the same messages
with the same stored times, so their transition histories must be identical.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import orjson
import psycopg
import pytest

from serve_fixture import NATS_URL, ServeNames, ServeProcess, WebhookReceiver, start_serve, wait_until

pytestmark = pytest.mark.slow

TENANTS = ("alpha", "bravo", "charlie")
EVENTS = 50_000
SEED = 20261204
STREAM_SECONDS = 20.0
RULES = {
    "bursts": {
        "match": {"field": "kind", "equals": "login_failed"},
        "group_by": ["host"],
        "threshold": 25,
        "window": "10s",
        "bucket": "2s",
        "cooldown": "6s",
        "renotify": "8s",
    },
    "errors": {
        "match": {"field": "kind", "equals": "error"},
        "group_by": ["host"],
        "threshold": 40,
        "window": "6s",
        "bucket": "2s",
        "cooldown": "0s",
        "renotify": "0s",
    },
}


def event_plan(seed: int) -> list[tuple[str, str, str]]:
    """Return (tenant, kind, host) per event: bursty hosts, so groups fire and recover often."""
    rng = random.Random(seed)
    plan = []
    hosts = [f"host-{index:02d}" for index in range(30)]
    hot: list[str] = []
    for index in range(EVENTS):
        if index % 2_000 == 0:
            hot = rng.sample(hosts, 4)
        host = rng.choice(hot) if rng.random() < 0.6 else rng.choice(hosts)
        kind = "login_failed" if rng.random() < 0.7 else "error"
        plan.append((rng.choice(TENANTS), kind, host))
    return plan


def publish_paced(names: ServeNames, plan: list[tuple[str, str, str]], done: threading.Event) -> None:
    """Publish the plan over STREAM_SECONDS, each event stamped with the time it is sent."""

    async def run() -> None:
        client = await nats.connect(NATS_URL)
        try:
            js = client.jetstream()
            chunk = 250
            pause_s = STREAM_SECONDS / (len(plan) / chunk)
            for start in range(0, len(plan), chunk):
                now = time.time()
                stamp = datetime.fromtimestamp(now, UTC).isoformat()
                for offset, (tenant, kind, host) in enumerate(plan[start : start + chunk]):
                    body = {"time": stamp, "id": f"e{start + offset}", "kind": kind, "host": host}
                    await client.publish(names.logs_subject_of(tenant), orjson.dumps(body))
                await client.flush()
                await asyncio.sleep(pause_s)
            # Every core publish is stored once the stream's last sequence reaches the count.
            info = await js.stream_info(names.stream)
            assert info.state.last_seq == len(plan)
        finally:
            await client.close()
            done.set()

    asyncio.run(run())


def transitions(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT tenant_id, rule_id, group_key::text, kind, at_s, count, transition_id"
            " FROM evaluation_history ORDER BY tenant_id, at_s, rule_id, group_key::text, kind"
        ).fetchall()
    return [tuple(row) for row in rows]


def all_recovered(database_url: str) -> bool:
    with psycopg.connect(database_url) as conn:
        firing = conn.execute("SELECT count(*) FROM rule_state WHERE status = 'firing'").fetchone()
    return firing is not None and firing[0] == 0


@pytest.fixture
def processes() -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for serve in started:
        serve.close_clients()
        if serve.process is not None and serve.process.poll() is None:
            serve.kill()


def setup_tenants(serve: ServeProcess) -> None:
    admin = serve.client()
    for tenant in TENANTS:
        assert admin.put(f"/v1/tenants/{tenant}").status_code in (200, 201)
        for rule_id, rule in RULES.items():
            response = admin.put(f"/v1/tenants/{tenant}/rules/{rule_id}", json=rule)
            assert response.status_code == 200, response.text
        assert admin.put(f"/v1/tenants/{tenant}/features/stateful-rules", json={"enabled": True}).status_code == 200

    def started() -> bool:
        return all(
            admin.get(f"/v1/tenants/{tenant}/rules/{rule_id}").json()["health"]["status"] == "healthy"
            for tenant in TENANTS
            for rule_id in RULES
        )

    wait_until(started, 20, "every evaluator to start")


def test_serve_kill9_matches_uninterrupted_run(
    tmp_path: Path,
    pg_database_factory: Callable[[], str],
    names: ServeNames,
    processes: list[ServeProcess],
) -> None:
    webhook = WebhookReceiver()
    webhook.start()
    try:
        run_crash_comparison(tmp_path, pg_database_factory, names, processes, webhook)
    finally:
        webhook.stop()


def run_crash_comparison(
    tmp_path: Path,
    pg_database_factory: Callable[[], str],
    names: ServeNames,
    processes: list[ServeProcess],
    webhook: WebhookReceiver,
) -> None:
    reference_url = pg_database_factory()
    crash_url = pg_database_factory()
    reference = start_serve(tmp_path, reference_url, names, name="reference")
    processes.append(reference)
    crashing = start_serve(tmp_path, crash_url, names, name="crashing", ALERTWARDEN_WEBHOOK_URLS=webhook.url)
    processes.append(crashing)
    setup_tenants(reference)
    setup_tenants(crashing)

    plan = event_plan(SEED)
    done = threading.Event()
    publisher = threading.Thread(target=publish_paced, args=(names, plan, done), daemon=True)
    publisher.start()

    rng = random.Random(SEED + 1)
    kills = 0
    while not done.wait(rng.uniform(2.0, 5.0)):
        crashing.kill()
        kills += 1
        crashing.start()
        crashing.wait_ready()
    publisher.join()
    assert kills >= 3

    # Both runs tick past every window once the stream is idle, so every group recovers.
    for url in (reference_url, crash_url):
        wait_until(lambda url=url: all_recovered(url), 60, "every group to recover", interval_s=0.5)
    expected = transitions(reference_url)
    got = transitions(crash_url)

    kinds = Counter(row[3] for row in expected)
    assert kinds["fired"] >= 10
    assert kinds["recovered"] == kinds["fired"]
    assert {row[0] for row in expected} == set(TENANTS)
    assert got == expected

    # Each transition reached the webhook. Each rule group (one per tenant here) delivers one
    # notification at a time, so a kill may repeat at most the one it had in flight.
    wait_until(lambda: len({body["id"] for body in webhook.bodies()}) == len(expected), 30, "webhook deliveries")
    delivered = Counter(body["id"] for body in webhook.bodies())
    assert set(delivered) == {row[6] for row in expected}
    repeats: Counter[str] = Counter()
    for body in webhook.bodies():
        repeats[body["tenant"]] += 1
    for tenant in TENANTS:
        sent_once = sum(1 for row in expected if row[0] == tenant)
        assert repeats[tenant] - sent_once <= kills, tenant
