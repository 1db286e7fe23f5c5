"""Group key values that no store can hold are rejected by the evaluator, never by a flush."""

from __future__ import annotations

import time

import pytest

from alertwarden.engine.evaluator import MAX_KEY_CHARS, Evaluator
from alertwarden.events import Event, Signal
from alertwarden.pipeline import RuleGroupPipeline
from alertwarden.rules import load_rules_text
from alertwarden.sinks.base import Notification
from alertwarden.store.postgres import PostgresStore
from alertwarden.store.sqlite import SQLiteStore

RULES = """
- id: failed-login
  match: {field: event, equals: login_failed}
  group_by: [src]
  threshold: 2
  window: 5m
  bucket: 1m
  cooldown: 0
  renotify: 0
- id: by-user
  match: {field: message, regex: 'user (?P<user>.+)$'}
  group_by: [host]
  threshold: 1
  window: 5m
  bucket: 1m
  annotations:
    summary: "login of {user}"
"""


class CollectingSink:
    def __init__(self) -> None:
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        self.sent.append(notification)

    async def close(self) -> None:
        return None


def login(time_s: float, src: object) -> Event:
    return Event(time_s, {"event": "login_failed", "src": src}, Signal.LOGS)


@pytest.mark.parametrize(
    ("src", "counted"),
    [
        ("a\x00b", False),
        ("x" * (MAX_KEY_CHARS + 1), False),
        ("x" * MAX_KEY_CHARS, True),
        ("198.51.100.7", True),
    ],
    ids=["nul-byte", "one-over-limit", "at-limit", "address"],
)
def test_unstorable_key_value_skipped(src: str, counted: bool) -> None:
    evaluator = Evaluator(load_rules_text(RULES))
    t0 = 1_709_632_800.0

    transitions = evaluator.ingest(login(t0, src), 0) + evaluator.ingest(login(t0 + 1, src), 1)

    stats = evaluator.stats.rules["failed-login"]
    assert stats.invalid_key == (0 if counted else 2)
    assert evaluator.group_count("failed-login") == (1 if counted else 0)
    assert [t.kind.value for t in transitions] == (["fired"] if counted else [])


def test_multi_field_key_limit_counts_all_values() -> None:
    rules = load_rules_text(
        RULES.replace("group_by: [src]", "group_by: [src, dst]").split("- id: by-user")[0]
    )
    evaluator = Evaluator(rules)
    half = "y" * (MAX_KEY_CHARS // 2 + 1)
    fields = {"event": "login_failed", "src": half, "dst": half}

    evaluator.ingest(Event(1_709_632_800.0, fields, Signal.LOGS), 0)

    assert evaluator.stats.rules["failed-login"].invalid_key == 1
    assert evaluator.group_count("failed-login") == 0


async def test_nul_capture_stored_on_postgres(pg_migrated_url: str) -> None:
    """A NUL or a key too long for the primary key index must not stop the flushes."""
    rules = load_rules_text(RULES)
    store = PostgresStore(pg_migrated_url)
    await store.open()
    sink = CollectingSink()
    pipeline = RuleGroupPipeline(Evaluator(rules), rules, store, sink, source="test")
    await pipeline.start(lambda source, offset: (offset, None))
    t0 = float(int(time.time()) // 60 * 60 - 3600)

    events = [
        login(t0, "a\x00b"),
        login(t0 + 1, "r" * 3000),
        Event(t0 + 2, {"message": "user eve\x00il", "host": "web-1"}, Signal.LOGS),
        login(t0 + 3, "198.51.100.7"),
        login(t0 + 4, "198.51.100.7"),
        login(t0 + 90, "198.51.100.7"),
    ]
    for offset, event in enumerate(events):
        await pipeline.process(event, offset)
    await pipeline.finish(len(events))

    assert pipeline.ready
    history = await store.history("default")
    assert sorted((r.rule_id, r.kind) for r in history) == [
        ("by-user", "fired"),
        ("failed-login", "fired"),
    ]
    fired_user = next(n for n in sink.sent if n.rule_id == "by-user")
    assert fired_user.annotations["summary"] == "login of eve\ufffdil"
    assert pipeline.evaluator.stats.rules["failed-login"].invalid_key == 2
    stored = await store.load("default", "default")
    assert stored.checkpoint is not None
    assert stored.checkpoint.offset == len(events)
    await store.close()


async def test_nul_key_flushes_on_sqlite(tmp_path) -> None:  # noqa: ANN001
    rules = load_rules_text(RULES)
    store = SQLiteStore(tmp_path / "state.sqlite")
    await store.open()
    pipeline = RuleGroupPipeline(Evaluator(rules), rules, store, CollectingSink(), source="test")
    await pipeline.start(lambda source, offset: (offset, None))
    t0 = 1_709_632_800.0
    for offset, event in enumerate([login(t0, "a\x00b"), login(t0 + 90, "ok")]):
        await pipeline.process(event, offset)
    await pipeline.finish(2)

    assert pipeline.ready
    stored = await store.load("default", "default")
    assert [snap.key for snap in stored.groups["failed-login"]] == [("ok",)]
    await store.close()
