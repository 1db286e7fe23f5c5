"""CompiledRule: a validated rule in the form the engine evaluates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alertwarden.events import FieldPath, Signal
from alertwarden.rules.durations import format_duration
from alertwarden.rules.match import Captures, IndexHint, Matcher, RegexTimeoutCounter
from alertwarden.rules.model import MissingKeyPolicy, RuleDefinition
from alertwarden.rules.templates import FIXED_PLACEHOLDERS, Template, format_at


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule ready for evaluation. Durations are whole seconds.

    `matcher` is the compiled match filter; `match()` calls it, and hot loops may call
    `matcher` directly to save one call. `index_hint`, when set, names one field and the string
    values the field must have for the rule to match, so a caller can skip the rule for other
    string values; see IndexHint for the exact contract. `definition` is the validated model,
    kept for the API and for `alertwarden rules check`. `regex_timeouts` counts the regex
    searches that timed out, which the matcher treats as no match.
    """

    id: str
    name: str
    description: str
    enabled: bool
    group: str
    signal: Signal
    threshold: int
    window_s: int
    bucket_s: int
    cooldown_s: int
    renotify_s: int
    group_by: tuple[str, ...]
    group_by_paths: tuple[FieldPath, ...] = field(compare=False)
    on_missing_key: MissingKeyPolicy
    max_groups: int
    severity: str | None
    labels: dict[str, str]
    annotations: dict[str, str]
    definition: RuleDefinition = field(repr=False, compare=False)
    matcher: Matcher = field(repr=False, compare=False)
    templates: dict[str, Template] = field(repr=False, compare=False)
    placeholder_aliases: tuple[tuple[str, str], ...] = field(repr=False, compare=False, default=())
    """(last segment, full path) of each group_by path whose last segment is a placeholder."""
    index_hint: IndexHint | None = field(repr=False, compare=False, default=None)
    timeout_counter: RegexTimeoutCounter = field(repr=False, compare=False, default_factory=RegexTimeoutCounter)
    """The filter's counter, read through `regex_timeouts` after each batch: a read through
    `definition` goes through pydantic's attribute lookup, which costs microseconds."""

    @property
    def bucket_count(self) -> int:
        return self.window_s // self.bucket_s

    @property
    def regex_timeouts(self) -> int:
        """Regex searches of this rule's filter that exceeded REGEX_TIMEOUT_S since it was compiled.

        Each one made its condition not match. The count is shared by every CompiledRule built
        from the same RuleDefinition.
        """
        return self.timeout_counter.count

    def match(self, fields: dict[str, Any]) -> Captures | None:
        """Return None when the event fields do not match, else the regex captures.

        The captures of `all` are merged, `any` takes those of the first branch that matched, and
        `not` gives none. A match without captures returns one shared empty dict, which callers
        must not mutate.
        """
        return self.matcher(fields)

    def render_annotations(self, values: Mapping[str, object]) -> dict[str, str]:
        """Render every annotation template.

        `values` contains what the engine computes: count, kind, at (UTC seconds or a string),
        the group_by values keyed by their full path, and the regex captures. The rule fills in
        threshold, window, window_s, rule, rule_name and severity, and the last segment of each
        group_by path, unless `values` sets them. A missing or None value renders as an empty
        string, and each result is cut to TEMPLATE_MAX_CHARS characters.
        """
        if not self.templates:
            return {}
        merged = self._template_values(values)
        return {key: template.render(merged) for key, template in self.templates.items()}

    def _template_values(self, values: Mapping[str, object]) -> dict[str, object]:
        merged: dict[str, object] = {
            "threshold": self.threshold,
            "window": format_duration(self.window_s),
            "window_s": self.window_s,
            "rule": self.id,
            "rule_name": self.name,
            "severity": self.severity,
        }
        for short, path in self.placeholder_aliases:
            if short not in values and path in values:
                merged[short] = values[path]
        merged.update(values)
        if "at" in merged:
            merged["at"] = format_at(merged["at"])
        return merged


def compile_rule(definition: RuleDefinition) -> CompiledRule:
    """Build the engine's form of a validated rule definition."""
    assert definition.bucket_s is not None, "RuleDefinition validation fills in the bucket"
    return CompiledRule(
        id=definition.id,
        name=definition.name or definition.id,
        description=definition.description,
        enabled=definition.enabled,
        group=definition.group,
        signal=definition.signal,
        threshold=definition.threshold,
        window_s=definition.window_s,
        bucket_s=definition.bucket_s,
        cooldown_s=definition.cooldown_s,
        renotify_s=definition.renotify_s,
        group_by=tuple(definition.group_by),
        group_by_paths=tuple(FieldPath(path) for path in definition.group_by),
        on_missing_key=definition.on_missing_key,
        max_groups=definition.max_groups,
        severity=definition.severity,
        labels=dict(definition.labels),
        annotations=dict(definition.annotations),
        definition=definition,
        matcher=definition.compiled_filter.matcher,
        templates=dict(definition.templates),
        placeholder_aliases=_placeholder_aliases(definition),
        index_hint=definition.compiled_filter.index_hint,
        timeout_counter=definition.compiled_filter.regex_timeouts,
    )


def _placeholder_aliases(definition: RuleDefinition) -> tuple[tuple[str, str], ...]:
    """Pair last segments with their group_by path, leaving out names that mean something else."""
    # A regex group of the same name wins when the event supplied it (see _template_values).
    reserved = FIXED_PLACEHOLDERS | set(definition.group_by)
    shorts = [path.rsplit(".", 1)[-1] for path in definition.group_by]
    return tuple(
        (short, path)
        for short, path in zip(shorts, definition.group_by, strict=True)
        if short not in reserved and shorts.count(short) == 1
    )
