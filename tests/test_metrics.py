"""Metrics fed from a real RuleGroupPipeline on a SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from alertwarden.engine.evaluator import Evaluator
from alertwarden.events import Event, Signal
from alertwarden.metrics import Metrics
from alertwarden.pipeline import RuleGroupPipeline
from alertwarden.rules import load_rules_text
from alertwarden.sinks.base import Notification
from alertwarden.store.sqlite import SQLiteStore

T0 = 1_709_632_800.0  # 2024-03-05T10:00:00Z

RULES = """
- id: errors
  match: {field: severity, equals: error}
  group_by: [host]
  threshold: 2
  window: 5m
  bucket: 1m
  cooldown: 0
  renotify: 0
"""


class CollectingSink:
    def __init__(self) -> None:
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        self.sent.append(notification)

    async def close(self) -> None:
        return None


def no_resume(source: str, offset: int) -> tuple[int, str | None]:
    return offset, None


def log_event(time_s: float, severity: str, host: str = "web-1") -> Event:
    return Event(time_s, {"severity": severity, "host": host}, Signal.LOGS)


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[RuleGroupPipeline]:
    rules = load_rules_text(RULES)
    store = SQLiteStore(tmp_path / "metrics.sqlite")
    await store.open()
    evaluator = Evaluator(rules, tenant="acme", rule_group="main")
    pipeline = RuleGroupPipeline(evaluator, rules, store, CollectingSink(), source="test")
    await pipeline.start(no_resume)
    yield pipeline
    await store.close()


async def feed(pipeline: RuleGroupPipeline, events: list[Event], first_offset: int = 0) -> None:
    for offset, event in enumerate(events, start=first_offset):
        await pipeline.process(event, offset)
    await pipeline.flush(first_offset + len(events), force=True)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return value


async def test_metrics_counts_events(pipeline: RuleGroupPipeline) -> None:
    metrics = Metrics(clock=lambda: T0 + 100.0)
    await feed(pipeline, [log_event(T0, "error"), log_event(T0 + 1, "error"), log_event(T0 + 2, "info")])
    metrics.update_from(pipeline)

    assert sample(metrics, "alertwarden_events_total", tenant="acme", result="matched") == 2
    assert sample(metrics, "alertwarden_events_total", tenant="acme", result="unmatched") == 1
    assert sample(metrics, "alertwarden_events_total", tenant="acme", result="late") == 0
    assert sample(metrics, "alertwarden_transitions_total", tenant="acme", rule="errors", kind="fired") == 1
    assert sample(metrics, "alertwarden_live_groups", tenant="acme", rule="errors") == 1
    assert sample(metrics, "alertwarden_store_ready", tenant="acme", rule_group="main") == 1
    assert sample(metrics, "alertwarden_input_lag_seconds", tenant="acme", rule_group="main") == 98.0
    assert sample(metrics, "alertwarden_flush_rows_total", tenant="acme", rule_group="main") == 1
    flushes = sample(metrics, "alertwarden_flush_duration_seconds_count", tenant="acme", rule_group="main")
    assert flushes == pipeline.stats.flushes
    assert sample(metrics, "alertwarden_regex_timeouts_total", tenant="acme", rule="errors") == 0


async def test_metrics_adds_delta(pipeline: RuleGroupPipeline) -> None:
    metrics = Metrics(clock=lambda: T0)
    await feed(pipeline, [log_event(T0, "error")])
    metrics.update_from(pipeline)
    metrics.update_from(pipeline)
    assert sample(metrics, "alertwarden_events_total", tenant="acme", result="matched") == 1

    await feed(pipeline, [log_event(T0 + 5, "error"), log_event(T0 + 6, "debug")], first_offset=1)
    metrics.update_from(pipeline)
    assert sample(metrics, "alertwarden_events_total", tenant="acme", result="matched") == 2
    assert sample(metrics, "alertwarden_events_total", tenant="acme", result="unmatched") == 1
    flushes = sample(metrics, "alertwarden_flush_duration_seconds_count", tenant="acme", rule_group="main")
    assert flushes == pipeline.stats.flushes


async def test_metrics_counter_reset(pipeline: RuleGroupPipeline) -> None:
    metrics = Metrics(clock=lambda: T0)
    await feed(pipeline, [log_event(T0, "error"), log_event(T0 + 1, "error")])
    metrics.update_from(pipeline)

    # A replaced pipeline starts its counters at zero again; its new counts still add up.
    pipeline.evaluator.stats.events = 1
    pipeline.evaluator.stats.unmatched = 0
    metrics.update_from(pipeline)
    assert sample(metrics, "alertwarden_events_total", tenant="acme", result="matched") == 3


async def test_metrics_remove_stopped_gauges(pipeline: RuleGroupPipeline) -> None:
    metrics = Metrics(clock=lambda: T0 + 100.0)
    await feed(pipeline, [log_event(T0, "error"), log_event(T0 + 1, "error")])
    metrics.update_from(pipeline)
    metrics.set_rule_health("acme", "errors", True)
    metrics.set_rule_health("acme", "deleted", True)

    # Only the rule "deleted" is gone, so the running rule and its rule group keep their series.
    metrics.remove_stopped({("acme", "errors")}, {("acme", "main")})

    assert sample(metrics, "alertwarden_rule_healthy", tenant="acme", rule="deleted") is None
    assert sample(metrics, "alertwarden_rule_healthy", tenant="acme", rule="errors") == 1
    assert sample(metrics, "alertwarden_live_groups", tenant="acme", rule="errors") == 1
    assert sample(metrics, "alertwarden_store_ready", tenant="acme", rule_group="main") == 1

    metrics.remove_stopped(set(), set())

    text = metrics.render().decode()
    assert 'alertwarden_rule_healthy{' not in text
    assert 'alertwarden_live_groups{' not in text
    assert 'alertwarden_store_ready{' not in text
    assert 'alertwarden_input_lag_seconds{' not in text
    # Counters keep the series of stopped rules.
    assert sample(metrics, "alertwarden_transitions_total", tenant="acme", rule="errors", kind="fired") == 1


def test_metrics_invalid_and_restarts() -> None:
    metrics = Metrics()
    metrics.record_invalid("acme", 3)
    metrics.record_invalid("acme")
    metrics.add_rule_group("acme", "main")
    assert sample(metrics, "alertwarden_evaluator_restarts_total", tenant="acme", rule_group="main") == 0
    metrics.record_restart("acme", "main")
    assert sample(metrics, "alertwarden_events_total", tenant="acme", result="invalid") == 4
    assert sample(metrics, "alertwarden_evaluator_restarts_total", tenant="acme", rule_group="main") == 1


async def test_metrics_render_text(pipeline: RuleGroupPipeline) -> None:
    metrics = Metrics(clock=lambda: T0)
    await feed(pipeline, [log_event(T0, "error")])
    metrics.update_from(pipeline)
    families = {family.name: family for family in text_string_to_metric_families(metrics.render().decode())}
    assert families["alertwarden_events"].type == "counter"
    assert families["alertwarden_flush_duration_seconds"].type == "histogram"
    assert families["alertwarden_live_groups"].type == "gauge"


def test_metrics_registries_separate() -> None:
    first = Metrics()
    second = Metrics()
    first.record_restart("acme", "main")
    assert sample(first, "alertwarden_evaluator_restarts_total", tenant="acme", rule_group="main") == 1
    assert sample(second, "alertwarden_evaluator_restarts_total", tenant="acme", rule_group="main") is None
