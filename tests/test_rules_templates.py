"""Annotation templates: parsing, substitution and limits."""

import pytest

from alertwarden.rules.templates import TEMPLATE_MAX_CHARS, TemplateError, parse_template, placeholder_names


def test_substitution() -> None:
    template = parse_template("{count} failures from {src_ip} in {window}")
    assert template.placeholders == ("count", "src_ip", "window")
    assert template.render({"count": 6, "src_ip": "10.0.0.1", "window": "10m"}) == "6 failures from 10.0.0.1 in 10m"


def test_literal_braces() -> None:
    template = parse_template("{{count}} is {count}; }} {{")
    assert template.placeholders == ("count",)
    assert template.render({"count": 3}) == "{count} is 3; } {"


def test_missing_and_none_render_empty() -> None:
    template = parse_template("[{a}][{b}]")
    assert template.render({"a": None}) == "[][]"


def test_value_formatting() -> None:
    template = parse_template("{a} {b} {c}")
    assert template.render({"a": True, "b": 2.5, "c": ["x"]}) == "true 2.5 ['x']"


def test_values_not_reinterpreted() -> None:
    template = parse_template("{a}")
    assert template.render({"a": "{b} {{"}) == "{b} {{"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("a {count", "unclosed or empty placeholder at position 2"),
        ("a {} b", "unclosed or empty placeholder at position 2"),
        ("a } b", "unmatched '}' at position 2"),
        ("{a{b}", "unclosed or empty placeholder at position 0"),
    ],
)
def test_invalid_template(source: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        parse_template(source)


def test_template_length_cap() -> None:
    with pytest.raises(TemplateError, match="maximum is 4096"):
        parse_template("x" * (TEMPLATE_MAX_CHARS + 1))


def test_rendered_length_cap() -> None:
    rendered = parse_template("{a}").render({"a": "y" * 10_000})
    assert len(rendered) == TEMPLATE_MAX_CHARS
    assert rendered.endswith("…")


def test_placeholder_names() -> None:
    known, ambiguous = placeholder_names(["attributes.src_ip", "a.host", "b.host", "count.x"], ["user"])
    assert {"attributes.src_ip", "src_ip", "user", "count", "a.host", "b.host"} <= known
    assert "host" not in known
    assert set(ambiguous) == {"host"}
    assert "count.__class__" not in known
