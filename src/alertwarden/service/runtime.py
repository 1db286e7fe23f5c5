"""`alertwarden serve`: the store, NATS JetStream, the API and one worker per tenant + rule group.

The service polls the stored rule definitions and tenant flags every rules_poll_s (and at once
after an API change on this node), and starts, restarts or stops workers to match them. A
rule group whose rules changed is stopped, which flushes its state and checkpoint, and started
again with the new rules from that checkpoint, so a change loses and repeats no event.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import secrets
import signal
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import psycopg
import uvicorn
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

import alertwarden
from alertwarden.api.app import MIN_ADMIN_TOKEN_CHARS, create_app
from alertwarden.cluster.leases import LeaseHolder, fair_share
from alertwarden.errors import ConfigError, StoreError
from alertwarden.logs import RateLimitedLog, get_logger
from alertwarden.metrics import Metrics
from alertwarden.native import is_compiled
from alertwarden.service.catalog import GroupId, GroupSpec, RuleCatalog
from alertwarden.service.unknown import MAX_UNKNOWN_TENANTS, UnknownTenantCounter
from alertwarden.service.worker import RuleGroupWorker, WorkerConfig
from alertwarden.settings import Settings
from alertwarden.sinks.base import Sink
from alertwarden.sinks.stdout import JsonLinesSink
from alertwarden.sinks.webhook import WebhookSink
from alertwarden.sources.jetstream import TENANT_PLACEHOLDER, ensure_stream
from alertwarden.store.migrate import migrate as run_migrations
from alertwarden.store.postgres import PostgresStore

log = get_logger(__name__)

NATS_CONNECT_TIMEOUT_S = 5.0
NATS_FIRST_CONNECT_TIMEOUT_S = 10.0
METRICS_INTERVAL_S = 5.0
UNKNOWN_TENANT_LOG_INTERVAL_S = 60.0
UNKNOWN_TENANT_COUNT_TIMEOUT_S = 5.0
NATS_ERROR_LOG_INTERVAL_S = 60.0
"""nats-py reports every failed reconnect attempt, every 2 s by default, so an outage logs one
line per error text in this interval, with the count of those suppressed."""
JS_STREAM_SUBJECT_OVERLAP = 10065
"""JetStream's err_code (JSStreamSubjectOverlapErr) for stream subjects that another stream captures."""


class DiscardSink:
    """The local sink when no stdout output is configured: webhooks and history carry the alerts."""

    async def send(self, notification: Any) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    checks: dict[str, str]


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: the service stops it itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Service:
    """Runs until stopped: call `run()` in the main thread of an event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.jetstream = settings.jetstream_settings()
        self.metrics = Metrics()
        self.store: PostgresStore | None = None
        self.nats: NatsClient | None = None
        self.catalog: RuleCatalog | None = None
        self.workers: dict[GroupId, RuleGroupWorker] = {}
        self.specs: dict[GroupId, GroupSpec] = {}
        self.leases: LeaseHolder | None = None
        self.unknown_tenants = UnknownTenantCounter(self.jetstream)
        self._unknown_log = RateLimitedLog(UNKNOWN_TENANT_LOG_INTERVAL_S, max_keys=MAX_UNKNOWN_TENANTS + 1)
        self._nats_error_log = RateLimitedLog(NATS_ERROR_LOG_INTERVAL_S, max_keys=100)
        self.elsewhere: dict[GroupId, GroupSpec] = {}
        """Active rule groups whose lease another node holds."""
        self.rules_loaded = False
        # False at start and after a lost lease session until a reconcile has started the
        # evaluators, so /readyz does not report the node ready while it evaluates nothing.
        self._evaluators_placed = False
        self._worker_config: WorkerConfig | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        # Changes announced by rules_changed() and the count of them that a finished reconcile
        # had read, so that the API can tell a rule not yet applied from an inactive one.
        self._changes_requested = 0
        self._changes_applied = 0
        self._signals = 0
        self._nats_closing = False
        self.exit_status = 0
        """Process exit status after run() returned: 1 when the service stopped on a failure."""
        self._api_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Connect, serve the API and evaluate until SIGTERM or SIGINT; then stop gracefully."""
        # From the first await on, so a SIGTERM while the servers connect also stops gracefully.
        self._install_signal_handlers()
        try:
            await self._run()
        finally:
            self._remove_signal_handlers()

    async def _run(self) -> None:
        settings = self.settings
        listener = self._bind()
        try:
            self.store, self.nats = await self._connect_servers()
        except BaseException:
            listener.close()
            raise
        remote: list[Sink] = []
        server: _Server | None = None
        try:
            self.leases = LeaseHolder(settings.database_url.get_secret_value())
            try:
                await self.leases.open()
            except StoreError as error:
                raise ConfigError(f"{error}. Check ALERTWARDEN_DATABASE_URL") from None
            js = self.nats.jetstream()
            await self._ensure_stream(js)
            remote = [WebhookSink(url) for url in settings.webhook_urls]
            local: Sink = JsonLinesSink() if settings.stdout_alerts else DiscardSink()
            self._worker_config = WorkerConfig(
                store=self.store,
                js=js,
                jetstream=self.jetstream,
                sink=local,
                remote_sinks=remote,
                max_future_skew_s=settings.max_future_skew_s,
                history_retention_s=settings.history_retention_s,
                tick_delay_s=settings.tick_delay_s,
                queue_batches=settings.queue_batches,
                max_message_bytes=settings.max_message_bytes,
            )
            self.catalog = RuleCatalog(self.store, settings.rule_files, settings.rule_defaults)
            app = create_app(
                self.store,
                admin_token=admin_token(settings),
                max_body_bytes=settings.ingest.max_body_bytes,
                jetstream=js,
                jetstream_settings=self.jetstream,
                max_ingest_events=settings.ingest.max_events,
                # The server closes the connection of a client that publishes more than its
                # max_payload, and an evaluator skips a message over max_message_bytes.
                max_message_bytes=min(self.nats.max_payload, settings.max_message_bytes),
                metrics=self.metrics,
                service=self,
                rule_defaults=settings.rule_defaults,
            )
            config = uvicorn.Config(app, log_config=None, lifespan="off", access_log=False)
            server = _Server(config)
            tune_gc()
            api = asyncio.create_task(server.serve(sockets=[listener]), name="api")
            self._api_task = api
            compiled = is_compiled()
            build = self.metrics.build_info.labels(version=alertwarden.__version__, compiled=str(compiled).lower())
            build.set(1)
            if alertwarden.SOURCES_REASON is not None:
                log.warning("compiled_modules_not_used", reason=alertwarden.SOURCES_REASON)
            log.info(
                "service_started",
                bind=f"{settings.bind_host}:{settings.bind_port}",
                stream=self.jetstream.stream,
                pid=os.getpid(),
                compiled=compiled,
            )
            await self._supervise(api)
        finally:
            try:
                # The handlers stay during the stop, so a second signal exits at once.
                await asyncio.shield(self._shutdown(server, remote))
            finally:
                listener.close()

    def request_stop(self) -> None:
        self._stop.set()

    def rules_changed(self) -> None:
        """Reconcile the workers now instead of at the next poll (after an API change)."""
        self._changes_requested += 1
        self._wake.set()

    async def _supervise(self, api: asyncio.Task[None]) -> None:
        next_metrics = 0.0
        while not self._stop.is_set():
            if api.done():
                api.result()
                raise ConfigError("the API server stopped unexpectedly")
            # Cleared before the reconcile, so a change announced while it awaits wakes the next.
            self._wake.clear()
            await self._reconcile()
            if time.monotonic() >= next_metrics:
                await self._count_unknown_tenants()
                self.refresh_metrics()
                next_metrics = time.monotonic() + METRICS_INTERVAL_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.rules_poll_s):
                    await self._wait_for_change()

    async def _wait_for_change(self) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({stop, wake}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()

    async def _reconcile(self) -> None:
        catalog = self.catalog
        assert catalog is not None
        requested = self._changes_requested
        if not await self._leases_ready():
            return
        try:
            await catalog.sync_files()
            desired = await catalog.load()
        except StoreError as error:
            log.error("rules_load_failed", error=str(error), note="the running rules stay in force")
            return
        self.rules_loaded = True

        changed = await self._stop_undesired_workers(desired)
        assert self.leases is not None
        loads = await self.leases.node_loads()
        node = self.leases.node_key
        if loads is None or node is None:
            # The lease session is gone; the next poll abandons the evaluators and reconnects.
            return
        # The workers are this node's own count, newer than the locks it read.
        loads[node] = len(self.workers)
        self.metrics.live_nodes.set(len(loads))
        share = fair_share(len(desired), loads, node)
        await self._hand_over_excess(share.keep, len(loads))
        changed = await self._start_desired_workers(desired, share.take) or changed
        self._evaluators_placed = True
        self._changes_applied = requested
        if changed:
            try:
                await self.store.sweep()  # type: ignore[union-attr]
            except StoreError as error:
                log.warning("sweep_failed", error=str(error))

    async def _stop_undesired_workers(self, desired: dict[GroupId, GroupSpec]) -> bool:
        """Drop workers that lost their lease and stop those of inactive rule groups."""
        leases = self.leases
        assert leases is not None
        for group_id in [g for g, worker in self.workers.items() if worker.lease_lost]:
            # The worker ended at a write that found the lease lost; try to take it again.
            self.workers.pop(group_id)
            self.specs.pop(group_id, None)
            leases.forget(group_id)

        changed = False
        for group_id in [g for g in self.workers if g not in desired]:
            await self._stop_worker(group_id, reason="no enabled rule, or the tenant's flag is off")
            await leases.release(group_id)
            await self._forget_if_deleted(group_id)
            changed = True
        return changed

    async def _hand_over_excess(self, keep: int, nodes: int) -> None:
        """Stop the evaluators this node runs beyond `keep`, so nodes below their share take them.

        Each stops as on SIGTERM, with its final flush, so the next node resumes at that
        checkpoint and replays nothing.
        """
        leases = self.leases
        assert leases is not None
        excess = len(self.workers) - keep
        if excess <= 0:
            return
        for group_id in sorted(self.workers)[-excess:]:
            await self._stop_worker(group_id, reason="handed over to balance the nodes")
            await leases.release(group_id)
            log.info(
                "lease_handed_over",
                tenant=group_id[0],
                rule_group=group_id[1],
                nodes=nodes,
                keep=keep,
            )

    async def _start_desired_workers(self, desired: dict[GroupId, GroupSpec], take: int) -> bool:
        """Start or restart the workers of rule groups whose lease this node can take.

        A node that runs `take` rule groups takes no more, which leaves the others to nodes
        below their share.
        """
        leases = self.leases
        assert leases is not None and self._worker_config is not None
        changed = False
        # Built aside and swapped in at the end, because the API reads it while this loop awaits.
        elsewhere: dict[GroupId, GroupSpec] = {}
        for group_id, spec in desired.items():
            if self._stop.is_set():
                # A stop requested while this reconcile awaited: starting or restarting a
                # worker now would only add a flush to the stop.
                break
            current = self.specs.get(group_id)
            if current is not None and current.versions == spec.versions:
                continue
            if group_id not in self.workers and len(self.workers) >= take:
                elsewhere[group_id] = spec
                continue
            fence = await leases.try_acquire(group_id)
            if fence is None:
                # Another node evaluates it. This node tries again at every poll, so it takes
                # over within rules_poll_s of that node's end.
                elsewhere[group_id] = spec
                continue

            if group_id in self.workers:
                await self._stop_worker(group_id, reason="rules changed")
            if self._stop.is_set():
                await leases.release(group_id)
                break
            worker = RuleGroupWorker(
                spec.tenant,
                spec.rule_group,
                spec.rules,
                self._worker_config,
                on_restart=self.metrics.record_restart,
                fence=fence,
                on_lease_lost=self.rules_changed,
            )
            self.workers[group_id] = worker
            self.specs[group_id] = spec
            worker.start()
            changed = True
        self.elsewhere = elsewhere
        return changed

    async def _count_unknown_tenants(self) -> None:
        """Count and log the messages stored for tenants that do not exist."""
        if self.nats is None or self.store is None or not self.nats.is_connected:
            return
        try:
            # Bounded, because a store that does not respond would hold this loop for the pool
            # timeout, and with it the lease session's reconnect after an outage.
            async with asyncio.timeout(UNKNOWN_TENANT_COUNT_TIMEOUT_S):
                # NOTE: nats-server returns at most 100,000 subjects (JSMaxSubjectDetails) and
                # nats-py cannot ask for the next page, so a stream with more subjects is counted
                # in part.
                info = await self.nats.jetstream().stream_info(self.jetstream.stream, subjects_filter=">")
                known = await self.store.tenant_ids()
        except (TimeoutError, nats.errors.Error, StoreError) as error:
            log.warning("unknown_tenant_count_failed", error=_describe_error(error))
            return
        added = self.unknown_tenants.update(info.state.subjects or {}, known)
        now = time.monotonic()
        for tenant, count in added.items():
            self.metrics.unknown_tenant_messages.labels(tenant).inc(count)
            if self._unknown_log.should_log(tenant, now):
                log.warning(
                    "unknown_tenant_messages",
                    tenant=tenant,
                    count=count,
                    suppressed=self._unknown_log.take_suppressed(tenant),
                    note="no evaluator reads them; create the tenant or fix the publisher's subject",
                )

    async def _leases_ready(self) -> bool:
        """Check the lease session; after its loss, abandon every evaluator and reconnect."""
        leases = self.leases
        assert leases is not None
        if await leases.alive():
            return True
        self._evaluators_placed = False
        if self.workers:
            log.error(
                "leases_lost",
                evaluators=len(self.workers),
                note="stopping them without a final flush; the node that takes a lease resumes "
                "from the last checkpoint",
            )
            workers = list(self.workers.values())
            self.workers.clear()
            self.specs.clear()
            await asyncio.gather(*(worker.abandon() for worker in workers), return_exceptions=True)
        try:
            await leases.open()
        except StoreError as error:
            log.warning("lease_session_failed", error=str(error), retry_in_s=self.settings.rules_poll_s)
            return False
        return True

    async def _forget_if_deleted(self, group_id: GroupId) -> None:
        """Delete the state of a rule group whose rules were all deleted.

        Disabled rules and tenants whose flag is off are left to the sweep. A rule group with no
        definitions at all is not the sweep's, so without this a rule group created again later
        would resume from its old checkpoint.
        """
        assert self.store is not None
        try:
            if await self.store.forget_rule_group(*group_id):
                log.info("rule_group_state_deleted", tenant=group_id[0], rule_group=group_id[1])
        except StoreError as error:
            log.warning("rule_group_state_delete_failed", tenant=group_id[0], rule_group=group_id[1], error=str(error))

    async def _stop_worker(self, group_id: GroupId, *, reason: str) -> None:
        worker = self.workers.pop(group_id)
        self.specs.pop(group_id, None)
        log.info("evaluator_stopping", tenant=group_id[0], rule_group=group_id[1], reason=reason)
        await worker.stop()
        if worker.pipeline is not None:
            self.metrics.update_from(worker.pipeline)

    async def _shutdown(self, server: _Server | None, remote: list[Sink]) -> None:
        log.info("service_stopping", evaluators=len(self.workers))
        if server is not None:
            server.should_exit = True
        results = await asyncio.gather(
            *(worker.stop() for worker in self.workers.values()), return_exceptions=True
        )
        for (tenant, rule_group), result in zip(list(self.workers), results):
            if isinstance(result, BaseException):
                log.error("evaluator_stop_failed", tenant=tenant, rule_group=rule_group, error=repr(result))
        self.workers.clear()
        if self.leases is not None:
            # After the final flushes, so the next node resumes from them.
            with contextlib.suppress(psycopg.Error):
                await self.leases.close()
        if self._api_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._api_task, 5.0)
        for sink in remote:
            await sink.close()
        if self.nats is not None:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                self._nats_closing = True
                await self.nats.close()
        if self.store is not None:
            await self.store.close()
        log.info("service_stopped")

    # ------------------------------------------------------------ status

    def readiness(self) -> Readiness:
        """Return whether the service evaluates every active rule group; the API awaits ping."""
        checks: dict[str, str] = {}
        connected = self.nats is not None and self.nats.is_connected
        checks["jetstream"] = "ok" if connected else "disconnected"
        if self.leases is not None:
            checks["leases"] = "ok" if self.leases.connected else "lease session lost"
        if not self.rules_loaded:
            checks["evaluators"] = "rules not loaded yet"
        elif not self._evaluators_placed:
            checks["evaluators"] = "rule groups not assigned to evaluators yet"
        else:
            started = sum(1 for worker in self.workers.values() if worker.started)
            total = len(self.workers)
            checks["evaluators"] = "ok" if started == total else f"{started} of {total} started"
        unready_store = [w for w in self.workers.values() if w.pipeline is not None and not w.pipeline.ready]
        if unready_store:
            checks["evaluators_store"] = f"{len(unready_store)} evaluators keep state only in memory"
        ready = all(value == "ok" for value in checks.values())
        return Readiness(ready, checks)

    def rule_health(self, tenant: str, rule_id: str) -> dict[str, Any]:
        """Return the run-time status of one rule on this node."""
        catalog = self.catalog
        problem = catalog.problems.get((tenant, rule_id)) if catalog is not None else None
        for (worker_tenant, _), worker in self.workers.items():
            if worker_tenant != tenant or rule_id not in {rule.id for rule in worker.rules}:
                continue
            status, reason = worker.rule_status(rule_id)
            if problem is not None:
                status, reason = "unhealthy", problem.message + "; the previous version stays in force"
            elif not worker.started:
                status, reason = "starting", f"the evaluator is {worker.state.value}"
            return {"status": status, "reason": reason}
        for spec in self.elsewhere.values():
            if spec.tenant == tenant and rule_id in {rule.id for rule in spec.rules}:
                return {"status": "elsewhere", "reason": "evaluated by another node, which holds the rule group's lease"}
        if problem is not None:
            return {"status": "unhealthy", "reason": problem.message}
        if self._changes_applied < self._changes_requested:
            reason = "a rule or feature flag change is being applied to the evaluators"
            return {"status": "pending", "reason": reason}
        return {"status": "inactive", "reason": "not evaluated: the rule is disabled or the tenant's stateful-rules flag is off"}

    def refresh_metrics(self) -> None:
        self.metrics.leases_held.set(len(self.workers))
        self.metrics.rule_groups_elsewhere.set(len(self.elsewhere))
        for worker in self.workers.values():
            self.metrics.add_rule_group(worker.tenant, worker.rule_group)
            if worker.pipeline is not None:
                self.metrics.update_from(worker.pipeline)
            for reason, count in worker.counters.skipped.items():
                self.metrics.record_skipped_total(worker.tenant, worker.rule_group, reason, count)
            for rule in worker.rules:
                status = self.rule_health(worker.tenant, rule.id)["status"]
                self.metrics.set_rule_health(worker.tenant, rule.id, status in ("healthy", "starting"))
        reported = {(worker.tenant, rule.id) for worker in self.workers.values() for rule in worker.rules}
        if self.catalog is not None:
            for tenant, rule_id in self.catalog.problems:
                self.metrics.set_rule_health(tenant, rule_id, False)
            reported |= set(self.catalog.problems)
            for tenant, valid in self.catalog.rule_files_valid.items():
                self.metrics.rule_files_valid.labels(tenant).set(1 if valid else 0)
        # Deleted rules, and rule groups stopped or handed over, lose their gauge series here.
        self.metrics.remove_stopped(reported, set(self.workers))

    # ------------------------------------------------------------ connections

    def _bind(self) -> socket.socket:
        host, port = self.settings.bind_host, self.settings.bind_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, port))
        except OSError as error:
            listener.close()
            raise ConfigError(
                f"cannot listen on {host}:{port}: {error.strerror}. Set ALERTWARDEN_BIND_HOST and "
                "ALERTWARDEN_BIND_PORT to a free address"
            ) from None
        listener.listen(128)
        listener.setblocking(False)
        return listener

    async def _connect_servers(self) -> tuple[PostgresStore, NatsClient]:
        """Open the store and connect to NATS at the same time.

        Raises one ConfigError that names every server that failed, so that an operator with
        neither server reachable learns of both from one start.
        """
        store_result, nats_result = await asyncio.gather(
            self._open_store(), self._connect_nats(), return_exceptions=True
        )
        failures = [result for result in (store_result, nats_result) if isinstance(result, BaseException)]
        if not failures:
            assert isinstance(store_result, PostgresStore) and isinstance(nats_result, NatsClient)
            return store_result, nats_result
        if isinstance(store_result, PostgresStore):
            await store_result.close()
        if isinstance(nats_result, NatsClient):
            # A close of our own, which the disconnect and closed callbacks must not report.
            self._nats_closing = True
            await nats_result.close()
        unexpected = [error for error in failures if not isinstance(error, ConfigError)]
        if unexpected:
            raise unexpected[0]
        raise ConfigError("\n".join(str(error) for error in failures))

    async def _open_store(self) -> PostgresStore:
        url = self.settings.database_url.get_secret_value()
        try:
            await create_database_if_missing(url)
            retention_s = int(self.settings.history_retention_s)
            await run_migrations(url, retention_s=retention_s)
            store = PostgresStore(
                url,
                pool_max=self.settings.database_pool_max,
                pool_timeout_s=self.settings.database_pool_timeout_s,
            )
            await store.open()
            if store.settings.retention_s != retention_s:
                log.warning(
                    "history_retention_differs",
                    stored_s=store.settings.retention_s,
                    requested_s=retention_s,
                    note="the retention of the first migration applies; change the TimescaleDB "
                    "policy or alertwarden_settings by hand to change it",
                )
        except StoreError as error:
            raise ConfigError(
                f"PostgreSQL is not reachable or not usable: {_one_line(str(error))} Set "
                "ALERTWARDEN_DATABASE_URL to the database to use, such as "
                "postgresql://user@host:5432/alertwarden"
            ) from None
        return store

    async def _connect_nats(self) -> NatsClient:
        url = self.jetstream.url
        errors: list[Exception] = []

        async def record_error(error: Exception) -> None:
            # The first connect ends in a timeout; the error of the last attempt is the cause.
            errors[:] = [error]
            self._log_nats_error(error)

        try:
            # Reconnects are retried without end once connected; the first connect is bounded
            # here, because nats-py applies the same unlimited retries to it.
            client = await asyncio.wait_for(
                nats.connect(
                    url,
                    connect_timeout=NATS_CONNECT_TIMEOUT_S,
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    error_cb=record_error,
                    disconnected_cb=self._nats_disconnected,
                    reconnected_cb=_nats_reconnected,
                    closed_cb=self._nats_closed,
                ),
                timeout=NATS_FIRST_CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError, nats.errors.Error) as error:
            cause = errors[0] if isinstance(error, TimeoutError) and errors else error
            raise ConfigError(
                f"NATS is not reachable at {_display_url(url)}: {_sentence(_describe_error(cause))} "
                "Start nats-server with JetStream (-js), or set ALERTWARDEN_NATS_URL to its address"
            ) from None
        return client

    def _log_nats_error(self, error: Exception) -> None:
        text = repr(error)
        if self._nats_error_log.should_log(text, time.monotonic()):
            log.warning("nats_error", error=text, suppressed=self._nats_error_log.take_suppressed(text))

    async def _nats_disconnected(self) -> None:
        # The client's own close at the stop also reports a disconnect, which is no problem.
        if self._nats_closing:
            log.info("nats_closed")
        else:
            log.warning("nats_disconnected")

    async def _nats_closed(self) -> None:
        """Stop the service when the NATS client closed for good, which it does after a protocol
        error from the server (such as a message over max_payload) even with unlimited reconnects.

        Every evaluator and the ingest route use this one connection, so the node could do no
        work, while its lease session would keep other nodes from taking its rule groups over.
        The graceful stop flushes and releases the leases, and the exit status 1 lets a
        supervisor start the process again.
        """
        if self._nats_closing or self._stop.is_set():
            return
        error = self.nats.last_error if self.nats is not None else None
        log.error(
            "nats_connection_closed",
            error=_describe_error(error) if error is not None else None,
            note="stopping with exit status 1 so that the process is started again",
        )
        self.exit_status = 1
        self._stop.set()

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        subjects = self._stream_subjects()
        try:
            await ensure_stream(js, self.jetstream, subjects)
        except nats.js.errors.APIError as error:
            if error.err_code != JS_STREAM_SUBJECT_OVERLAP:
                raise ConfigError(self._stream_failure(error)) from None
            owner = await self._stream_owner(js, subjects)
            owner_name = f"stream {owner!r}" if owner else "another stream"
            settings = self.jetstream
            raise ConfigError(
                f"JetStream stream {settings.stream!r} could not be created or updated:"
                f" {owner_name} already captures subjects of"
                f" ALERTWARDEN_LOGS_SUBJECT {settings.logs_subject!r} or ALERTWARDEN_EVENTS_SUBJECT"
                f" {settings.events_subject!r}, and JetStream stores a subject in one stream only."
                " Choose subject patterns that no other stream captures, or set ALERTWARDEN_STREAM to"
                " the stream that owns them only if that stream is meant for alertwarden"
            ) from None
        except (TimeoutError, nats.errors.Error) as error:
            raise ConfigError(self._stream_failure(error)) from None

    def _stream_failure(self, error: Exception) -> str:
        return (
            f"JetStream stream {self.jetstream.stream!r} could not be created or updated: "
            f"{str(error) or type(error).__name__}. Check that nats-server runs with JetStream "
            "(-js) and has storage for ALERTWARDEN_STREAM_MAX_BYTES, or point ALERTWARDEN_STREAM "
            "at an existing stream"
        )

    async def _stream_owner(self, js: JetStreamContext, subjects: list[str]) -> str | None:
        """Return the name of another stream that captures one of `subjects`, or None if none is found."""
        for subject in subjects:
            try:
                owner = await js.find_stream_name_by_subject(subject)
            except (TimeoutError, nats.errors.Error):
                # Without the name, the error message reads "another stream" instead.
                continue
            if owner != self.jetstream.stream:
                return owner
        return None

    def _stream_subjects(self) -> list[str]:
        # The stream takes every tenant's subjects; each worker reads only its own tenant's.
        return [
            self.jetstream.logs_subject.replace(TENANT_PLACEHOLDER, "*"),
            self.jetstream.events_subject.replace(TENANT_PLACEHOLDER, "*"),
        ]

    # ------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)
        self._signals_installed = True

    def _remove_signal_handlers(self) -> None:
        if not getattr(self, "_signals_installed", False):
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals > 1:
            # State stays consistent without the final flush: the next start replays from the
            # last checkpoint, like after a crash.
            log.warning("stop_forced", signal=name)
            os._exit(1)
        log.info("stop_requested", signal=name, timeout_s=self.settings.shutdown_timeout_s)
        self._stop.set()
        asyncio.get_running_loop().call_later(self.settings.shutdown_timeout_s, _stop_timed_out)


GC_GENERATION0_THRESHOLD = 20_000
"""Allocations between two young-generation collections (CPython's default is 700)."""


def tune_gc() -> None:
    """Make the cyclic garbage collector cheaper for a process that evaluates events.

    Every event allocates a few short-lived objects and almost none of them form cycles, so
    collecting after every 700 allocations costs time for nothing. The objects that exist after
    start-up (modules, the API, compiled rules) live until the end: freezing them keeps them out
    of every later full collection.
    """
    gc.freeze()
    _, generation1, generation2 = gc.get_threshold()
    gc.set_threshold(GC_GENERATION0_THRESHOLD, generation1, generation2)


def admin_token(settings: Settings) -> str:
    """Return the admin token: the setting, else the token file, created with a random token.

    The file is created with mode 0600 and its path is logged, never the token. An existing file
    that the group or other users may access is still used, with a warning.
    """
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    path = settings.admin_token_file
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as error:
            raise ConfigError(
                f"cannot create the admin token file {str(path)!r}: {error.strerror}. Set "
                "ALERTWARDEN_ADMIN_TOKEN, or ALERTWARDEN_ADMIN_TOKEN_FILE to a writable path"
            ) from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
        log.warning("admin_token_created", path=str(path.resolve()), note="set ALERTWARDEN_ADMIN_TOKEN in production")
        return token
    except OSError as error:
        raise ConfigError(f"cannot read the admin token file {str(path)!r}: {error.strerror}") from None
    _check_token_file_mode(path)
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        raise ConfigError(
            f"the admin token in {str(path)!r} has {len(token)} characters: use at least "
            f"{MIN_ADMIN_TOKEN_CHARS} random characters"
        )
    return token


def _check_token_file_mode(path: Path) -> None:
    """Log a warning when users other than the file's owner may access the admin token file."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        # The file was read a moment ago, so it was removed since and has no mode left to check.
        return
    if mode & 0o077:
        log.warning(
            "admin_token_file_permissions",
            path=str(path.resolve()),
            mode=f"{mode:04o}",
            note="the group or other users may access the admin token; run chmod 600 on the file",
        )


async def create_database_if_missing(url: str) -> None:
    """Create the database of `url` when the server reports that it does not exist.

    Connects to the server's `postgres` database to do so, with the same credentials. Raises
    ConfigError when the server rejects the login (unknown role, wrong or missing password, no
    pg_hba.conf entry). Any other connection failure is left for the migration runner to report.
    """
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        # psycopg's message repeats the URL, password included.
        raise ConfigError(
            "invalid ALERTWARDEN_DATABASE_URL: expected postgresql://user:password@host:port/database "
            "or a libpq conninfo string such as 'host=... dbname=...'"
        ) from None
    info = conninfo_to_dict(url)
    name = str(info.get("dbname") or "")
    try:
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=5)
    except psycopg.OperationalError as error:
        message = str(error)
        if _LOGIN_REJECTED.search(message):
            raise ConfigError(
                f"PostgreSQL rejected the login: {_one_line(message)} Check the user name and "
                "password in ALERTWARDEN_DATABASE_URL"
            ) from None
        # psycopg 3.3 sets no sqlstate on a connection failure, so the missing database
        # (SQLSTATE 3D000) is recognised by the server's message, quoted as the server sends it.
        # NOTE: a server whose lc_messages is not English words it differently, and then the
        # migration runner reports the missing database instead of this function creating it.
        if not name or f'database "{name}" does not exist' not in message:
            return
    else:
        await conn.close()
        return
    info["dbname"] = "postgres"
    try:
        async with await psycopg.AsyncConnection.connect(make_conninfo("", **info), autocommit=True, connect_timeout=5) as admin:
            await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.DuplicateDatabase:
        return
    except psycopg.Error as error:
        raise StoreError(f"database {name!r} does not exist and could not be created: {error}") from None
    log.info("database_created", database=name)


_LOGIN_REJECTED = re.compile(
    r'role "[^"]*" does not exist|password authentication failed for user'
    r"|no password supplied|no pg_hba\.conf entry"
)
"""libpq and server messages of a connection that the server rejected for its credentials."""


def _stop_timed_out() -> None:
    log.error("stop_timed_out", note="exiting without the final flush; the next start replays from the last checkpoint")
    os._exit(1)


def _display_url(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    if "@" in rest:
        rest = "<credentials>@" + rest.split("@", 1)[1]
    return scheme + separator + rest


def _one_line(text: str) -> str:
    """Join the lines of an error message, such as libpq's, into sentences on one line."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return " ".join(_sentence(line) for line in lines if line)


def _sentence(text: str) -> str:
    """Return `text` ending with a full stop, unless it already ends with `.`, `?` or `!`."""
    text = text.rstrip()
    return text if text.endswith((".", "?", "!")) else text + "."


def _describe_error(error: BaseException) -> str:
    """Return the exception's message, or its type name when the message is empty."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def _nats_reconnected() -> None:
    log.info("nats_reconnected")
