"""Rule defaults: which fields of a rule they fill, the label merge, and rule files loaded with them."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from alertwarden.events import Signal
from alertwarden.rules import MissingKeyPolicy, RuleDefaults, RuleFileError, load_rules_file, load_rules_text

DEFAULTS = RuleDefaults.model_validate(
    {
        "cooldown": "10m",
        "severity": "warning",
        "labels": {"team": "platform", "env": "prod"},
        "group_by": ["host"],
    }
)


def test_apply_fills_missing_fields() -> None:
    filled = DEFAULTS.apply({"id": "r1", "threshold": 3})

    assert filled == {
        "id": "r1",
        "threshold": 3,
        "cooldown": "10m",
        "severity": "warning",
        "labels": {"team": "platform", "env": "prod"},
        "group_by": ["host"],
    }


def test_apply_keeps_own_values() -> None:
    entry = {"id": "r1", "cooldown": "1m", "severity": "critical", "group_by": []}

    filled = DEFAULTS.apply(entry)

    assert filled["cooldown"] == "1m"
    assert filled["severity"] == "critical"
    assert filled["group_by"] == []
    assert entry == {"id": "r1", "cooldown": "1m", "severity": "critical", "group_by": []}


def test_apply_keeps_explicit_null() -> None:
    filled = DEFAULTS.apply({"id": "r1", "severity": None})
    assert filled["severity"] is None


def test_apply_merges_labels() -> None:
    filled = DEFAULTS.apply({"id": "r1", "labels": {"env": "staging", "owner": "ana"}})
    assert filled["labels"] == {"team": "platform", "env": "staging", "owner": "ana"}


def test_apply_leaves_invalid_labels_to_validation() -> None:
    filled = DEFAULTS.apply({"id": "r1", "labels": ["a"]})
    assert filled["labels"] == ["a"]


def test_apply_without_defaults_is_a_copy() -> None:
    entry = {"id": "r1", "labels": {"a": "b"}}

    filled = RuleDefaults().apply(entry)

    assert filled == entry
    assert filled is not entry


def test_apply_bucket_only_with_default_window() -> None:
    defaults = RuleDefaults.model_validate({"window": "14m", "bucket": "7m"})

    no_window = defaults.apply({"id": "r1"})
    own_window = defaults.apply({"id": "r2", "window": "1h"})
    own_bucket = defaults.apply({"id": "r3", "bucket": "2m"})

    assert (no_window["window"], no_window["bucket"]) == ("14m", "7m")
    assert own_window == {"id": "r2", "window": "1h"}
    assert (own_bucket["window"], own_bucket["bucket"]) == ("14m", "2m")


def test_defaults_validated_as_rule() -> None:
    with pytest.raises(ValidationError) as caught:
        RuleDefaults.model_validate({"window": "15m", "bucket": "10m"})

    message = str(caught.value)
    assert "field 'bucket': 10m does not divide the window 15m" in message


def test_defaults_reject_unknown_field() -> None:
    with pytest.raises(ValidationError) as caught:
        RuleDefaults.model_validate({"annotations": {"summary": "x"}})
    assert caught.value.errors()[0]["loc"] == ("annotations",)


def test_rule_text_gets_defaults() -> None:
    defaults = RuleDefaults.model_validate(
        {
            "group": "platform",
            "signal": "events",
            "threshold": 20,
            "window": "1h",
            "renotify": "0",
            "on_missing_key": "skip",
            "max_groups": 50,
            "labels": {"team": "platform"},
        }
    )
    text = """
rules:
  - id: plain
  - id: own
    group: auth
    signal: logs
    threshold: 2
    window: 5m
    renotify: 1h
    on_missing_key: group
    max_groups: 9
    labels: {team: security}
"""

    plain, own = load_rules_text(text, "rules.yaml", defaults)

    assert plain.group == "platform"
    assert plain.signal is Signal.EVENTS
    assert plain.threshold == 20
    assert (plain.window_s, plain.bucket_s) == (3600, 60)
    assert plain.renotify_s == 0
    assert plain.on_missing_key is MissingKeyPolicy.SKIP
    assert plain.max_groups == 50
    assert plain.labels == {"team": "platform"}
    assert own.group == "auth"
    assert own.signal is Signal.LOGS
    assert own.threshold == 2
    assert (own.window_s, own.bucket_s) == (300, 30)
    assert own.renotify_s == 3600
    assert own.on_missing_key is MissingKeyPolicy.GROUP
    assert own.max_groups == 9
    assert own.labels == {"team": "security"}


def test_rule_file_gets_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("- id: r1\n  labels: {env: staging}\n- id: r2\n  cooldown: 1m\n  severity: null\n")

    r1, r2 = load_rules_file(path, DEFAULTS)
    plain = load_rules_file(path)[0]

    assert r1.cooldown_s == 600
    assert r1.severity == "warning"
    assert r1.group_by == ("host",)
    assert r1.labels == {"team": "platform", "env": "staging"}
    assert r2.cooldown_s == 60
    assert r2.severity is None
    assert plain.cooldown_s == 300
    assert plain.group_by == ("source_id",)
    assert plain.labels == {"env": "staging"}


def test_rule_file_error_from_default_window(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("- id: r1\n  bucket: 4m\n")
    defaults = RuleDefaults.model_validate({"window": "14m"})

    with pytest.raises(RuleFileError) as caught:
        load_rules_file(path, defaults)

    assert caught.value.problems == (
        "rule 'r1' field 'bucket': 4m does not divide the window 14m; use a divisor of the window,"
        " such as 1m, or leave bucket out for that default",
    )
