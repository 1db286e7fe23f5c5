"""Annotation templates: `{name}` placeholders filled by plain substitution.

A template is parsed once into literal text and placeholder names. Rendering only looks names
up in a mapping and joins strings, so a template can never run code or reach attributes:
`{count.__class__}` is simply an unknown name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from alertwarden.engine.records import format_time

TEMPLATE_MAX_CHARS = 4_096
"""Maximum length of a template and of one rendered annotation, in characters."""

TRUNCATION_MARK = "…"

FIXED_PLACEHOLDERS = frozenset(
    {"count", "threshold", "window", "window_s", "rule", "rule_name", "kind", "at", "severity"}
)
"""Placeholders every rule supports, on top of its group_by paths and regex named groups."""


class TemplateError(ValueError):
    """A template is invalid; the message names the offending text."""


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: `parts` alternates literal text (even indexes) and placeholder names."""

    source: str
    parts: tuple[str, ...]

    @property
    def placeholders(self) -> tuple[str, ...]:
        return self.parts[1::2]

    def render(self, values: Mapping[str, object]) -> str:
        """Substitute every placeholder; a name missing from `values` or None renders as ""."""
        pieces = list(self.parts)
        for index in range(1, len(pieces), 2):
            pieces[index] = format_value(values.get(pieces[index]))
        text = "".join(pieces)
        if len(text) > TEMPLATE_MAX_CHARS:
            return text[: TEMPLATE_MAX_CHARS - len(TRUNCATION_MARK)] + TRUNCATION_MARK
        return text


def parse_template(source: str) -> Template:
    """Parse `{name}` placeholders; `{{` and `}}` are literal braces. Raises TemplateError."""
    if len(source) > TEMPLATE_MAX_CHARS:
        raise TemplateError(f"template is {len(source)} characters long, the maximum is {TEMPLATE_MAX_CHARS}")
    parts: list[str] = []
    literal: list[str] = []
    index = 0
    while index < len(source):
        char = source[index]
        following = source[index + 1] if index + 1 < len(source) else ""
        if char in "{}" and following == char:
            literal.append(char)
            index += 2
            continue
        if char == "}":
            raise TemplateError(f"unmatched '}}' at position {index}; write '}}}}' for a literal brace")
        if char == "{":
            end = source.find("}", index + 1)
            name = source[index + 1 : end] if end != -1 else ""
            if end == -1 or not name or "{" in name:
                raise TemplateError(
                    f"unclosed or empty placeholder at position {index}; write {{name}}, "
                    "or '{{' for a literal brace"
                )
            parts.append("".join(literal))
            parts.append(name)
            literal = []
            index = end + 1
            continue
        literal.append(char)
        index += 1
    parts.append("".join(literal))
    return Template(source, tuple(parts))


def placeholder_names(group_by: Iterable[str], capture_names: Iterable[str]) -> tuple[frozenset[str], dict[str, str]]:
    """Return the placeholders a rule supports, and the ambiguous short names with their reason.

    A group_by path is available as its full dotted path and as its last segment. A last segment
    shared by two paths (`a.ip`, `b.ip`) is ambiguous and only the full paths may be used.
    """
    paths = list(group_by)
    names = set(FIXED_PLACEHOLDERS) | set(capture_names) | set(paths)
    owners: dict[str, list[str]] = {}
    for path in paths:
        owners.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    ambiguous: dict[str, str] = {}
    for short, full_paths in owners.items():
        if short in names:
            continue
        if len(full_paths) == 1:
            names.add(short)
        else:
            ambiguous[short] = f"it is the last segment of {', '.join(full_paths)}; use the full path"
    return frozenset(names), ambiguous


def format_value(value: object) -> str:
    """Format a value for an annotation: None as "", booleans as true/false, others with str()."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def format_at(value: object) -> object:
    """Format the `at` value as RFC 3339 when it is UTC seconds; leave other values as given."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_time(float(value))
    return value
