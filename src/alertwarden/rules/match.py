"""The `match` filter of a rule, compiled once into closures.

Every event meets every rule, so the YAML tree is turned into nested closures at load time and
evaluating a filter never looks at the tree again. A subtree without named regex groups compiles
to a plain predicate; only subtrees that can produce captures build dicts.

Each rule runs once per event, so the call depth per rule matters. A condition compiles to one
closure that reads the field and tests the value, and a filter without captures gets a matcher
that returns NO_CAPTURES or None itself instead of wrapping a predicate: a top-level condition on
a field costs one Python call, and `all` costs one call plus one per condition it tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import regex

from alertwarden.events import FieldPath
from alertwarden.rules.preview import preview

Fields = dict[str, Any]
Captures = dict[str, object]
Predicate = Callable[[Any], bool]
Matcher = Callable[[Fields], Captures | None]

NO_CAPTURES: Captures = {}
"""The shared result of a match without captures. Callers must not mutate it."""

REGEX_INPUT_MAX_CHARS = 65_536
"""Maximum characters of a value that a regex searches, which bounds the cost of one search."""

REGEX_TIMEOUT_S = 0.05
"""Time limit of one regex search on one value. A search that exceeds it counts as no match.

The `regex` package (not the standard `re`) enforces it, because a pattern such as `(a|aa)+$`
backtracks exponentially on an input such as "aaa…a!" and the input comes from the log line.
Passing the limit costs about 1.5 µs per search (regex 2026.12.2, CPython 3.11, x86-64).
"""
REGEX_REPEAT_TIMEOUT_S = 0.005
"""Time limit of a search by a filter that timed out within the last REGEX_REPEAT_WINDOW_S.

Every timed-out search blocks the event loop, which all tenants of a serve process share, for
the whole limit. A flood of lines that time out would take 50 ms of it per line, and with this
shorter limit 5 ms, while the searches of ordinary lines, which take microseconds, still match.
"""
REGEX_REPEAT_WINDOW_S = 60.0
# NOTE: a search that stays just under its limit is neither stopped nor counted. A pattern that
# takes 20 ms on each of a tenant's lines costs the event loop that much per event and leaves
# the rule healthy. The `regex` package with a time limit only bounds this cost. A linear-time
# engine such as RE2 would remove it for the patterns it supports.

MAX_FILTER_DEPTH = 32
MAX_FILTER_NODES = 1_000
_MAX_NUMERIC_STRING_CHARS = 64

STRING_OPERATORS = ("equals", "in", "contains", "prefix", "regex")
NUMBER_OPERATORS = ("gt", "gte", "lt", "lte")
OPERATORS = (*STRING_OPERATORS, "exists", *NUMBER_OPERATORS)
COMBINATORS = ("all", "any", "not")

_COMPARISONS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "gt": (operator.gt, ">"),
    "gte": (operator.ge, ">="),
    "lt": (operator.lt, "<"),
    "lte": (operator.le, "<="),
}


class FilterError(ValueError):
    """A match filter is invalid. `location` is the path inside `match`, such as `all[1].regex`."""

    def __init__(self, location: str, message: str) -> None:
        super().__init__(f"{location or 'match'}: {message}")
        self.location = location
        self.message = message


class RegexTimeoutCounter:
    """Number of regex searches of one filter that exceeded their time limit, and the last one's time.

    The matchers increment it instead of raising, so a caller evaluating many events never
    handles an exception per event and reads the count when it reports.
    """

    __slots__ = ("count", "last_at")

    def __init__(self) -> None:
        self.count = 0
        # time.monotonic() of the last timed-out search.
        self.last_at = -math.inf

    def limit_s(self, now: float) -> float:
        """Return the time limit of a search at monotonic time `now`."""
        if now - self.last_at < REGEX_REPEAT_WINDOW_S:
            return REGEX_REPEAT_TIMEOUT_S
        return REGEX_TIMEOUT_S

    def record(self, now: float) -> None:
        """Count a timed-out search at monotonic time `now`."""
        self.count += 1
        self.last_at = now


@dataclass(frozen=True, slots=True)
class IndexHint:
    """A necessary condition of a filter on one field, for dispatching events to rules by value.

    Contract, for the value `v` that `path.get(fields)` returns:

    - `v` is a str (or a str subclass) and `v` is not in `values` (when `case_sensitive`), or
      `v.casefold()` is not in `values` (otherwise): the filter does not match the event.
    - `v` is anything else, such as a list (which matches when any element matches), a number,
      None or a missing field: the hint gives no conclusion, and the caller must run the full
      matcher.
    - `v` is in `values`: no conclusion either, because other conditions of the filter can still
      fail.

    The filter compiler produces a hint for a top-level string `equals`, a top-level `in` whose
    values are all strings, and an `all` that contains one of them, directly or in a nested
    `all` (the first one in the order written).

    `sufficient` is True when the hint is the whole filter (a top-level `equals` or `in`): then a
    str `v` in `values` (casefolded unless case-sensitive) is enough, the filter matches with no
    captures, and the caller may skip the matcher.
    """

    path: FieldPath
    values: frozenset[str]
    case_sensitive: bool
    sufficient: bool = False


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    """A compiled match filter.

    `matcher` returns None when the event does not match, otherwise the regex captures.
    `capture_names` are the named groups of every regex in the filter. `description` is the
    filter in words, one line per condition, indented by nesting. `index_hint` is a value
    condition every matching event meets, or None when the filter has no such simple form.
    `regex_timeouts` counts the regex searches of `matcher` that timed out and so did not match.
    """

    matcher: Matcher
    capture_names: frozenset[str]
    description: tuple[str, ...]
    index_hint: IndexHint | None = None
    regex_timeouts: RegexTimeoutCounter = field(default_factory=RegexTimeoutCounter, compare=False)


@dataclass(frozen=True, slots=True)
class _Node:
    """A compiled subtree.

    `test` is the predicate. `capture` returns the captures when the subtree has named groups.
    `matcher` is the predicate in matcher form (NO_CAPTURES or None) without a wrapper call,
    when the subtree has no captures and the compiler built one.
    """

    test: Callable[[Fields], bool]
    capture: Matcher | None
    capture_names: frozenset[str]
    words: tuple[str, ...]
    matcher: Matcher | None = None
    hint: IndexHint | None = None


def compile_filter(tree: Any) -> CompiledFilter:
    """Compile a match filter tree; None matches every event. Raises FilterError.

    The tree comes from a rule file or an API request, so it may hold any YAML or JSON value.
    """
    if tree is None:
        return CompiledFilter(_match_all, frozenset(), ("every event",))
    compiler = _FilterCompiler()
    node = compiler.compile(tree, "", 0)
    if node.capture is not None:
        matcher = node.capture
    elif node.matcher is not None:
        matcher = node.matcher
    else:
        matcher = _matcher_of(node.test)
    return CompiledFilter(matcher, node.capture_names, node.words, node.hint, compiler.regex_timeouts)


def _matcher_of(test: Callable[[Fields], bool]) -> Matcher:
    def matcher(fields: Fields) -> Captures | None:
        return NO_CAPTURES if test(fields) else None

    return matcher


def _match_all(fields: Fields) -> Captures | None:
    return NO_CAPTURES


def parse_number(value: str) -> int | float | None:
    """Return the number a string spells (ASCII digits, optional sign, decimals or exponent), else None."""
    text = value.strip()
    if not text or len(text) > _MAX_NUMERIC_STRING_CHARS or not text.isascii():
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def is_number(value: object) -> bool:
    """Tell whether a value is an int or a finite float; bool is not a number."""
    if type(value) is bool:
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


class _FilterCompiler:
    """Compiler of one filter tree. It counts nodes because YAML aliases can expand a small file into a huge tree."""

    def __init__(self) -> None:
        self.nodes = 0
        self.regex_timeouts = RegexTimeoutCounter()

    def compile(self, tree: object, location: str, depth: int) -> _Node:
        self.nodes += 1
        if self.nodes > MAX_FILTER_NODES:
            raise FilterError(location, f"filter has more than {MAX_FILTER_NODES} conditions")
        if depth > MAX_FILTER_DEPTH:
            raise FilterError(location, f"filter is nested deeper than {MAX_FILTER_DEPTH} levels")
        if not isinstance(tree, dict):
            raise FilterError(
                location,
                f"expected a mapping such as {{field: PATH, equals: VALUE}} or {{all: [...]}}, "
                f"got {_show(tree)}",
            )
        combinators = [key for key in COMBINATORS if key in tree]
        if combinators:
            return self._compile_combinator(tree, combinators, location, depth)
        return _compile_condition(tree, location, self.regex_timeouts)

    def _compile_combinator(
        self, tree: dict[str, Any], combinators: list[str], location: str, depth: int
    ) -> _Node:
        if len(tree) != 1:
            extra = ", ".join(sorted(str(key) for key in tree if key != combinators[0]))
            raise FilterError(
                location,
                f"'{combinators[0]}' must be the only key of its mapping, found also: {extra}",
            )
        kind = combinators[0]
        body = tree[kind]
        if kind == "not":
            return _negate(self.compile(body, _join(location, "not"), depth + 1))
        if not isinstance(body, list) or not body:
            raise FilterError(
                _join(location, kind), f"expected a non-empty list of conditions, got {_show(body)}"
            )
        children = [
            self.compile(child, f"{_join(location, kind)}[{index}]", depth + 1)
            for index, child in enumerate(body)
        ]
        return _conjoin(children) if kind == "all" else _disjoin(children)


def _join(location: str, key: str) -> str:
    return f"{location}.{key}" if location else key


def _show(value: object) -> str:
    """Quote a value for an error message, shortened to 80 characters whatever its size."""
    return preview(value)


def _quote(value: object) -> str:
    """Quote a value in full, for the description an operator reads to check the rule."""
    return json.dumps(value, default=repr, ensure_ascii=False)


# Combinators


def _negate(child: _Node) -> _Node:
    inner = child.test

    def test(fields: Fields) -> bool:
        return not inner(fields)

    def matcher(fields: Fields) -> Captures | None:
        return None if inner(fields) else NO_CAPTURES

    return _Node(test, None, frozenset(), ("not:", *_indent(child.words)), matcher)


def _conjoin(children: list[_Node]) -> _Node:
    words = ("all of:", *_indent_items(children))
    names = frozenset().union(*(child.capture_names for child in children))
    test = _all_test([child.test for child in children])
    # Every condition of `all` must hold, so the hint of any child is a hint of the whole.
    hint = next((child.hint for child in children if child.hint is not None), None)
    if hint is not None and len(children) > 1:
        hint = dataclasses.replace(hint, sufficient=False)
    if not names:
        return _Node(test, None, names, words, _all_matcher([child.test for child in children]), hint)

    # Plain predicates run first: they are cheaper and can reject before any dict is built.
    plain = _all_test([child.test for child in children if child.capture is None])
    capturers = [child.capture for child in children if child.capture is not None]

    def capture(fields: Fields) -> Captures | None:
        if not plain(fields):
            return None
        merged: Captures | None = None
        for capturer in capturers:
            found = capturer(fields)
            if found is None:
                return None
            if found:
                merged = found if merged is None else {**merged, **found}
        return NO_CAPTURES if merged is None else merged

    return _Node(test, capture, names, words, None, hint)


def _disjoin(children: list[_Node]) -> _Node:
    words = ("any of:", *_indent_items(children))
    names = frozenset().union(*(child.capture_names for child in children))
    test = _any_test([child.test for child in children])
    if not names:
        return _Node(test, None, names, words, _any_matcher([child.test for child in children]))

    branches = [(child.test, child.capture) for child in children]

    def capture(fields: Fields) -> Captures | None:
        # The first branch that matches, in the order written, supplies the captures.
        for branch_test, branch_capture in branches:
            if branch_capture is None:
                if branch_test(fields):
                    return NO_CAPTURES
                continue
            found = branch_capture(fields)
            if found is not None:
                return found
        return None

    return _Node(test, capture, names, words)


def _all_test(tests: Sequence[Callable[[Fields], bool]]) -> Callable[[Fields], bool]:
    # Fixed arities avoid a loop per event for the common small filters.
    if not tests:
        return lambda fields: True
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda fields: first(fields) and second(fields)
    if len(tests) == 3:
        first, second, third = tests
        return lambda fields: first(fields) and second(fields) and third(fields)
    all_tests = tuple(tests)

    def test(fields: Fields) -> bool:
        for one in all_tests:
            if not one(fields):
                return False
        return True

    return test


def _all_matcher(tests: Sequence[Callable[[Fields], bool]]) -> Matcher:
    all_tests = tuple(tests)

    def matcher(fields: Fields) -> Captures | None:
        for one in all_tests:
            if not one(fields):
                return None
        return NO_CAPTURES

    return matcher


def _any_matcher(tests: Sequence[Callable[[Fields], bool]]) -> Matcher:
    any_tests = tuple(tests)

    def matcher(fields: Fields) -> Captures | None:
        for one in any_tests:
            if one(fields):
                return NO_CAPTURES
        return None

    return matcher


def _any_test(tests: Sequence[Callable[[Fields], bool]]) -> Callable[[Fields], bool]:
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda fields: first(fields) or second(fields)
    any_tests = tuple(tests)

    def test(fields: Fields) -> bool:
        for one in any_tests:
            if one(fields):
                return True
        return False

    return test


def _indent(lines: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"  {line}" for line in lines)


def _indent_items(children: list[_Node]) -> list[str]:
    lines: list[str] = []
    for child in children:
        first, *rest = child.words
        lines.append(f"  - {first}")
        lines.extend(f"    {line}" for line in rest)
    return lines


# Conditions


def _compile_condition(tree: dict[str, Any], location: str, regex_timeouts: RegexTimeoutCounter) -> _Node:
    path = _read_path(tree, location)
    case_sensitive = _read_case_sensitive(tree, location)
    op = _read_operator(tree, location)
    op_location = _join(location, op)
    value = tree[op]
    if case_sensitive and op not in STRING_OPERATORS:
        raise FilterError(
            _join(location, "case_sensitive"),
            f"case_sensitive applies only to {', '.join(STRING_OPERATORS)}, not to '{op}'",
        )

    if op == "exists":
        return _compile_exists(path, value, op_location)
    if op == "regex":
        return _compile_regex(path, value, case_sensitive, op_location, regex_timeouts)
    element_test, words = _compile_element_test(op, value, case_sensitive, op_location)
    suffix = " (case-sensitive)" if case_sensitive else ""
    described = (f"{path.text} {words}{suffix}",)
    strings = _string_values(op, value, case_sensitive)
    if strings is None:
        return _Node(
            _field_check(path, element_test, True, False),
            None,
            frozenset(),
            described,
            _field_check(path, element_test, NO_CAPTURES, None),
        )
    return _Node(
        _string_set_check(path, strings, case_sensitive, True, False),
        None,
        frozenset(),
        described,
        _string_set_check(path, strings, case_sensitive, NO_CAPTURES, None),
        IndexHint(path, strings, case_sensitive, sufficient=True),
    )


def _string_values(op: str, value: object, case_sensitive: bool) -> frozenset[str] | None:
    """Return the compared strings (casefolded unless case-sensitive) of a string-only equals or in.

    None means the operator also compares numbers or booleans, or is another operator. Call it
    after the operator's value has been validated.
    """
    if op == "equals" and isinstance(value, str):
        return frozenset((value if case_sensitive else value.casefold(),))
    if op == "in" and isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(item if case_sensitive else item.casefold() for item in value)
    return None


def _simple_name(path: FieldPath) -> str | None:
    """Return the key of a path without dots, which a closure reads with one dict.get."""
    return None if "." in path.text else path.text


def _string_set_check(
    path: FieldPath, strings: frozenset[str], case_sensitive: bool, hit: Any, miss: Any
) -> Callable[[Fields], Any]:
    """Build one closure for a string equals or in: `hit` when the value is in `strings`.

    It behaves as `_field_check` with the element test of `_compile_equals` or `_membership_test`:
    only str values can match, and a list matches when any element does. The same code builds the
    predicate (True, False) and the matcher (NO_CAPTURES, None).
    """
    name = _simple_name(path)
    get = path.get

    if case_sensitive:

        def element_test(candidate: Any) -> bool:
            return isinstance(candidate, str) and candidate in strings

        def check(fields: Fields) -> Any:
            value = fields.get(name) if name is not None else get(fields)
            if isinstance(value, str):
                return hit if value in strings else miss
            if type(value) is list:
                return hit if any(map(element_test, value)) else miss
            return miss

        return check

    def folded_element_test(candidate: Any) -> bool:
        return isinstance(candidate, str) and candidate.casefold() in strings

    def folded_check(fields: Fields) -> Any:
        value = fields.get(name) if name is not None else get(fields)
        if isinstance(value, str):
            return hit if value.casefold() in strings else miss
        if type(value) is list:
            return hit if any(map(folded_element_test, value)) else miss
        return miss

    return folded_check


def _read_path(tree: dict[str, Any], location: str) -> FieldPath:
    if "field" not in tree:
        raise FilterError(
            location,
            f"condition has no 'field'; write {{field: PATH, OPERATOR: VALUE}} or use "
            f"{', '.join(COMBINATORS)}, got {_show(tree)}",
        )
    text = tree["field"]
    if not isinstance(text, str):
        raise FilterError(_join(location, "field"), f"expected a dotted field path, got {_show(text)}")
    try:
        return FieldPath(text)
    except ValueError as error:
        raise FilterError(_join(location, "field"), str(error)) from None


def _read_case_sensitive(tree: dict[str, Any], location: str) -> bool:
    flag = tree.get("case_sensitive", False)
    if not isinstance(flag, bool):
        raise FilterError(_join(location, "case_sensitive"), f"expected true or false, got {_show(flag)}")
    return flag


def _read_operator(tree: dict[str, Any], location: str) -> str:
    unknown = [key for key in tree if key not in OPERATORS and key not in ("field", "case_sensitive")]
    if unknown:
        raise FilterError(
            _join(location, str(unknown[0])),
            f"unknown operator {str(unknown[0])!r}; use one of: {', '.join(OPERATORS)}, "
            f"or combine conditions with {', '.join(COMBINATORS)}",
        )
    found = [key for key in OPERATORS if key in tree]
    if not found:
        raise FilterError(location, f"condition on {tree['field']!r} has no operator; add one of: {', '.join(OPERATORS)}")
    if len(found) > 1:
        raise FilterError(
            location,
            f"condition has {len(found)} operators ({', '.join(found)}); use exactly one per "
            "condition and combine conditions with all",
        )
    return found[0]


def _field_check(path: FieldPath, element_test: Predicate, hit: Any, miss: Any) -> Callable[[Fields], Any]:
    """Build the closure of a condition: `hit` when the value, or any element of a list, passes.

    The same code builds the predicate (True, False) and the matcher (NO_CAPTURES, None).
    """
    name = _simple_name(path)
    get = path.get

    def check(fields: Fields) -> Any:
        value = fields.get(name) if name is not None else get(fields)
        if value is None:
            return miss
        if type(value) is list:
            return hit if any(map(element_test, value)) else miss
        return hit if element_test(value) else miss

    return check


def _exists_check(path: FieldPath, expected: bool, hit: Any, miss: Any) -> Callable[[Fields], Any]:
    name = _simple_name(path)
    get = path.get

    def check(fields: Fields) -> Any:
        value = fields.get(name) if name is not None else get(fields)
        return hit if (value is not None) is expected else miss

    return check


def _compile_exists(path: FieldPath, expected: object, location: str) -> _Node:
    if not isinstance(expected, bool):
        raise FilterError(location, f"expected true or false, got {_show(expected)}")
    words = f"{path.text} is present" if expected else f"{path.text} is absent or null"
    return _Node(
        _exists_check(path, expected, True, False),
        None,
        frozenset(),
        (words,),
        _exists_check(path, expected, NO_CAPTURES, None),
    )


def _compile_element_test(
    op: str, value: object, case_sensitive: bool, location: str
) -> tuple[Predicate, str]:
    if op == "equals":
        return _compile_equals(value, case_sensitive, location)
    if op == "in":
        return _compile_in(value, case_sensitive, location)
    if op in ("contains", "prefix"):
        return _compile_substring(op, value, case_sensitive, location)
    return _compile_comparison(op, value, location)


def _compile_equals(value: object, case_sensitive: bool, location: str) -> tuple[Predicate, str]:
    if isinstance(value, bool):
        return (lambda candidate: candidate is value), f"is {_quote(value)}"
    if is_number(value):
        return _number_equals(value), f"equals {_quote(value)} (as a number)"  # type: ignore[arg-type]
    if isinstance(value, str):
        if case_sensitive:
            return (lambda candidate: candidate == value), f"equals {_quote(value)}"
        folded = value.casefold()
        return (
            lambda candidate: isinstance(candidate, str) and candidate.casefold() == folded
        ), f"equals {_quote(value)} (ignoring case)"
    raise FilterError(
        location,
        f"expected a string, number or boolean, got {_show(value)}; use 'in' for a list of values "
        "and 'exists: false' for a missing field",
    )


def _number_equals(expected: int | float) -> Predicate:
    def test(candidate: Any) -> bool:
        if type(candidate) is bool:
            return False
        if isinstance(candidate, (int, float)):
            return candidate == expected
        if isinstance(candidate, str):
            number = parse_number(candidate)
            return number is not None and number == expected
        return False

    return test


def _compile_in(values: object, case_sensitive: bool, location: str) -> tuple[Predicate, str]:
    if not isinstance(values, list) or not values:
        raise FilterError(location, f"expected a non-empty list of values, got {_show(values)}")
    strings: set[str] = set()
    numbers: set[int | float] = set()
    booleans: set[bool] = set()
    for index, item in enumerate(values):
        if isinstance(item, bool):
            booleans.add(item)
        elif is_number(item):
            numbers.add(item)
        elif isinstance(item, str):
            strings.add(item if case_sensitive else item.casefold())
        else:
            raise FilterError(
                f"{location}[{index}]", f"expected a string, number or boolean, got {_show(item)}"
            )
    test = _membership_test(frozenset(strings), frozenset(numbers), frozenset(booleans), case_sensitive)
    case_words = "" if case_sensitive or not strings else " (ignoring case)"
    return test, f"is one of {_quote(values)}{case_words}"


def _membership_test(
    strings: frozenset[str], numbers: frozenset[int | float], booleans: frozenset[bool], case_sensitive: bool
) -> Predicate:
    def test(candidate: Any) -> bool:
        if isinstance(candidate, str):
            if (candidate if case_sensitive else candidate.casefold()) in strings:
                return True
            if not numbers:
                return False
            number = parse_number(candidate)
            return number is not None and number in numbers
        # bool is checked before int because True == 1 would otherwise find 1 in `numbers`.
        if type(candidate) is bool:
            return candidate in booleans
        if isinstance(candidate, (int, float)):
            return candidate in numbers
        return False

    return test


def _compile_substring(
    op: str, value: object, case_sensitive: bool, location: str
) -> tuple[Predicate, str]:
    if not isinstance(value, str) or not value:
        raise FilterError(location, f"expected a non-empty string, got {_show(value)}")
    if op == "contains":
        return _contains_test(value, case_sensitive), _case_words(f"contains {_quote(value)}", case_sensitive)
    return _prefix_test(value, case_sensitive), _case_words(f"starts with {_quote(value)}", case_sensitive)


def _case_words(words: str, case_sensitive: bool) -> str:
    return words if case_sensitive else f"{words} (ignoring case)"


def _contains_test(needle: str, case_sensitive: bool) -> Predicate:
    if case_sensitive:
        return lambda candidate: isinstance(candidate, str) and needle in candidate
    folded = needle.casefold()
    return lambda candidate: isinstance(candidate, str) and folded in candidate.casefold()


def _prefix_test(prefix: str, case_sensitive: bool) -> Predicate:
    if case_sensitive:
        return lambda candidate: isinstance(candidate, str) and candidate.startswith(prefix)
    folded = prefix.casefold()
    # casefold maps each character on its own to one or more characters, so the first
    # len(folded) characters of the value are enough to decide, whatever its length.
    size = len(folded)
    return lambda candidate: isinstance(candidate, str) and candidate[:size].casefold().startswith(folded)


def _compile_comparison(op: str, value: object, location: str) -> tuple[Predicate, str]:
    if not is_number(value):
        raise FilterError(location, f"expected a number, got {_show(value)}")
    compare, symbol = _COMPARISONS[op]

    def test(candidate: Any) -> bool:
        if type(candidate) is bool:
            return False
        if isinstance(candidate, (int, float)):
            return compare(candidate, value)
        if isinstance(candidate, str):
            number = parse_number(candidate)
            return number is not None and compare(number, value)
        return False

    return test, f"{symbol} {_quote(value)}"


def _compile_regex(
    path: FieldPath, value: object, case_sensitive: bool, location: str, timeouts: RegexTimeoutCounter
) -> _Node:
    if not isinstance(value, str) or not value:
        raise FilterError(location, f"expected a non-empty regular expression string, got {_show(value)}")
    pattern = _compile_pattern(value, case_sensitive, location)
    search = _bounded_search(pattern, timeouts)

    def element_test(candidate: Any) -> bool:
        return isinstance(candidate, str) and search(candidate) is not None

    words = _case_words(f"{path.text} matches regex {_quote(value)}", case_sensitive)
    test = _field_check(path, element_test, True, False)
    names = frozenset(pattern.groupindex)
    if not names:
        return _Node(test, None, names, (words,), _field_check(path, element_test, NO_CAPTURES, None))
    return _Node(test, _regex_capture(path, search), names, (words,))


def _compile_pattern(value: str, case_sensitive: bool, location: str) -> regex.Pattern[str]:
    """Compile with `regex`, accepting exactly the syntax of Python's `re` and quoting its errors.

    `regex` also accepts syntax that `re` rejects, such as the `(?r)` flag, so checking with `re`
    first keeps the rule language the documented one.
    """
    try:
        re.compile(value, 0 if case_sensitive else re.IGNORECASE)
    except re.error as error:
        raise FilterError(location, f"invalid regex {_show(value)}: {error}") from None
    try:
        return regex.compile(value, 0 if case_sensitive else regex.IGNORECASE)
    except regex.error as error:
        raise FilterError(location, f"regex {_show(value)} is not supported by the regex package: {error}") from None


def _bounded_search(pattern: regex.Pattern[str], timeouts: RegexTimeoutCounter) -> Callable[[str], Any]:
    """Search the first REGEX_INPUT_MAX_CHARS characters; a timed-out search counts and returns None."""
    search = pattern.search
    limit = REGEX_INPUT_MAX_CHARS
    monotonic = time.monotonic

    def bounded(text: str) -> Any:
        # The clock is read only for a filter that has timed out before, so the common search
        # costs one attribute read more than with a fixed limit.
        timeout_s = REGEX_TIMEOUT_S if timeouts.count == 0 else timeouts.limit_s(monotonic())
        try:
            return search(text[:limit], timeout=timeout_s)
        except TimeoutError:
            timeouts.record(monotonic())
            return None

    return bounded


def _regex_capture(path: FieldPath, search: Callable[[str], Any]) -> Matcher:
    get = path.get

    def captures_of(candidate: Any) -> Captures | None:
        if not isinstance(candidate, str):
            return None
        found = search(candidate)
        if found is None:
            return None
        # Groups that took no part in the match are left out, so they render as missing.
        groups = {name: text for name, text in found.groupdict().items() if text is not None}
        return groups or NO_CAPTURES

    def capture(fields: Fields) -> Captures | None:
        value = get(fields)
        if type(value) is list:
            for element in value:
                found = captures_of(element)
                if found is not None:
                    return found
            return None
        return captures_of(value)

    return capture
