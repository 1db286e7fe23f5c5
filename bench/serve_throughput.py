"""Measure `alertwarden serve` throughput from NATS JetStream to evaluated state, against fetch-only.

The paths run against the same stream. All but the split paths run in one process, on one event
loop, as the service does:

- fetch-only (path `fetch`): for each tenant, a pull consumer with the consumer settings of
  JetStreamInput (filter subject, fetch batch, no acknowledgements). Pull requests of one batch
  each, one at a time, and a subscription callback that only counts the messages. This is close
  to the least work nats-py allows per message, so the other paths are given as a ratio of it.
- fetch and acknowledge (path `fetch-ack`): the same pull requests and callback on a consumer
  with explicit acknowledgements, and the callback acknowledges each message. This is the
  baseline the goal names, a consumer that only fetches and acknowledges. The service itself
  acknowledges nothing, because its position is the checkpoint it stores with its state.
- nats-py fetch (path `nats-py-fetch`, not run by default): the same consumers read with
  nats-py's `PullSubscription.fetch`, which hands over each message through its own task.
- service: one RuleGroupWorker per tenant with rule group "default" and 10 rules, a real
  PostgresStore and the service's DiscardSink. The "evaluated" time ends when every worker's
  applied_offset has passed its tenant's last stream sequence (polled every 50 ms). The
  "flushed" time also includes stop(), which writes the final flush and checkpoint.
- serve process (path `serve-process`): a real `alertwarden serve` process on the same stream
  and database, with the API, metrics and lease sessions of a node. Its tenants and rules are
  created over the API with the stateful-rules flag off. The time runs from switching every
  flag on to the moment /metrics counts every event as evaluated. "Flushed" also includes the
  SIGTERM stop, which flushes every evaluator.
- service-split and fetch-split: the service and fetch paths in --processes child processes
  (default: the CPU count), each with the tenants dealt to it round-robin, as that many `serve`
  nodes on one host divide the rule groups. The children connect and build their workers first;
  the time runs from one "go" message to all of them to the last one's end.

Before any timing, the script creates a stream AW_BENCH_<hex> and a database aw_bench_<hex>
(migrated), and publishes the events with core NATS publish, stamped with the current time.
Both are deleted at the end, also after an error. Each service pass starts from empty state:
the state, checkpoint and history tables are truncated before it. The paths alternate their
order from one repetition to the next, so a drift in machine load affects both.

Run: python bench/serve_throughput.py [--events N] [--repeats R]. See bench/README.md for figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import platform
import random
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from multiprocessing.connection import Connection
from dataclasses import dataclass, field
from typing import Any

import httpx
import nats
import orjson
import psycopg
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.aio.msg import Msg
from nats.js.api import DEFAULT_PREFIX, AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from psycopg import sql

import alertwarden
from alertwarden.events import Signal
from alertwarden.logs import configure_logging
from alertwarden.rules import load_rules_text
from alertwarden.service.runtime import DiscardSink, tune_gc
from alertwarden.service.worker import RuleGroupWorker, WorkerConfig, WorkerState
from alertwarden.settings import Settings
from alertwarden.sources.jetstream import (
    JetStreamSettings,
    ensure_stream,
    publish_subject,
    tenant_subject,
)
from alertwarden.store.migrate import migrate
from alertwarden.store.postgres import PostgresStore
# The event vocabulary of the engine benchmark, so both measure the same kind of events.
from engine_throughput import EVENT_CLASSES, SEVERITIES  # bench/ is sys.path[0] when run as a script

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

HOT_KEY_COUNT = 10
HOT_KEY_SHARE = 0.1
"""Share of a tenant's events sent by a few hot addresses, so that some groups fire."""

RULE_GROUP = "default"
WINDOW_S = 600
BUCKET_S = 60
SEED = 20261204
TARGET_RATIO = 0.5
POLL_INTERVAL_S = 0.05
LOOKBACK_MARGIN_S = 30.0
PATHS = ("fetch", "fetch-ack", "nats-py-fetch", "service", "serve-process", "fetch-split", "service-split")
SPLIT_PATHS = {"fetch-split": "fetch", "service-split": "service"}
"""Paths that run in --processes child processes, and the path each child runs."""
STATUS_HEADER = "Status"
"""Header of the status replies that end or accompany a JetStream pull request."""
STATE_TABLES = ("rule_state", "input_checkpoints", "evaluation_history")


def setting_default(name: str) -> Any:
    """Return the default of one service setting, so the workers run as `serve` runs them."""
    return Settings.model_fields[name].default


# ------------------------------------------------------------------------------- data and rules


@dataclass(frozen=True, slots=True)
class Workload:
    """Events in publish order, as (tenant index, record); publishing sets each record's time."""

    tenants: tuple[str, ...]
    events: list[tuple[int, dict[str, object]]]


def address(index: int) -> str:
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


def generate_workload(event_count: int, tenant_count: int, key_count: int, seed: int = SEED) -> Workload:
    """Spread `event_count` events uniformly over the tenants, deterministic for `seed`.

    Each event has one of 10 event classes, so it matches exactly one of its tenant's rules.
    Its src_ip is uniform over `key_count` addresses, except for a share of HOT_KEY_SHARE that
    comes from the first HOT_KEY_COUNT addresses.
    """
    rng = random.Random(seed)
    tenants = tuple(f"tenant-{index:02d}" for index in range(tenant_count))
    addresses = [address(index) for index in range(key_count)]
    hot = addresses[: min(HOT_KEY_COUNT, key_count)]
    hosts = [f"host-{index:03d}" for index in range(50)]
    events: list[tuple[int, dict[str, object]]] = []
    for _ in range(event_count):
        source = rng.choice(hot) if rng.random() < HOT_KEY_SHARE else rng.choice(addresses)
        record: dict[str, object] = {
            "event_class": rng.choice(EVENT_CLASSES),
            "src_ip": source,
            "host": rng.choice(hosts),
            "severity": rng.choice(SEVERITIES),
        }
        events.append((rng.randrange(tenant_count), record))
    return Workload(tenants, events)


def rules_yaml(signal: str, threshold: int) -> str:
    """Return 10 rules grouped by src_ip, where rule i matches event_class == EVENT_CLASSES[i]."""
    parts: list[str] = []
    for index, event_class in enumerate(EVENT_CLASSES):
        parts.append(
            f"- id: rule-{index}\n"
            f"  group: {RULE_GROUP}\n"
            f"  signal: {signal}\n"
            f"  match: {{field: event_class, equals: {event_class}}}\n"
            f"  group_by: [src_ip]\n"
            f"  threshold: {threshold}\n"
            f"  window: {WINDOW_S}s\n"
            f"  bucket: {BUCKET_S}s\n"
        )
    return "".join(parts)


def rule_signals(signal: str) -> tuple[Signal, ...]:
    """Return the signals a rule group reads when all its rules have `signal`, as the worker does."""
    if signal == "any":
        return (Signal.LOGS, Signal.EVENTS)
    return (Signal(signal),)


# ------------------------------------------------------------------------- scratch resources


def database_url(admin_url: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo("", **{k: v for k, v in info.items() if v is not None})


@asynccontextmanager
async def scratch_database(admin_url: str) -> AsyncIterator[str]:
    """Create and migrate a database aw_bench_<hex>, yield its URL, and drop it at the end."""
    name = f"aw_bench_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = database_url(admin_url, name)
        await migrate(url)
        yield url
    finally:
        async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@asynccontextmanager
async def scratch_stream(js: JetStreamContext, nats_url: str) -> AsyncIterator[JetStreamSettings]:
    """Create a stream AW_BENCH_<hex> with its own subject prefix, and delete it at the end."""
    suffix = uuid.uuid4().hex[:12]
    prefix = f"awbench{suffix}"
    settings = JetStreamSettings(
        url=nats_url,
        stream=f"AW_BENCH_{suffix.upper()}",
        logs_subject=f"{prefix}.logs.{{tenant}}.>",
        events_subject=f"{prefix}.events.{{tenant}}.>",
        fetch_batch=setting_default("fetch_batch"),
        # JetStream reserves max_bytes of its storage for each stream; keep the reservation small.
        max_bytes=1024**3,
    )
    # The stream takes every tenant's subjects, as Service._stream_subjects builds them.
    subjects = [f"{prefix}.logs.*.>", f"{prefix}.events.*.>"]
    await ensure_stream(js, settings, subjects)
    try:
        yield settings
    finally:
        await js.delete_stream(settings.stream)


async def reset_state(url: str) -> None:
    """Empty the tables a service pass writes, so every pass starts without checkpoints."""
    tables = sql.SQL(", ").join(sql.Identifier(table) for table in STATE_TABLES)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql.SQL("TRUNCATE {}").format(tables))


# -------------------------------------------------------------------------------- publishing


async def publish_workload(
    nc: NatsClient, js: JetStreamContext, settings: JetStreamSettings, workload: Workload
) -> dict[str, int]:
    """Publish every event on its tenant's logs subject and return each tenant's last stream sequence.

    Core publish without acknowledgements is much faster than JetStream publish from Python, so
    the script checks afterwards that the stream stored every message.
    """
    subjects = [publish_subject(settings, tenant, Signal.LOGS) for tenant in workload.tenants]
    now_s = time.time()
    for index, (tenant_index, record) in enumerate(workload.events):
        if index % 1000 == 0:
            now_s = time.time()
        # The evaluator's clock is the stored time, so an event stamped now is within its window.
        record["time"] = now_s
        await nc.publish(subjects[tenant_index], orjson.dumps(record))
    await nc.flush()

    expected = len(workload.events)
    deadline = time.monotonic() + 30.0
    while (stored := (await js.stream_info(settings.stream)).state.messages) < expected:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"stream {settings.stream} stored {stored:,} of {expected:,} published messages "
                "after 30 s; check the nats-server log for dropped messages or storage limits"
            )
        await asyncio.sleep(0.1)

    last_sequences: dict[str, int] = {}
    for tenant in workload.tenants:
        subject = publish_subject(settings, tenant, Signal.LOGS)
        last_sequences[tenant] = (await js.get_last_msg(settings.stream, subject)).seq or 0
    return last_sequences


# ---------------------------------------------------------------------------------- fetch-only


@dataclass(slots=True)
class FetchPass:
    seconds: float
    delivered: int
    """Messages the consumers received, more than the events when the server ignores filters."""


class PullCounter:
    """Pull requests on one consumer, one request at a time, with a callback that counts messages.

    nats-py parses each message and hands it to this callback, which counts it, acknowledges it
    when `acknowledge` is set, and returns. Each request is for `fetch_batch` messages and expires
    after `fetch_timeout_s`.
    """

    def __init__(
        self, nc: NatsClient, settings: JetStreamSettings, consumer: str, pending: int, acknowledge: bool = False
    ) -> None:
        self.nc = nc
        self.acknowledge = acknowledge
        self.subject = f"{DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{settings.stream}.{consumer}"
        self.settings = settings
        self.pending = pending
        self.delivered = 0
        self._in_request = 0
        self._status: str | None = None
        self._request_done = asyncio.Event()

    async def _on_message(self, message: Msg) -> None:
        status = message.headers.get(STATUS_HEADER) if message.headers else None
        if status is not None:
            # 100 is a heartbeat. Any other status (404, 408, 409) ends the request.
            if status != "100":
                self._status = status
                self._request_done.set()
            return
        if self.acknowledge:
            await message.ack()
        self.delivered += 1
        self._in_request += 1
        if self._in_request == self.settings.fetch_batch or self.delivered >= self.pending:
            self._request_done.set()

    async def run(self) -> int:
        """Send requests until every pending message has arrived, and return the message count."""
        inbox = self.nc.new_inbox()
        subscription = await self.nc.subscribe(
            inbox, cb=self._on_message, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        expires_ns = int(self.settings.fetch_timeout_s * 1_000_000_000)
        request = orjson.dumps({"batch": self.settings.fetch_batch, "expires": expires_ns})
        try:
            while self.delivered < self.pending:
                self._in_request = 0
                self._status = None
                self._request_done.clear()
                await self.nc.publish(self.subject, request, reply=inbox)
                try:
                    # The server ends a request by its expiry at the latest; 1 s covers the round trip.
                    await asyncio.wait_for(self._request_done.wait(), self.settings.fetch_timeout_s + 1.0)
                except TimeoutError:
                    raise SystemExit(
                        f"pull request on {self.subject} got no reply within "
                        f"{self.settings.fetch_timeout_s + 1.0:.0f} s; check the nats-server log"
                    ) from None
                if self._status not in (None, "404", "408"):
                    raise SystemExit(
                        f"pull request on {self.subject} failed with status {self._status} after "
                        f"{self.delivered:,} of {self.pending:,} messages; check the nats-server log"
                    )
        finally:
            await subscription.unsubscribe()
        return self.delivered


async def add_fetch_consumer(
    js: JetStreamContext,
    settings: JetStreamSettings,
    tenant: str,
    signals: Sequence[Signal],
    ack_policy: AckPolicy = AckPolicy.NONE,
) -> ConsumerInfo:
    """Create the tenant's consumer as JetStreamInput._open configures it, but for `ack_policy`.

    It starts at the first stored message. That reads the same messages as the workers' start
    time, because the stream contains only this run's messages.
    """
    patterns = [tenant_subject(settings, tenant, signal) for signal in signals]
    config = ConsumerConfig(
        ack_policy=ack_policy,
        deliver_policy=DeliverPolicy.ALL,
        inactive_threshold=settings.consumer_inactive_s,
    )
    if len(patterns) == 1:
        config.filter_subject = patterns[0]
    else:
        config.filter_subjects = patterns
    return await js.add_consumer(settings.stream, config=config)


async def fetch_with_callback(
    nc: NatsClient, js: JetStreamContext, settings: JetStreamSettings, tenant: str, signals: Sequence[Signal]
) -> tuple[str, int]:
    """Read every message of the tenant's consumer with PullCounter and return the consumer and count."""
    info = await add_fetch_consumer(js, settings, tenant, signals)
    # num_pending is what the server will deliver: the whole stream when it ignores the filter.
    counter = PullCounter(nc, settings, info.name, info.num_pending or 0)
    return info.name, await counter.run()


async def fetch_and_acknowledge(
    nc: NatsClient, js: JetStreamContext, settings: JetStreamSettings, tenant: str, signals: Sequence[Signal]
) -> tuple[str, int]:
    """Read every message of a tenant's consumer with explicit acknowledgements, acknowledging each one."""
    info = await add_fetch_consumer(js, settings, tenant, signals, AckPolicy.EXPLICIT)
    counter = PullCounter(nc, settings, info.name, info.num_pending or 0, acknowledge=True)
    delivered = await counter.run()
    # The last acknowledgements may still wait in the client's write buffer. A consumer is done
    # only once it has sent them.
    await nc.flush()
    return info.name, delivered


async def fetch_with_nats_py(
    nc: NatsClient, js: JetStreamContext, settings: JetStreamSettings, tenant: str, signals: Sequence[Signal]
) -> tuple[str, int]:
    """Read every message of the tenant's consumer with nats-py's PullSubscription.fetch."""
    info = await add_fetch_consumer(js, settings, tenant, signals)
    subscription = await js.pull_subscribe_bind(consumer=info.name, stream=settings.stream)
    pending = info.num_pending or 0
    delivered = 0
    try:
        while delivered < pending:
            try:
                messages = await subscription.fetch(settings.fetch_batch, timeout=settings.fetch_timeout_s)
            except TimeoutError:
                raise SystemExit(
                    f"fetch-only consumer of {tenant} timed out after {delivered:,} of {pending:,} "
                    f"messages; check that stream {settings.stream} still contains them"
                ) from None
            delivered += len(messages)
    finally:
        await subscription.unsubscribe()
    return info.name, delivered


FETCHERS = {"fetch": fetch_with_callback, "fetch-ack": fetch_and_acknowledge, "nats-py-fetch": fetch_with_nats_py}


async def run_fetch_pass(
    path: str,
    nc: NatsClient,
    js: JetStreamContext,
    settings: JetStreamSettings,
    tenants: Sequence[str],
    signals: Sequence[Signal],
) -> FetchPass:
    fetcher = FETCHERS[path]
    gc.collect()
    started = time.perf_counter()
    results = await asyncio.gather(*(fetcher(nc, js, settings, tenant, signals) for tenant in tenants))
    seconds = time.perf_counter() - started
    # Deleting the consumers is not timed. The workers delete theirs in stop(), which only the
    # service's flushed time includes.
    for consumer, _ in results:
        await js.delete_consumer(settings.stream, consumer)
    return FetchPass(seconds, sum(delivered for _, delivered in results))


# ------------------------------------------------------------------------------ service path


@dataclass(slots=True)
class ServicePass:
    evaluated_s: float
    flushed_s: float
    flushes: int = 0
    flushed_rows: int = 0
    flush_seconds: float = 0.0
    """Summed over the workers. Their flushes overlap in time, so the sum can exceed the pass time."""
    transitions: int = 0
    events: int = 0
    matched: int = 0
    late: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def worker_config(js: JetStreamContext, settings: JetStreamSettings, store: PostgresStore) -> WorkerConfig:
    return WorkerConfig(
        store=store,
        js=js,
        jetstream=settings,
        sink=DiscardSink(),
        max_future_skew_s=setting_default("max_future_skew_s"),
        history_retention_s=setting_default("history_retention_s"),
        tick_delay_s=setting_default("tick_delay_s"),
        queue_batches=setting_default("queue_batches"),
        max_message_bytes=setting_default("max_message_bytes"),
    )


async def wait_until_applied(
    workers: Sequence[RuleGroupWorker], last_sequences: dict[str, int], timeout_s: float
) -> None:
    """Return once every worker has applied its tenant's last message.

    Raises SystemExit when a worker failed or `timeout_s` passed.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        failed = [w.tenant for w in workers if w.state is WorkerState.FAILED or w.restarts]
        if failed:
            raise SystemExit(
                f"the workers of {', '.join(failed)} failed: the evaluator_failed log lines above give the error"
            )
        behind = [w for w in workers if w.applied_offset <= last_sequences[w.tenant]]
        if not behind:
            return
        if time.monotonic() > deadline:
            positions = ", ".join(
                f"{w.tenant} at {w.applied_offset} of {last_sequences[w.tenant]}" for w in behind
            )
            raise SystemExit(
                f"service pass timed out after {timeout_s:g} s with workers behind ({positions}): raise "
                "--timeout-s, or check the warnings above"
            )
        await asyncio.sleep(POLL_INTERVAL_S)


def build_workers(
    js: JetStreamContext, settings: JetStreamSettings, store: PostgresStore, tenants: Sequence[str], rules_text: str
) -> list[RuleGroupWorker]:
    config = worker_config(js, settings, store)
    # One rule list per worker, as the service's catalog builds them, because compiled rules
    # carry run-time counters.
    return [RuleGroupWorker(tenant, RULE_GROUP, load_rules_text(rules_text), config) for tenant in tenants]


@dataclass(slots=True)
class WorkerRun:
    """Monotonic clock readings of one set of workers, comparable across the processes of a host."""

    started: float
    evaluated: float
    flushed: float


async def run_workers(
    workers: Sequence[RuleGroupWorker], last_sequences: dict[str, int], timeout_s: float, on_evaluated: Any = None
) -> WorkerRun:
    """Start the workers, wait until they applied their tenants' last messages, and stop them."""
    started = time.monotonic()
    for worker in workers:
        worker.start()
    try:
        await wait_until_applied(workers, last_sequences, timeout_s)
        evaluated = time.monotonic()
        if on_evaluated is not None:
            on_evaluated(evaluated)
    finally:
        await asyncio.gather(*(worker.stop() for worker in workers))
    return WorkerRun(started, evaluated, time.monotonic())


def worker_totals(workers: Sequence[RuleGroupWorker], seconds: WorkerRun) -> ServicePass:
    result = ServicePass(seconds.evaluated - seconds.started, seconds.flushed - seconds.started)
    for worker in workers:
        pipeline = worker.pipeline
        assert pipeline is not None, "a worker that applied messages has a pipeline"
        result.flushes += pipeline.stats.flushes
        result.flushed_rows += pipeline.stats.flushed_rows
        result.flush_seconds += pipeline.stats.flush_seconds
        result.transitions += pipeline.stats.transitions
        result.events += pipeline.evaluator.stats.events
        for rule_stats in pipeline.evaluator.stats.rules.values():
            result.matched += rule_stats.matched
            result.late += rule_stats.late
        for reason, count in worker.counters.skipped.items():
            result.skipped[reason] = result.skipped.get(reason, 0) + count
    return result


def add_totals(total: ServicePass, part: ServicePass) -> None:
    total.flushes += part.flushes
    total.flushed_rows += part.flushed_rows
    total.flush_seconds += part.flush_seconds
    total.transitions += part.transitions
    total.events += part.events
    total.matched += part.matched
    total.late += part.late
    for reason, count in part.skipped.items():
        total.skipped[reason] = total.skipped.get(reason, 0) + count


async def run_service_pass(
    js: JetStreamContext,
    settings: JetStreamSettings,
    store: PostgresStore,
    tenants: Sequence[str],
    rules_text: str,
    last_sequences: dict[str, int],
    timeout_s: float,
) -> ServicePass:
    workers = build_workers(js, settings, store, tenants, rules_text)
    gc.collect()
    seconds = await run_workers(workers, last_sequences, timeout_s)
    return worker_totals(workers, seconds)


# --------------------------------------------------------------------------- serve process

SERVE_START_TIMEOUT_S = 60.0
SERVE_STOP_TIMEOUT_S = 120.0
METRICS_POLL_FIRST_S = 0.25
METRICS_POLL_FAST_S = 0.05
"""A scrape of /metrics refreshes every series of the node, which costs the node CPU. So the pass
scrapes once after METRICS_POLL_FIRST_S and then sleeps for about 80 % of the time that the rate
so far predicts for the rest. Only near the end does it scrape every METRICS_POLL_FAST_S, which
times the end within 50 ms with a few scrapes per pass."""


def rule_bodies(signal_name: str, threshold: int) -> dict[str, dict[str, object]]:
    """Return the rules of rules_yaml as API bodies, by rule id."""
    return {
        f"rule-{index}": {
            "group": RULE_GROUP,
            "signal": signal_name,
            "match": {"field": "event_class", "equals": event_class},
            "group_by": ["src_ip"],
            "threshold": threshold,
            "window": f"{WINDOW_S}s",
            "bucket": f"{BUCKET_S}s",
        }
        for index, event_class in enumerate(EVENT_CLASSES)
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(slots=True)
class ServeProcess:
    """One `alertwarden serve` child on a loopback port, with the admin token of this run."""

    process: subprocess.Popen[bytes]
    client: httpx.AsyncClient

    @classmethod
    async def start(cls, nats_url: str, settings: JetStreamSettings, url: str) -> ServeProcess:
        port = free_port()
        token = secrets.token_hex(16)
        env = {
            **os.environ,
            "ALERTWARDEN_DATABASE_URL": url,
            "ALERTWARDEN_NATS_URL": nats_url,
            "ALERTWARDEN_STREAM": settings.stream,
            "ALERTWARDEN_LOGS_SUBJECT": settings.logs_subject,
            "ALERTWARDEN_EVENTS_SUBJECT": settings.events_subject,
            "ALERTWARDEN_STREAM_MAX_BYTES": str(settings.max_bytes),
            "ALERTWARDEN_ADMIN_TOKEN": token,
            "ALERTWARDEN_BIND_PORT": str(port),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "alertwarden", "serve", "--log-level", "warning"], env=env
        )
        client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30.0
        )
        serve = cls(process, client)
        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                await client.aclose()
                raise SystemExit(f"alertwarden serve exited with status {process.returncode}; see its log above")
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return serve
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                await serve.kill()
                raise SystemExit(f"alertwarden serve did not respond to /healthz within {SERVE_START_TIMEOUT_S:g} s")
            await asyncio.sleep(0.1)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.request(method, path, **kwargs)
        if response.status_code >= 300:
            raise SystemExit(f"{method} {path} returned {response.status_code}: {response.text}")
        return response

    async def evaluated_events(self) -> int:
        """Return the events that the node's evaluators counted, matched or not, from /metrics."""
        text = (await self.request("GET", "/metrics")).text
        total = 0
        for line in text.splitlines():
            if line.startswith("alertwarden_events_total{") and (
                'result="matched"' in line or 'result="unmatched"' in line
            ):
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    async def stop(self) -> None:
        """Send SIGTERM and wait for the graceful stop, which flushes every evaluator."""
        self.process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        try:
            status = await loop.run_in_executor(None, self.process.wait, SERVE_STOP_TIMEOUT_S)
        finally:
            await self.client.aclose()
        if status != 0:
            raise SystemExit(f"alertwarden serve stopped with status {status}; see its log above")

    async def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        await self.client.aclose()


async def prepare_serve_tenants(serve: ServeProcess, tenants: Sequence[str], bodies: dict[str, dict[str, object]]) -> None:
    """Create the tenants and their rules over the API, unless a previous pass did."""
    for tenant in tenants:
        await serve.request("PUT", f"/v1/tenants/{tenant}")
        for rule_id, body in bodies.items():
            await serve.request("PUT", f"/v1/tenants/{tenant}/rules/{rule_id}", json=body)


async def switch_flags(url: str, enabled: bool) -> None:
    """Set every tenant's stateful-rules flag in one statement, which a node reads at its next poll."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("UPDATE tenants SET stateful_rules = %s", (enabled,))


async def run_serve_process_pass(
    args: argparse.Namespace,
    settings: JetStreamSettings,
    url: str,
    tenants: Sequence[str],
    event_count: int,
) -> ServicePass:
    """Time a serve process from the flag switch to all events evaluated, and to its stop.

    The process starts with every tenant's flag off, so nothing is evaluated before the clock
    starts. State tables are emptied before the start, as for the other service passes. The
    clock starts before one statement switches every flag on and one API call switches the last
    tenant's again, which makes the node reconcile at once and start all evaluators together.
    Ten API calls, one per tenant, would start them one reconcile apart instead, about 1 s
    from the first to the last on the 2-core machine, while the first ones already evaluate.
    """
    await switch_flags(url, False)
    serve = await ServeProcess.start(args.nats_url, settings, url)
    try:
        await prepare_serve_tenants(serve, tenants, rule_bodies(args.signal, args.threshold))
        started = time.monotonic()
        await switch_flags(url, True)
        await serve.request("PUT", f"/v1/tenants/{tenants[-1]}/features/stateful-rules", json={"enabled": True})
        deadline = started + args.timeout_s
        evaluated_count = 0
        wait_s = METRICS_POLL_FIRST_S
        while evaluated_count < event_count:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"serve process evaluated {evaluated_count:,} of {event_count:,} events in "
                    f"{args.timeout_s:g} s: raise --timeout-s, or check its log above"
                )
            await asyncio.sleep(wait_s)
            evaluated_count = await serve.evaluated_events()
            elapsed = time.monotonic() - started
            if evaluated_count:
                remaining_s = (event_count - evaluated_count) * elapsed / evaluated_count
                wait_s = max(METRICS_POLL_FAST_S, 0.8 * remaining_s)
            else:
                wait_s = METRICS_POLL_FAST_S
        evaluated = time.monotonic()
    except BaseException:
        await serve.kill()
        raise
    await serve.stop()
    flushed = time.monotonic()
    if evaluated_count != event_count:
        raise SystemExit(f"serve process evaluated {evaluated_count:,} events, expected {event_count:,}")
    result = ServicePass(evaluated - started, flushed - started)
    result.events = evaluated_count
    result.matched = evaluated_count
    return result


# ------------------------------------------------------------------------- split over processes


@dataclass(frozen=True, slots=True)
class ChildJob:
    """The work of one child process of a split path; `path` is "fetch" or "service"."""

    path: str
    tenants: tuple[str, ...]
    nats_url: str
    settings: JetStreamSettings
    database_url: str
    signals: tuple[Signal, ...]
    rules_text: str
    last_sequences: dict[str, int]
    timeout_s: float


def split_tenants(tenants: Sequence[str], processes: int) -> list[tuple[str, ...]]:
    """Deal the tenants out round-robin: the even split that `serve` nodes reach by fair_share."""
    return [part for part in (tuple(tenants[index::processes]) for index in range(processes)) if part]


def run_child(job: ChildJob, conn: Connection) -> None:
    """Entry point of a child process: report ready, wait for "go", run the job, send its result."""
    configure_logging("warning")
    try:
        asyncio.run(child_main(job, conn))
    except BaseException as error:  # noqa: BLE001 - any failure must reach the parent as text
        conn.send(("error", f"{type(error).__name__}: {error}"))
        raise


async def child_main(job: ChildJob, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    nc = await nats.connect(job.nats_url, connect_timeout=5, max_reconnect_attempts=0)
    store: PostgresStore | None = None
    try:
        js = nc.jetstream()
        workers: list[RuleGroupWorker] = []
        if job.path == "service":
            store = PostgresStore(job.database_url, pool_max=setting_default("database_pool_max"))
            await store.open()
            workers = build_workers(js, job.settings, store, job.tenants, job.rules_text)
        tune_gc()
        gc.collect()
        conn.send(("ready",))
        await loop.run_in_executor(None, conn.recv)
        if job.path == "fetch":
            started = time.monotonic()
            results = await asyncio.gather(
                *(fetch_with_callback(nc, js, job.settings, tenant, job.signals) for tenant in job.tenants)
            )
            done = time.monotonic()
            for consumer, _ in results:
                await js.delete_consumer(job.settings.stream, consumer)
            conn.send(("fetched", started, done, sum(delivered for _, delivered in results)))
            return
        seconds = await run_workers(
            workers, job.last_sequences, job.timeout_s, on_evaluated=lambda at: conn.send(("evaluated", at))
        )
        conn.send(("flushed", seconds, worker_totals(workers, seconds)))
    finally:
        if store is not None:
            await store.close()
        await nc.close()


async def run_split_pass(jobs: Sequence[ChildJob]) -> FetchPass | ServicePass:
    """Run each job in a process of its own, started together once every process is ready.

    The times run from the "go" message to the last process's end, on the monotonic clock, which
    all processes of one host share. Process start, imports and connections are not timed.
    """
    context = multiprocessing.get_context("spawn")
    pipes = [context.Pipe() for _ in jobs]
    children = [
        context.Process(target=run_child, args=(job, child_end), name=f"bench-{job.path}-{index}", daemon=True)
        for index, (job, (_, child_end)) in enumerate(zip(jobs, pipes, strict=True))
    ]
    loop = asyncio.get_running_loop()

    async def receive(conn: Connection, expected: str) -> tuple[Any, ...]:
        try:
            message = await loop.run_in_executor(None, conn.recv)
        except EOFError:
            raise SystemExit("a benchmark child process exited without a result; see its output above") from None
        if message[0] != expected:
            raise SystemExit(f"a benchmark child process failed: {message[-1]}")
        return message

    for child in children:
        child.start()
    try:
        for parent_end, _ in pipes:
            await receive(parent_end, "ready")
        started = time.monotonic()
        for parent_end, _ in pipes:
            parent_end.send("go")
        if jobs[0].path == "fetch":
            fetched = [await receive(parent_end, "fetched") for parent_end, _ in pipes]
            return FetchPass(max(message[2] for message in fetched) - started, sum(m[3] for m in fetched))
        evaluated = [await receive(parent_end, "evaluated") for parent_end, _ in pipes]
        flushed = [await receive(parent_end, "flushed") for parent_end, _ in pipes]
        result = ServicePass(
            max(message[1] for message in evaluated) - started,
            max(message[1].flushed for message in flushed) - started,
        )
        for message in flushed:
            add_totals(result, message[2])
        return result
    finally:
        for child in children:
            await loop.run_in_executor(None, child.join, 30.0)
            if child.is_alive():
                child.kill()


def check_service_pass(result: ServicePass, event_count: int) -> None:
    """Fail unless the workers evaluated every published event, each with one matching rule.

    This checks the totals, with no event late or skipped, not the identity of each event.
    """
    problems: list[str] = []
    if result.events != event_count:
        problems.append(f"{result.events:,} events evaluated, expected {event_count:,}")
    if result.matched != event_count:
        problems.append(f"{result.matched:,} rule matches, expected {event_count:,} (one per event)")
    if result.late:
        problems.append(f"{result.late:,} events counted as late")
    if result.skipped:
        problems.append(f"records skipped: {result.skipped}")
    if problems:
        raise SystemExit("invalid service pass: " + "; ".join(problems))


# ------------------------------------------------------------------------------------ driver


@dataclass(slots=True)
class Measurements:
    fetch: dict[str, list[FetchPass]] = field(default_factory=dict)
    service: dict[str, list[ServicePass]] = field(default_factory=dict)


async def measure(args: argparse.Namespace, paths: Sequence[str]) -> None:
    workload = generate_workload(args.events, args.tenants, args.keys)
    nc = await nats.connect(args.nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        async with scratch_stream(js, args.nats_url) as settings, scratch_database(args.pg_url) as url:
            print_header(args, nc, await server_version(url), settings)
            published_at = time.time()
            last_sequences = await publish_workload(nc, js, settings, workload)
            print(f"published {args.events:,} events in {time.time() - published_at:.1f} s", file=sys.stderr)
            store = PostgresStore(url, pool_max=setting_default("database_pool_max"))
            await store.open()
            # As `serve` does once it has started; it applies to every path of this process.
            tune_gc()
            try:
                measurements = await measure_paths(
                    args, paths, nc, settings, store, url, workload, last_sequences, published_at
                )
            finally:
                await store.close()
    finally:
        await nc.close()
    print_results(measurements, args.events, args.processes)


async def measure_paths(
    args: argparse.Namespace,
    paths: Sequence[str],
    nc: NatsClient,
    settings: JetStreamSettings,
    store: PostgresStore,
    url: str,
    workload: Workload,
    last_sequences: dict[str, int],
    published_at: float,
) -> Measurements:
    js = nc.jetstream()
    measurements = Measurements()
    signals = rule_signals(args.signal)
    rules_text = rules_yaml(args.signal, args.threshold)
    for repeat in range(args.repeats):
        order = list(paths) if repeat % 2 == 0 else list(reversed(paths))
        for path in order:
            if path in FETCHERS:
                fetch = await run_fetch_pass(path, nc, js, settings, workload.tenants, signals)
            elif path == "fetch-split":
                fetch = await run_split_pass(split_jobs("fetch", args, settings, url, workload, last_sequences))
            else:
                fetch = None
            if fetch is not None:
                assert isinstance(fetch, FetchPass)
                measurements.fetch.setdefault(path, []).append(fetch)
                print(f"  {path}: {fetch.seconds:.2f} s", file=sys.stderr, flush=True)
                continue
            # A worker without a checkpoint starts reading one window before the wall clock.
            if time.time() - published_at > WINDOW_S - LOOKBACK_MARGIN_S:
                raise SystemExit(
                    f"the events were published more than {WINDOW_S - LOOKBACK_MARGIN_S:.0f} s ago, so new "
                    f"workers (which read back {WINDOW_S} s) would miss some; lower --events or --repeats"
                )
            await reset_state(url)
            if path == "service":
                service = await run_service_pass(
                    js, settings, store, workload.tenants, rules_text, last_sequences, args.timeout_s
                )
            elif path == "serve-process":
                service = await run_serve_process_pass(args, settings, url, workload.tenants, len(workload.events))
            else:
                split = await run_split_pass(split_jobs("service", args, settings, url, workload, last_sequences))
                assert isinstance(split, ServicePass)
                service = split
            check_service_pass(service, len(workload.events))
            measurements.service.setdefault(path, []).append(service)
            print(
                f"  {path}: evaluated {service.evaluated_s:.2f} s, flushed {service.flushed_s:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    return measurements


def split_jobs(
    path: str,
    args: argparse.Namespace,
    settings: JetStreamSettings,
    url: str,
    workload: Workload,
    last_sequences: dict[str, int],
) -> list[ChildJob]:
    return [
        ChildJob(
            path=path,
            tenants=tenants,
            nats_url=args.nats_url,
            settings=settings,
            database_url=url,
            signals=rule_signals(args.signal),
            rules_text=rules_yaml(args.signal, args.threshold),
            last_sequences={tenant: last_sequences[tenant] for tenant in tenants},
            timeout_s=args.timeout_s,
        )
        for tenants in split_tenants(workload.tenants, args.processes)
    ]


# ------------------------------------------------------------------------------------ report


async def server_version(url: str) -> str:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        row = await (await conn.execute("SHOW server_version")).fetchone()
    return str(row[0]) if row else "unknown"


def describe_machine() -> str:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"nproc {os.cpu_count()}, CPU {model}, Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"


def describe_code() -> str:
    """Return the commit of the imported alertwarden package and its files that differ from it."""
    package_dir = os.path.dirname(os.path.abspath(alertwarden.__file__))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=package_dir, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "."], cwd=package_dir, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return f"{package_dir}, not in a git checkout"
    changed = [line[3:] for line in status.splitlines()]
    return f"{commit}, uncommitted changes in {', '.join(changed)}" if changed else commit


def print_header(args: argparse.Namespace, nc: NatsClient, pg_version: str, settings: JetStreamSettings) -> None:
    print(f"command: {shlex.join(sys.orig_argv)}")
    print(f"machine: {describe_machine()}")
    print(f"code: {describe_code()}")
    version = nc.connected_server_version
    print(f"servers: nats-server {version.major}.{version.minor}.{version.patch}, PostgreSQL {pg_version}")
    print(
        f"data: {args.events:,} events over {args.tenants} tenants, {args.keys:,} src_ip keys per tenant, "
        f"seed {SEED}; rules per tenant: 10, signal {args.signal}, group_by [src_ip], threshold "
        f"{args.threshold}, window {WINDOW_S}s, bucket {BUCKET_S}s; fetch batch {settings.fetch_batch}; "
        f"split paths in {args.processes} processes; best and median of {args.repeats}\n",
        flush=True,
    )


def row_name(path: str, processes: int) -> str:
    names = {
        "fetch": "fetch-only, pull requests + callback",
        "fetch-ack": "fetch and acknowledge each message, pull requests + callback",
        "nats-py-fetch": "fetch-only, nats-py PullSubscription.fetch",
        "fetch-split": f"fetch-only, pull requests + callback, {processes} processes",
        "service": "service",
        "serve-process": "alertwarden serve process",
        "service-split": f"service, {processes} processes",
    }
    return names[path]


def print_results(measurements: Measurements, event_count: int, processes: int) -> None:
    rows = [
        (row_name(path, processes), [p.seconds for p in passes]) for path, passes in measurements.fetch.items()
    ]
    service_rows: list[tuple[str, list[float]]] = []
    for path, service_passes in measurements.service.items():
        name = row_name(path, processes)
        service_rows.append((f"{name}, evaluated", [p.evaluated_s for p in service_passes]))
        service_rows.append((f"{name}, evaluated + final flush", [p.flushed_s for p in service_passes]))
    rows += service_rows

    def rate_of(path: str) -> float | None:
        passes = measurements.fetch.get(path)
        return event_count / statistics.median(p.seconds for p in passes) if passes else None

    # Each baseline that ran gets a ratio column and a goal line.
    baselines = [
        (label, rate)
        for label, rate in (("fetch-only", rate_of("fetch")), ("fetch + ack", rate_of("fetch-ack")))
        if rate
    ]
    ratio_headers = "".join(f" median / {label} median |" for label, _ in baselines)
    print(f"| path | events | median s | median events/s | best events/s |{ratio_headers}")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(baselines))
    for name, seconds in rows:
        median_s = statistics.median(seconds)
        ratios = "".join(f" {event_count / median_s / rate:.1%} |" for _, rate in baselines)
        print(
            f"| {name} | {event_count:,} | {median_s:.2f} | {event_count / median_s:,.0f} "
            f"| {event_count / min(seconds):,.0f} |{ratios}"
        )
    print()
    for path, passes in measurements.fetch.items():
        if passes[0].delivered != event_count:
            print(f"The {path} consumers received {passes[0].delivered:,} messages for {event_count:,} events.")
    for path, service_passes in measurements.service.items():
        if path == "serve-process":
            # The process reports its counts only through /metrics, which the pass reads for events.
            continue
        last = service_passes[-1]
        print(
            f"{row_name(path, processes)} pass (last of {len(service_passes)}): {last.flushes} flushes of "
            f"{last.flushed_rows:,} rows in {last.flush_seconds:.2f} s summed over the workers, "
            f"{last.transitions:,} transitions."
        )
    for label, rate in baselines:
        for name, seconds in service_rows:
            share = event_count / statistics.median(seconds) / rate
            verdict = "met" if share >= TARGET_RATIO else "missed"
            print(f"Goal service >= {TARGET_RATIO:.0%} of {label}, {name}: {share:.1%}, {verdict}.")
    # The like-for-like figure: the same number of processes on both sides.
    split_rate = rate_of("fetch-split")
    if split_rate and "service-split" in measurements.service:
        for name, seconds in service_rows:
            if name.startswith(row_name("service-split", processes)):
                share = event_count / statistics.median(seconds) / split_rate
                print(f"{name} / fetch-only in {processes} processes: {share:.1%}.")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events to publish and time (default 200000)")
    parser.add_argument("--tenants", type=int, default=10, help="tenants, one worker each (default 10)")
    parser.add_argument("--keys", type=int, default=1_000, help="distinct src_ip values per tenant (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each path (default 3)")
    parser.add_argument(
        "--threshold",
        type=int,
        default=10,
        help="threshold of every rule. The default turns about 0.5 %% of the events into a "
        "transition, and a threshold above the events per tenant turns none (default 10)",
    )
    parser.add_argument(
        "--paths",
        default="fetch,fetch-ack,service,serve-process,fetch-split,service-split",
        help="comma-separated paths to time: fetch, fetch-ack, nats-py-fetch, service, serve-process, "
        "fetch-split, service-split (default all but nats-py-fetch)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 2,
        help="processes of the fetch-split and service-split paths, which deal the tenants out "
        "among them (default: the CPU count)",
    )
    parser.add_argument(
        "--signal",
        choices=("logs", "any"),
        default="logs",
        help="signal of the rules. With logs, each consumer filters on one subject. With any, it "
        "filters on the logs and events subjects, which nats-server before 2.10 ignores, so every "
        "consumer receives the whole stream (default logs)",
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help=f"server database for CREATE DATABASE (default {DEFAULT_PG_URL})")
    parser.add_argument("--nats-url", default=DEFAULT_NATS_URL, help=f"NATS server with JetStream (default {DEFAULT_NATS_URL})")
    parser.add_argument(
        "--timeout-s", type=float, default=300.0, help="seconds a service pass may take before it fails (default 300)"
    )
    args = parser.parse_args(argv)

    for name in ("events", "tenants", "keys", "repeats", "threshold", "processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    unknown = [path for path in args.paths.split(",") if path.strip() not in PATHS]
    if unknown:
        parser.error(f"invalid --paths value {unknown[0]!r}: use a comma-separated subset of {','.join(PATHS)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    paths = [path for path in PATHS if path in {p.strip() for p in args.paths.split(",")}]
    # Warnings only: the workers' start and stop lines would interleave with the table.
    configure_logging("warning")
    asyncio.run(measure(args, paths))


if __name__ == "__main__":
    main()
