"""Plain-text explanation of compiled rules, printed by `alertwarden rules check FILE`."""

from __future__ import annotations

from collections.abc import Iterable

from alertwarden.rules.compiled import CompiledRule
from alertwarden.rules.durations import format_duration
from alertwarden.rules.model import MissingKeyPolicy

_MISSING_KEY_WORDS = {
    MissingKeyPolicy.GROUP: "events without a group_by field are counted in a group whose value is missing",
    MissingKeyPolicy.SKIP: "events without a group_by field are ignored by this rule",
}


def explain_rules(rules: Iterable[CompiledRule]) -> str:
    """Describe each rule in words so an operator can confirm it means what they intended."""
    blocks = ["\n".join(explain_rule(rule)) for rule in rules]
    return "\n\n".join(blocks) if blocks else "no rules"


def explain_rule(rule: CompiledRule) -> list[str]:
    """Return the lines that describe one rule."""
    title = f"rule {rule.id}" if rule.name == rule.id else f"rule {rule.id} ({rule.name})"
    lines = [title + ("" if rule.enabled else "  [disabled]")]
    if rule.description:
        lines.append(f"  description: {rule.description}")
    lines.append(f"  group: {rule.group}")
    lines.append(f"  signal: {rule.signal.value}")
    lines.extend(_match_lines(rule))
    lines.append(f"  group_by: {', '.join(rule.group_by) if rule.group_by else '(none: one group for the whole rule)'}")
    lines.append(
        f"  threshold: {rule.threshold} events within {format_duration(rule.window_s)} "
        f"(bucket {format_duration(rule.bucket_s)}, {rule.bucket_count} buckets)"
    )
    lines.append(f"  cooldown: {_duration_or_off(rule.cooldown_s)}")
    lines.append(f"  renotify: {_duration_or_off(rule.renotify_s)}")
    lines.append(f"  on_missing_key: {rule.on_missing_key.value} ({_MISSING_KEY_WORDS[rule.on_missing_key]})")
    lines.append(f"  max_groups: {rule.max_groups}")
    if rule.severity is not None:
        lines.append(f"  severity: {rule.severity}")
    lines.extend(f"  label {key}: {value}" for key, value in rule.labels.items())
    lines.extend(f"  annotation {key}: {value}" for key, value in rule.annotations.items())
    return lines


def _match_lines(rule: CompiledRule) -> list[str]:
    words = rule.definition.compiled_filter.description
    if len(words) == 1:
        return [f"  match: {words[0]}"]
    return ["  match:", *(f"    {line}" for line in words)]


def _duration_or_off(seconds: int) -> str:
    return "off" if seconds == 0 else format_duration(seconds)
