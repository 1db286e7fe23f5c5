"""The compiled match filter: operators, combinators and captures."""

import json
import time
from typing import Any

import pytest

from alertwarden.rules import load_rules_text
from alertwarden.rules.match import (
    NO_CAPTURES,
    REGEX_INPUT_MAX_CHARS,
    REGEX_REPEAT_TIMEOUT_S,
    REGEX_REPEAT_WINDOW_S,
    REGEX_TIMEOUT_S,
    FilterError,
    RegexTimeoutCounter,
    compile_filter,
)
from alertwarden.rules.preview import preview

EVENT: dict[str, Any] = {
    "body": "Failed password for invalid user Admin from 10.0.0.7 port 22",
    "severity_text": "WARN",
    "status": 503,
    "status_text": "404",
    "latency": "12.5",
    "ratio": 0.25,
    "ok": False,
    "tags": ["auth", "SSH"],
    "codes": [200, "500"],
    "note": None,
    "straße": "Straße",
    "attributes": {"src_ip": "10.0.0.7", "user": {"name": "Admin"}},
    "resource": {"attributes": {"host.name": "Web-01", "service.name": "sshd"}},
}

# (case name, condition, expected match on EVENT)
OPERATOR_CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("equals ignores case", {"field": "severity_text", "equals": "warn"}, True),
    ("equals case-sensitive miss", {"field": "severity_text", "equals": "warn", "case_sensitive": True}, False),
    ("equals case-sensitive hit", {"field": "severity_text", "equals": "WARN", "case_sensitive": True}, True),
    ("equals casefold sharp s", {"field": "straße", "equals": "STRASSE"}, True),
    ("equals number vs int", {"field": "status", "equals": 503}, True),
    ("equals number vs numeric string", {"field": "status_text", "equals": 404}, True),
    ("equals float vs numeric string", {"field": "latency", "equals": 12.5}, True),
    ("equals string vs int field", {"field": "status", "equals": "503"}, False),
    ("equals number vs other string", {"field": "severity_text", "equals": 1}, False),
    ("equals false vs bool", {"field": "ok", "equals": False}, True),
    ("equals 0 vs bool field", {"field": "ok", "equals": 0}, False),
    ("equals missing field", {"field": "nope", "equals": "x"}, False),
    ("equals null field", {"field": "note", "equals": "x"}, False),
    ("equals nested path", {"field": "attributes.user.name", "equals": "admin"}, True),
    ("equals dotted key", {"field": "resource.attributes.host.name", "equals": "web-01"}, True),
    ("equals list element", {"field": "tags", "equals": "ssh"}, True),
    ("equals list no element", {"field": "tags", "equals": "cron"}, False),
    ("equals number in mixed list", {"field": "codes", "equals": 500}, True),
    ("in strings", {"field": "severity_text", "in": ["error", "warn"]}, True),
    ("in case-sensitive", {"field": "severity_text", "in": ["warn"], "case_sensitive": True}, False),
    ("in numbers vs numeric string", {"field": "status_text", "in": [400, 404]}, True),
    ("in numbers vs int", {"field": "status", "in": [500, 503]}, True),
    ("in string vs int", {"field": "status", "in": ["503"]}, False),
    ("in bool not number", {"field": "ok", "in": [0, 1]}, False),
    ("in bool", {"field": "ok", "in": [False]}, True),
    ("in list field", {"field": "tags", "in": ["ssh", "vpn"]}, True),
    ("contains", {"field": "body", "contains": "INVALID USER"}, True),
    ("contains case-sensitive", {"field": "body", "contains": "INVALID USER", "case_sensitive": True}, False),
    ("contains non-string", {"field": "status", "contains": "50"}, False),
    ("prefix", {"field": "body", "prefix": "failed password"}, True),
    ("prefix miss", {"field": "body", "prefix": "accepted"}, False),
    ("prefix casefold expands", {"field": "straße", "prefix": "strass"}, True),
    ("prefix case-sensitive", {"field": "body", "prefix": "failed", "case_sensitive": True}, False),
    ("regex search", {"field": "body", "regex": r"user \w+ from"}, True),
    ("regex ignores case", {"field": "body", "regex": "ADMIN"}, True),
    ("regex case-sensitive", {"field": "body", "regex": "ADMIN", "case_sensitive": True}, False),
    ("regex non-string", {"field": "status", "regex": "5"}, False),
    ("regex list", {"field": "tags", "regex": "^ss"}, True),
    ("exists true", {"field": "attributes.src_ip", "exists": True}, True),
    ("exists true missing", {"field": "attributes.nope", "exists": True}, False),
    ("exists true null", {"field": "note", "exists": True}, False),
    ("exists false missing", {"field": "attributes.nope", "exists": False}, True),
    ("exists false null", {"field": "note", "exists": False}, True),
    ("exists false present", {"field": "status", "exists": False}, False),
    ("gt int", {"field": "status", "gt": 500}, True),
    ("gt equal", {"field": "status", "gt": 503}, False),
    ("gte equal", {"field": "status", "gte": 503}, True),
    ("lt float", {"field": "ratio", "lt": 0.5}, True),
    ("lte numeric string", {"field": "latency", "lte": 12.5}, True),
    ("lt numeric string miss", {"field": "latency", "lt": 12}, False),
    ("gt non-numeric string", {"field": "severity_text", "gt": 0}, False),
    ("gt bool field", {"field": "ok", "gte": 0}, False),
    ("gt list element", {"field": "codes", "gt": 400}, True),
    ("gt missing", {"field": "nope", "gt": 0}, False),
]


@pytest.mark.parametrize(("condition", "expected"), [case[1:] for case in OPERATOR_CASES], ids=[c[0] for c in OPERATOR_CASES])
def test_operator(condition: dict[str, Any], expected: bool) -> None:
    result = compile_filter(condition).matcher(EVENT)
    assert (result is not None) is expected


COMBINATOR_CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("all true", {"all": [{"field": "status", "gte": 500}, {"field": "tags", "equals": "auth"}]}, True),
    ("all one false", {"all": [{"field": "status", "gte": 500}, {"field": "tags", "equals": "x"}]}, False),
    ("any one true", {"any": [{"field": "status", "lt": 0}, {"field": "tags", "equals": "auth"}]}, True),
    ("any none true", {"any": [{"field": "status", "lt": 0}, {"field": "tags", "equals": "x"}]}, False),
    ("not false", {"not": {"field": "status", "lt": 0}}, True),
    ("not true", {"not": {"field": "status", "gt": 0}}, False),
    ("not missing field", {"not": {"field": "nope", "equals": "x"}}, True),
    (
        "nested",
        {"all": [{"any": [{"field": "ok", "equals": True}, {"not": {"field": "note", "exists": True}}]}, {"field": "ratio", "gt": 0}]},
        True,
    ),
    ("all of four", {"all": [{"field": "status", "gt": i} for i in range(4)]}, True),
    ("all of four miss", {"all": [{"field": "status", "gt": i * 200} for i in range(4)]}, False),
    ("any of three", {"any": [{"field": "status", "lt": i} for i in range(3)]}, False),
]


@pytest.mark.parametrize(("tree", "expected"), [case[1:] for case in COMBINATOR_CASES], ids=[c[0] for c in COMBINATOR_CASES])
def test_combinator(tree: dict[str, Any], expected: bool) -> None:
    result = compile_filter(tree).matcher(EVENT)
    assert (result is not None) is expected


def test_no_filter_matches_all() -> None:
    assert compile_filter(None).matcher({}) is NO_CAPTURES


def test_match_without_captures_shared() -> None:
    matcher = compile_filter({"field": "status", "gt": 1}).matcher
    assert matcher(EVENT) is NO_CAPTURES
    assert NO_CAPTURES == {}


def test_regex_captures() -> None:
    compiled = compile_filter({"field": "body", "regex": r"user (?P<user>\w+) from (?P<src_ip>[\d.]+)"})
    assert compiled.capture_names == {"user", "src_ip"}
    assert compiled.matcher(EVENT) == {"user": "Admin", "src_ip": "10.0.0.7"}


def test_regex_unmatched_group_left_out() -> None:
    compiled = compile_filter({"field": "body", "regex": r"(?P<port>port \d+)|(?P<never>zzz)"})
    assert compiled.matcher(EVENT) == {"port": "port 22"}


def test_regex_captures_of_list_element() -> None:
    compiled = compile_filter({"field": "tags", "regex": "^(?P<proto>s.*)$"})
    assert compiled.matcher(EVENT) == {"proto": "SSH"}


def test_captures_all_merged() -> None:
    tree = {
        "all": [
            {"field": "body", "regex": r"user (?P<user>\w+)"},
            {"field": "status", "gt": 1},
            {"field": "attributes.src_ip", "regex": r"^(?P<net>\d+)\."},
        ]
    }
    assert compile_filter(tree).matcher(EVENT) == {"user": "Admin", "net": "10"}


def test_captures_all_fails_on_any_branch() -> None:
    tree = {"all": [{"field": "body", "regex": r"user (?P<user>\w+)"}, {"field": "status", "lt": 1}]}
    assert compile_filter(tree).matcher(EVENT) is None


def test_captures_any_first_matching_branch() -> None:
    tree = {
        "any": [
            {"field": "body", "regex": r"(?P<word>nomatch)"},
            {"field": "body", "regex": r"(?P<word>password)"},
            {"field": "body", "regex": r"(?P<word>Failed)"},
        ]
    }
    assert compile_filter(tree).matcher(EVENT) == {"word": "password"}


def test_captures_any_plain_branch_first() -> None:
    tree = {"any": [{"field": "status", "gt": 1}, {"field": "body", "regex": r"(?P<word>Failed)"}]}
    assert compile_filter(tree).matcher(EVENT) is NO_CAPTURES


def test_captures_not_gives_none() -> None:
    tree = {"all": [{"not": {"field": "body", "regex": r"(?P<x>zzz)"}}, {"field": "status", "gt": 1}]}
    compiled = compile_filter(tree)
    assert compiled.capture_names == frozenset()
    assert compiled.matcher(EVENT) is NO_CAPTURES


def test_regex_sees_first_64k_only() -> None:
    compiled = compile_filter({"field": "body", "regex": "needle"})
    assert compiled.matcher({"body": "x" * (REGEX_INPUT_MAX_CHARS - 6) + "needle"}) is not None
    assert compiled.matcher({"body": "x" * REGEX_INPUT_MAX_CHARS + "needle"}) is None


def test_numeric_string_non_ascii_rejected() -> None:
    compiled = compile_filter({"field": "n", "equals": 12})
    assert compiled.matcher({"n": "12"}) is not None
    assert compiled.matcher({"n": "١٢"}) is None
    assert compiled.matcher({"n": "nan"}) is None


INVALID_CASES: list[tuple[str, object, str, str]] = [
    ("unknown operator", {"field": "x", "equal": 1}, "equal", "unknown operator 'equal'"),
    ("two operators", {"field": "x", "equals": 1, "gt": 0}, "", "2 operators (equals, gt)"),
    ("no operator", {"field": "x"}, "", "has no operator"),
    ("no field", {"equals": 1}, "", "has no 'field'"),
    ("bad regex", {"field": "x", "regex": "a("}, "regex", "invalid regex \"a(\": missing ), unterminated subpattern"),
    ("gt string", {"field": "x", "gt": "5"}, "gt", 'expected a number, got "5"'),
    ("gt bool", {"field": "x", "gt": True}, "gt", "expected a number, got true"),
    ("in empty", {"field": "x", "in": []}, "in", "non-empty list"),
    ("in nested list", {"field": "x", "in": ["a", ["b"]]}, "in[1]", 'got ["b"]'),
    ("equals list", {"field": "x", "equals": ["a"]}, "equals", "use 'in'"),
    ("equals null", {"field": "x", "equals": None}, "equals", "exists: false"),
    ("exists string", {"field": "x", "exists": "yes"}, "exists", 'expected true or false, got "yes"'),
    ("contains empty", {"field": "x", "contains": ""}, "contains", "non-empty string"),
    ("case flag on number", {"field": "x", "gt": 1, "case_sensitive": True}, "case_sensitive", "not to 'gt'"),
    ("case flag not bool", {"field": "x", "equals": "a", "case_sensitive": "yes"}, "case_sensitive", "true or false"),
    ("bad path", {"field": "a..b", "equals": 1}, "field", "invalid field path 'a..b'"),
    ("all empty", {"all": []}, "all", "non-empty list"),
    ("any not list", {"any": {"field": "x", "equals": 1}}, "any", "non-empty list"),
    ("combinator extra key", {"all": [{"field": "x", "exists": True}], "field": "y"}, "", "only key"),
    ("nested unknown operator", {"all": [{"field": "x", "exists": True}, {"not": {"field": "y", "like": "z"}}]}, "all[1].not.like", "unknown operator 'like'"),
    ("not a mapping", ["x"], "", 'got ["x"]'),
]


@pytest.mark.parametrize(
    ("tree", "location", "message"), [case[1:] for case in INVALID_CASES], ids=[c[0] for c in INVALID_CASES]
)
def test_invalid_filter(tree: Any, location: str, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(tree)
    assert caught.value.location == location
    assert message in caught.value.message


def test_filter_node_limit() -> None:
    tree = {"any": [{"field": "x", "equals": i} for i in range(1001)]}
    with pytest.raises(FilterError, match="more than 1000 conditions"):
        compile_filter(tree)


def test_filter_depth_limit() -> None:
    tree: dict[str, Any] = {"field": "x", "exists": True}
    for _ in range(40):
        tree = {"not": tree}
    with pytest.raises(FilterError, match="nested deeper than 32"):
        compile_filter(tree)


def test_description_in_words() -> None:
    tree = {"all": [{"field": "a", "equals": "X"}, {"not": {"field": "b", "gt": 3}}, {"field": "c", "in": [1, 2]}]}
    assert compile_filter(tree).description == (
        "all of:",
        '  - a equals "X" (ignoring case)',
        "  - not:",
        "      b > 3",
        "  - c is one of [1, 2]",
    )


# Index hints: which filters produce one, and the contract that a str value outside the hint's
# values never matches.

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from alertwarden.rules import IndexHint  # noqa: E402


def hint_of(tree: dict[str, Any]) -> IndexHint | None:
    return compile_filter(tree).index_hint


def test_index_hint_equals() -> None:
    hint = hint_of({"field": "severity_text", "equals": "WARN"})
    assert hint is not None
    assert hint.path.text == "severity_text"
    assert hint.values == frozenset({"warn"})
    assert hint.case_sensitive is False
    assert hint.sufficient is True


def test_index_hint_in_case_sensitive() -> None:
    hint = hint_of({"field": "attributes.user.name", "in": ["Admin", "root"], "case_sensitive": True})
    assert hint is not None
    assert hint.path.text == "attributes.user.name"
    assert hint.values == frozenset({"Admin", "root"})
    assert hint.case_sensitive is True


def test_index_hint_all_takes_first() -> None:
    hint = hint_of(
        {
            "all": [
                {"field": "status", "gt": 1},
                {"field": "body", "regex": "(?P<user>\\w+)"},
                {"field": "tags", "in": ["SSH"]},
                {"field": "severity_text", "equals": "warn"},
            ]
        }
    )
    assert hint is not None
    assert hint.path.text == "tags"
    assert hint.values == frozenset({"ssh"})
    # The other conditions still decide, so the dispatcher must run the matcher.
    assert hint.sufficient is False


def test_index_hint_all_of_one_condition_is_sufficient() -> None:
    hint = hint_of({"all": [{"field": "tags", "in": ["SSH", "vpn"]}]})
    assert hint is not None
    assert hint.values == frozenset({"ssh", "vpn"})
    assert hint.sufficient is True


@pytest.mark.parametrize(
    "tree",
    [
        {"field": "status", "equals": 503},
        {"field": "ok", "equals": True},
        {"field": "status_text", "in": ["404", 404]},
        {"field": "body", "contains": "x"},
        {"any": [{"field": "severity_text", "equals": "warn"}]},
        {"not": {"field": "severity_text", "equals": "warn"}},
        {"all": [{"field": "status", "gt": 1}, {"any": [{"field": "body", "equals": "x"}]}]},
    ],
)
def test_index_hint_absent(tree: dict[str, Any]) -> None:
    assert hint_of(tree) is None


def test_index_hint_on_compiled_rule() -> None:
    rules = load_rules_text(
        "- id: r\n  match: {field: event_class, in: [Login, logout]}\n  threshold: 1\n  window: 1m\n"
    )
    hint = rules[0].index_hint
    assert hint is not None
    assert hint.values == frozenset({"login", "logout"})


WORDS = ["a", "A", "b", "ß", "SS", "ss", "1", "2.0"]
FIELD_NAMES = ["x", "y", "n.m"]
SCALARS = st.one_of(st.sampled_from(WORDS), st.integers(0, 2), st.floats(0, 2), st.booleans(), st.none())


def condition() -> st.SearchStrategy[dict[str, Any]]:
    field_name = st.sampled_from(FIELD_NAMES)
    case = st.booleans()
    string_ops = st.one_of(
        st.builds(lambda f, v, c: {"field": f, "equals": v, "case_sensitive": c}, field_name, st.sampled_from(WORDS), case),
        st.builds(
            lambda f, v, c: {"field": f, "in": v, "case_sensitive": c},
            field_name,
            st.lists(st.sampled_from(WORDS), min_size=1, max_size=3),
            case,
        ),
        st.builds(lambda f, v: {"field": f, "prefix": v}, field_name, st.sampled_from(WORDS)),
        st.builds(lambda f, v: {"field": f, "regex": v}, field_name, st.sampled_from(["^a", "(?P<g>s+)", "\\d"])),
    )
    other_ops = st.one_of(
        st.builds(lambda f, v: {"field": f, "equals": v}, field_name, st.one_of(st.integers(0, 2), st.booleans())),
        st.builds(
            lambda f, v: {"field": f, "in": v},
            field_name,
            st.lists(st.one_of(st.sampled_from(WORDS), st.integers(0, 2)), min_size=1, max_size=3),
        ),
        st.builds(lambda f, v: {"field": f, "exists": v}, field_name, st.booleans()),
        st.builds(lambda f, v: {"field": f, "gte": v}, field_name, st.integers(0, 2)),
    )
    return st.one_of(string_ops, other_ops)


FILTERS = st.recursive(
    condition(),
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda items: {"all": items}),
        st.lists(children, min_size=1, max_size=3).map(lambda items: {"any": items}),
        children.map(lambda child: {"not": child}),
    ),
    max_leaves=6,
)
# Mostly strings, so the hint's str branch runs often.
VALUES = st.one_of(st.sampled_from(WORDS), st.sampled_from(WORDS), SCALARS, st.lists(SCALARS, max_size=3))
EVENTS = st.fixed_dictionaries(
    {"x": VALUES, "y": VALUES},
    optional={"n.m": VALUES, "n": st.fixed_dictionaries({}, optional={"m": VALUES})},
)


@given(FILTERS, EVENTS)
def test_index_hint_contract(tree: dict[str, Any], fields: dict[str, Any]) -> None:
    compiled = compile_filter(tree)
    hint = compiled.index_hint
    if hint is None:
        return
    value = hint.path.get(fields)
    if not isinstance(value, str):
        return
    key = value if hint.case_sensitive else value.casefold()
    if key not in hint.values:
        assert compiled.matcher(fields) is None
    elif hint.sufficient:
        assert compiled.matcher(fields) == {}


@given(FILTERS, EVENTS)
def test_matcher_agrees_with_predicate(tree: dict[str, Any], fields: dict[str, Any]) -> None:
    compiled = compile_filter(tree)
    expected = compile_filter({"any": [tree]}).matcher(fields) is not None
    assert (compiled.matcher(fields) is not None) is expected


# ------------------------------------------------------------ regex time limit

# The `regex` package finds that `(a+)+$` cannot match in linear time, but `(a|aa)+$` still
# backtracks exponentially: on 40 "a" and a "!" it runs far beyond REGEX_TIMEOUT_S.
CATASTROPHIC = "a" * 40 + "!"


def test_regex_nested_plus_no_match() -> None:
    compiled = compile_filter({"field": "body", "regex": "(a+)+$"})
    assert compiled.matcher({"body": "a" * 30 + "!"}) is None
    assert compiled.regex_timeouts.count == 0


def test_regex_timeout_counts_no_match() -> None:
    compiled = compile_filter({"field": "body", "regex": "(a|aa)+$"})
    assert compiled.matcher({"body": CATASTROPHIC}) is None
    assert compiled.regex_timeouts.count == 1
    assert compiled.matcher({"body": "aaaa"}) is NO_CAPTURES
    assert compiled.regex_timeouts.count == 1


def test_regex_limit_shorter_after_timeout() -> None:
    counter = RegexTimeoutCounter()
    assert counter.limit_s(1000.0) == REGEX_TIMEOUT_S

    counter.record(1000.0)

    assert counter.count == 1
    assert counter.limit_s(1000.0) == REGEX_REPEAT_TIMEOUT_S
    assert counter.limit_s(1000.0 + REGEX_REPEAT_WINDOW_S - 0.5) == REGEX_REPEAT_TIMEOUT_S
    assert counter.limit_s(1000.0 + REGEX_REPEAT_WINDOW_S) == REGEX_TIMEOUT_S


def test_regex_timeout_sets_shorter_limit() -> None:
    compiled = compile_filter({"field": "body", "regex": "(a|aa)+$"})
    assert compiled.matcher({"body": CATASTROPHIC}) is None

    limit = compiled.regex_timeouts.limit_s(time.monotonic())

    assert limit == REGEX_REPEAT_TIMEOUT_S
    # An ordinary value still matches within the shorter limit.
    assert compiled.matcher({"body": "aaaa"}) is NO_CAPTURES
    assert compiled.regex_timeouts.count == 1


def test_regex_timeout_with_captures() -> None:
    tree = {"any": [{"field": "body", "regex": "(?P<run>(a|aa)+)$"}, {"field": "body", "regex": "(?P<bang>!)"}]}
    compiled = compile_filter(tree)
    # The first branch times out, so it does not match and the second one supplies the captures.
    assert compiled.matcher({"body": CATASTROPHIC}) == {"bang": "!"}
    assert compiled.regex_timeouts.count == 1


def test_regex_timeouts_on_compiled_rule() -> None:
    rule = load_rules_text("- id: r\n  match: {field: body, regex: '(a|aa)+$'}\n")[0]
    assert rule.match({"body": CATASTROPHIC}) is None
    assert rule.match({"body": ["x", CATASTROPHIC]}) is None
    assert rule.regex_timeouts == 2


def test_regex_rejects_non_re_syntax() -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter({"field": "body", "regex": r"\p{L}"})
    assert caught.value.message == 'invalid regex "\\\\p{L}": bad escape \\p at position 0'


# ------------------------------------------------------------ value previews


@pytest.mark.parametrize(
    "value",
    [None, True, 1.5, 42, "text", ["a", 1, None], {"k": [1, {"n": False}]}, {1: "int key"}, [], {}],
)
def test_preview_short_equals_json(value: Any) -> None:
    assert preview(value) == json.dumps(value, ensure_ascii=False)


def test_preview_long_string_cut() -> None:
    text = preview("é" * 1_000_000)
    assert text == '"' + "é" * 76 + "..."


def test_preview_deep_nesting_cut() -> None:
    nested: list[Any] = []
    for _ in range(10_000):
        nested = [nested]
    assert preview(nested) == "[" * 77 + "..."


def test_preview_huge_integer() -> None:
    assert preview(10**5000) == f'"<integer of {(10**5000).bit_length()} bits>"'
