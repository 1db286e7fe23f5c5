"""Prometheus metrics of the service, kept in a registry of their own.

Each `Metrics` owns its CollectorRegistry instead of the process-wide default one, so several
applications or tests in one process never register the same metric name twice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from alertwarden.pipeline import RuleGroupPipeline

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""Content type of the Prometheus text format as prometheus_client names it (version 1.0.0 in 0.26)."""


class EventResult:
    """Values of the `result` label of alertwarden_events_total."""

    MATCHED = "matched"
    UNMATCHED = "unmatched"
    LATE = "late"
    SKEWED = "skewed"
    INVALID = "invalid"


class Metrics:
    """The service's metrics and the last pipeline counter values already added to them.

    Pipelines keep cumulative counters. `update_from` adds only what grew since the previous
    call for the same tenant and rule group, so Prometheus counters only go up.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._seen: dict[tuple[str, ...], float] = {}
        # The (tenant, rule) and (tenant, rule_group) label values of the gauges that
        # remove_stopped() drops once this node no longer evaluates them.
        self._rule_gauges: set[tuple[str, str]] = set()
        self._group_gauges: set[tuple[str, str]] = set()
        registry = self.registry

        self.events = Counter(
            "alertwarden_events",
            "Events by result. matched and unmatched split the events evaluated by each rule"
            " group, late and skewed count some of those again, and invalid counts records that"
            " could not be parsed into events.",
            ["tenant", "result"],
            registry=registry,
        )
        self.transitions = Counter(
            "alertwarden_transitions",
            "Alert state transitions by rule and kind.",
            ["tenant", "rule", "kind"],
            registry=registry,
        )
        self.live_groups = Gauge(
            "alertwarden_live_groups",
            "Groups a rule keeps in memory.",
            ["tenant", "rule"],
            registry=registry,
        )
        self.flush_duration = Histogram(
            "alertwarden_flush_duration_seconds",
            "Duration of a flush of group state and checkpoint to the store.",
            ["tenant", "rule_group"],
            registry=registry,
        )
        self.flush_rows = Counter(
            "alertwarden_flush_rows",
            "Group rows written or deleted by flushes.",
            ["tenant", "rule_group"],
            registry=registry,
        )
        self.input_lag = Gauge(
            "alertwarden_input_lag_seconds",
            "Wall clock minus the evaluator's clock. Under serve the clock is the stored time of"
            " the last message evaluated, or of the last idle tick, which trails by up to"
            " fetch_timeout_s + tick_delay_s.",
            ["tenant", "rule_group"],
            registry=registry,
        )
        self.evaluator_restarts = Counter(
            "alertwarden_evaluator_restarts",
            "Restarts of a rule group's evaluator after a failure.",
            ["tenant", "rule_group"],
            registry=registry,
        )
        self.unknown_tenant_messages = Counter(
            "alertwarden_unknown_tenant_messages",
            "Messages stored on the subjects of a tenant that does not exist, which no evaluator"
            " reads. Tenant ids after the first 100 are counted as _other.",
            ["tenant"],
            registry=registry,
        )
        self.leases_held = Gauge(
            "alertwarden_leases_held",
            "Rule groups this node holds the lease of and evaluates.",
            registry=registry,
        )
        self.rule_groups_elsewhere = Gauge(
            "alertwarden_rule_groups_elsewhere",
            "Active rule groups whose lease another node holds.",
            registry=registry,
        )
        self.build_info = Gauge(
            "alertwarden_build_info",
            "Always 1. compiled is true when the per-event modules run as mypyc extension modules.",
            ["version", "compiled"],
            registry=registry,
        )
        self.live_nodes = Gauge(
            "alertwarden_live_nodes",
            "Nodes with an open lease session on this database, this one included, at the last rules poll.",
            registry=registry,
        )
        self.store_ready = Gauge(
            "alertwarden_store_ready",
            "1 while the store accepts a rule group's writes, 0 while state lives only in memory.",
            ["tenant", "rule_group"],
            registry=registry,
        )
        self.regex_timeouts = Counter(
            "alertwarden_regex_timeouts",
            "Regex searches of a rule's filter that timed out and so did not match.",
            ["tenant", "rule"],
            registry=registry,
        )

        self.records_skipped = Counter(
            "alertwarden_records_skipped",
            "Input records a rule group skipped before evaluation, by reason (malformed,"
            " not_an_object, bad_timestamp, oversized, invalid_utf8, wrong_type).",
            ["tenant", "rule_group", "reason"],
            registry=registry,
        )
        self.rule_healthy = Gauge(
            "alertwarden_rule_healthy",
            "1 while a rule runs without errors, 0 while it is unhealthy (regex searches timed"
            " out in the last 5 minutes).",
            ["tenant", "rule"],
            registry=registry,
        )

        self.rule_files_valid = Gauge(
            "alertwarden_rule_files_valid",
            "1 when the last read of a tenant's rule files (ALERTWARDEN_RULE_FILES) loaded them,"
            " 0 when one of them was invalid or unreadable and none of them was applied.",
            ["tenant"],
            registry=registry,
        )

    def record_skipped_total(self, tenant: str, rule_group: str, reason: str, total: int) -> None:
        """Set the skipped-record counter of a rule group and reason to its cumulative `total`."""
        key = ("records_skipped", tenant, rule_group, reason)
        self._add(self.records_skipped.labels(tenant, rule_group, reason), key, total)
        self._add(self.events.labels(tenant, EventResult.INVALID), ("invalid", tenant, rule_group, reason), total)

    def set_rule_health(self, tenant: str, rule_id: str, healthy: bool) -> None:
        self.rule_healthy.labels(tenant, rule_id).set(1 if healthy else 0)
        self._rule_gauges.add((tenant, rule_id))

    def remove_stopped(self, rules: set[tuple[str, str]], rule_groups: set[tuple[str, str]]) -> None:
        """Remove the gauge series of every rule and rule group not in `rules` and `rule_groups`.

        Both sets contain the (tenant, id) pairs that this node evaluates or reports. Without this, a
        deleted rule would keep its last value, such as alertwarden_rule_healthy 1, forever.
        NOTE: counters such as alertwarden_transitions_total keep the series of stopped rules and
        rule groups until the process ends.
        """
        for tenant, rule_id in self._rule_gauges - rules:
            _remove_series(self.rule_healthy, tenant, rule_id)
            _remove_series(self.live_groups, tenant, rule_id)
        self._rule_gauges &= rules
        for tenant, rule_group in self._group_gauges - rule_groups:
            _remove_series(self.store_ready, tenant, rule_group)
            _remove_series(self.input_lag, tenant, rule_group)
        self._group_gauges &= rule_groups

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        return generate_latest(self.registry)

    def record_invalid(self, tenant: str, count: int = 1) -> None:
        """Count records of `tenant` that could not be parsed into events."""
        self.events.labels(tenant, EventResult.INVALID).inc(count)

    def add_rule_group(self, tenant: str, rule_group: str) -> None:
        """Create the restart series of a running rule group at 0.

        Without it, the series would start at 1 with the first restart, which rate() and
        increase() do not count.
        """
        self.evaluator_restarts.labels(tenant, rule_group)

    def record_restart(self, tenant: str, rule_group: str) -> None:
        """Count one restart of a rule group's evaluator."""
        self.evaluator_restarts.labels(tenant, rule_group).inc()

    def update_from(self, pipeline: RuleGroupPipeline) -> None:
        """Add what the pipeline's counters grew by since the last call, and set its gauges.

        A counter below its last value means that the pipeline was replaced (a reload or a
        restart), so its whole value counts as new.
        """
        tenant = pipeline.tenant
        group = pipeline.rule_group
        evaluator = pipeline.evaluator
        engine = evaluator.stats

        late = sum(rule.late for rule in engine.rules.values())
        events = (
            (EventResult.MATCHED, engine.events - engine.unmatched),
            (EventResult.UNMATCHED, engine.unmatched),
            (EventResult.LATE, late),
            (EventResult.SKEWED, engine.clock_skew),
        )
        for result, value in events:
            self._add(self.events.labels(tenant, result), ("events", tenant, group, result), value)

        for rule_id, rule_stats in engine.rules.items():
            for kind, count in rule_stats.transitions.items():
                key = ("transitions", tenant, group, rule_id, kind)
                self._add(self.transitions.labels(tenant, rule_id, kind), key, count)
            self.live_groups.labels(tenant, rule_id).set(evaluator.group_count(rule_id))
            self._rule_gauges.add((tenant, rule_id))
            rule = pipeline.rules.get(rule_id)
            if rule is not None:
                key = ("regex_timeouts", tenant, group, rule_id, "")
                self._add(self.regex_timeouts.labels(tenant, rule_id), key, rule.regex_timeouts)

        self._update_flushes(pipeline)
        self.store_ready.labels(tenant, group).set(1 if pipeline.ready else 0)
        self._group_gauges.add((tenant, group))
        if evaluator.now is not None:
            self.input_lag.labels(tenant, group).set(max(0.0, self._clock() - evaluator.now))

    def _update_flushes(self, pipeline: RuleGroupPipeline) -> None:
        tenant, group = pipeline.tenant, pipeline.rule_group
        stats = pipeline.stats
        self._add(self.flush_rows.labels(tenant, group), ("flush_rows", tenant, group), stats.flushed_rows)

        flushes = self._delta(("flushes", tenant, group), stats.flushes)
        seconds = self._delta(("flush_seconds", tenant, group), stats.flush_seconds)
        if flushes <= 0:
            return
        # NOTE: the pipeline keeps only the total flush time, so several flushes since the last
        # update are observed at their mean. The histogram's sum and count stay exact, but its
        # buckets miss the spread between those flushes.
        histogram = self.flush_duration.labels(tenant, group)
        for _ in range(int(flushes)):
            histogram.observe(seconds / flushes)

    def _delta(self, key: tuple[str, ...], value: float) -> float:
        last = self._seen.get(key, 0)
        self._seen[key] = value
        return value if value < last else value - last

    def _add(self, counter: Counter, key: tuple[str, ...], value: float) -> None:
        delta = self._delta(key, value)
        if delta > 0:
            counter.inc(delta)


def _remove_series(gauge: Gauge, *label_values: str) -> None:
    # A rule reported only as invalid never had live_groups set. The installed prometheus_client
    # ignores a missing series, but its code did not always check, so KeyError is suppressed.
    with contextlib.suppress(KeyError):
        gauge.remove(*label_values)
