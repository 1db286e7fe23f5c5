"""Rule files: defaults, validation messages, whole-file rejection and explain output."""

from pathlib import Path

import pytest

from alertwarden.errors import RuleError
from alertwarden.events import FieldPath, Signal
from alertwarden.rules import (
    MAX_RULE_FILE_BYTES,
    CompiledRule,
    MissingKeyPolicy,
    RuleDefinition,
    RuleFileError,
    compile_rule,
    explain_rules,
    load_rules_file,
    load_rules_files,
    load_rules_text,
)

SSH_RULES = """
rules:
  - id: ssh-brute
    name: SSH brute force
    signal: logs
    match:
      all:
        - {field: resource.attributes.service.name, equals: sshd}
        - {field: body, regex: 'Failed password for (invalid user )?(?P<user>\\S+) from (?P<src_ip>[0-9.]+)'}
    group_by: [attributes.src_ip]
    threshold: 5
    window: 10m
    cooldown: 0
    renotify: 1h
    severity: warning
    labels: {team: security}
    annotations:
      summary: "{count} failed logins from {src_ip} ({user}) in {window}"
"""


def load_one(text: str) -> CompiledRule:
    rules = load_rules_text(text)
    assert len(rules) == 1
    return rules[0]


def rejected(text: str) -> RuleFileError:
    with pytest.raises(RuleFileError) as caught:
        load_rules_text(text, "rules.yaml")
    return caught.value


def test_ssh_rule_fields() -> None:
    rule = load_one(SSH_RULES)
    assert rule.id == "ssh-brute"
    assert rule.name == "SSH brute force"
    assert rule.signal is Signal.LOGS
    assert rule.group_by == ("attributes.src_ip",)
    assert [path.text for path in rule.group_by_paths] == ["attributes.src_ip"]
    assert (rule.threshold, rule.window_s, rule.bucket_s) == (5, 600, 60)
    assert (rule.cooldown_s, rule.renotify_s) == (0, 3600)
    assert rule.severity == "warning"
    assert rule.labels == {"team": "security"}


def test_ssh_rule_matches_event() -> None:
    rule = load_one(SSH_RULES)
    fields = {
        "body": "Failed password for invalid user admin from 203.0.113.9 port 4242 ssh2",
        "resource": {"attributes": {"service.name": "sshd"}},
    }
    assert rule.match(fields) == {"user": "admin", "src_ip": "203.0.113.9"}
    assert rule.match({**fields, "resource": {"attributes": {"service.name": "cron"}}}) is None


def test_defaults() -> None:
    rule = load_one("- id: minimal\n")
    assert rule.name == "minimal"
    assert rule.description == ""
    assert rule.enabled is True
    assert rule.group == "default"
    assert rule.signal is Signal.ANY
    assert rule.group_by == ("source_id",)
    assert rule.threshold == 5
    assert (rule.window_s, rule.bucket_s) == (600, 60)
    assert rule.cooldown_s == 300
    assert rule.renotify_s == 21600
    assert rule.severity is None
    assert rule.labels == {}
    assert rule.annotations == {}
    assert rule.on_missing_key is MissingKeyPolicy.GROUP
    assert rule.max_groups == 100_000
    assert rule.match({}) == {}


@pytest.mark.parametrize(
    ("window", "bucket_s"),
    [("10m", 60), ("5m", 30), ("4m", 24), ("90s", 9), ("7s", 1), ("1h", 60), ("650s", 50)],
)
def test_default_bucket_of_window(window: str, bucket_s: int) -> None:
    rule = load_one(f"- id: r\n  window: {window}\n")
    assert rule.bucket_s == bucket_s


def test_empty_group_by() -> None:
    rule = load_one("- id: r\n  group_by: []\n")
    assert rule.group_by == ()
    assert rule.group_by_paths == ()


def test_plain_list_and_numbers() -> None:
    rule = load_one("- id: r\n  window: 120\n  bucket: '30'\n  renotify: 0\n  on_missing_key: skip\n")
    assert (rule.window_s, rule.bucket_s, rule.renotify_s) == (120, 30, 0)
    assert rule.on_missing_key is MissingKeyPolicy.SKIP


def test_empty_file_loads_nothing() -> None:
    assert load_rules_text("") == []
    assert load_rules_text("rules: []") == []


# (case, YAML, text every reported line must contain)
VALIDATION_CASES = [
    ("bucket not dividing", "- id: ssh-brute\n  window: 60s\n  bucket: 7s\n", "rule 'ssh-brute' field 'bucket': 7s does not divide the window 1m"),
    ("threshold zero", "- id: r1\n  threshold: 0\n", "rule 'r1' field 'threshold': threshold 0 is out of range"),
    ("threshold negative", "- id: r1\n  threshold: -3\n", "rule 'r1' field 'threshold': threshold -3 is out of range"),
    ("threshold too large", "- id: r1\n  threshold: 1000000001\n", "threshold 1000000001 is out of range"),
    ("threshold string", "- id: r1\n  threshold: '5'\n", "rule 'r1' field 'threshold': input should be a valid integer, got \"5\""),
    ("unknown operator", "- id: r1\n  match: {field: x, equal: 1}\n", "rule 'r1' field 'match.equal': unknown operator 'equal'"),
    ("bad regex", "- id: r1\n  match: {field: x, regex: 'a[b'}\n", "rule 'r1' field 'match.regex': invalid regex \"a[b\": unterminated character set at position 1"),
    ("bad duration", "- id: r1\n  window: 10 minutes\n", "rule 'r1' field 'window': invalid duration '10 minutes'"),
    ("negative cooldown", "- id: r1\n  cooldown: -5\n", "rule 'r1' field 'cooldown': invalid duration -5: must not be negative"),
    ("null cooldown", "- id: r1\n  cooldown: null\n", "rule 'r1' field 'cooldown': invalid duration null: use seconds or a string"),
    ("boolean window", "- id: r1\n  window: true\n", "rule 'r1' field 'window': invalid duration true: use seconds or a string"),
    ("zero window", "- id: r1\n  window: 0\n", "rule 'r1' field 'window': window 0s is out of range"),
    ("window too long", "- id: r1\n  window: 31d\n", "rule 'r1' field 'window': window 31d is out of range: use from 1s to 30d"),
    ("too many buckets", "- id: r1\n  window: 1d\n  bucket: 1s\n", "rule 'r1' field 'bucket': 1s splits the window 1d into 86400 buckets, the maximum is 10000"),
    ("unknown field", "- id: r1\n  tresh: 5\n", "rule 'r1' field 'tresh': unknown field (value 5)"),
    ("unknown placeholder", "- id: r1\n  annotations: {summary: 'from {src_ip}'}\n", "rule 'r1' field 'annotations.summary': unknown placeholder {src_ip} in 'from {src_ip}'"),
    ("code in placeholder", "- id: r1\n  annotations: {s: '{count.__class__}'}\n", "rule 'r1' field 'annotations.s': unknown placeholder {count.__class__}"),
    ("unclosed placeholder", "- id: r1\n  annotations: {s: 'a {count'}\n", "rule 'r1' field 'annotations.s': invalid template 'a {count'"),
    ("bad id", "- id: 'bad id!'\n", "rule #1 field 'id': invalid value 'bad id!'"),
    ("missing id", "- threshold: 3\n", "rule #1 field 'id': required field is missing"),
    ("bad group", "- id: r1\n  group: 'a b'\n", "rule 'r1' field 'group': invalid value 'a b'"),
    ("bad signal", "- id: r1\n  signal: metrics\n", "rule 'r1' field 'signal': input should be 'logs', 'events' or 'any', got \"metrics\""),
    ("bad on_missing_key", "- id: r1\n  on_missing_key: drop\n", "rule 'r1' field 'on_missing_key'"),
    ("bad max_groups", "- id: r1\n  max_groups: 0\n", "rule 'r1' field 'max_groups': max_groups 0 is out of range"),
    ("duplicate group_by", "- id: r1\n  group_by: [a, a]\n", "rule 'r1' field 'group_by[1]': duplicate path 'a'"),
    ("bad group_by path", "- id: r1\n  group_by: ['a.']\n", "rule 'r1' field 'group_by[0]': invalid field path 'a.'"),
    ("label not string", "- id: r1\n  labels: {team: [a]}\n", "rule 'r1' field 'labels.team': input should be a valid string, got [\"a\"]"),
    ("rule not mapping", "- just-a-string\n", "rule #1: expected a mapping of rule fields, got \"just-a-string\""),
]


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in VALIDATION_CASES], ids=[c[0] for c in VALIDATION_CASES])
def test_validation_message(text: str, expected: str) -> None:
    error = rejected(text)
    assert len(error.problems) == 1, error.problems
    assert expected in error.problems[0]
    assert f"rules.yaml: {error.problems[0]}" in str(error).splitlines()


def test_field_and_cross_field_problems_together() -> None:
    error = rejected(
        "- id: r1\n  threshold: 0\n  window: 10m\n  bucket: 7m\n  annotations: {s: 'from {src_ip}'}\n"
    )

    assert len(error.problems) == 3, error.problems
    assert error.problems[0].startswith("rule 'r1' field 'threshold': threshold 0 is out of range")
    assert error.problems[1].startswith("rule 'r1' field 'bucket': 7m does not divide the window 10m")
    assert error.problems[2].startswith("rule 'r1' field 'annotations.s': unknown placeholder {src_ip}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Checked against the default window, the bucket would be reported wrongly.
        ("- id: r1\n  window: 31d\n  bucket: 7m\n", "rule 'r1' field 'window': window 31d is out of range"),
        # Checked against the default group_by, {host} would be called unknown.
        (
            "- id: r1\n  group_by: [host, host]\n  annotations: {s: '{host}'}\n",
            "rule 'r1' field 'group_by[1]': duplicate path 'host'",
        ),
    ],
)
def test_cross_field_check_skipped_on_invalid_input(text: str, expected: str) -> None:
    error = rejected(text)

    assert len(error.problems) == 1, error.problems
    assert error.problems[0].startswith(expected)


def test_duplicate_id() -> None:
    error = rejected("- id: a\n- id: b\n- id: a\n")
    assert error.problems == (
        "rule 'a' field 'id': duplicate id 'a', already used by rule #1; give each rule a unique id",
    )


def test_ambiguous_short_placeholder() -> None:
    error = rejected("- id: r\n  group_by: [a.ip, b.ip]\n  annotations: {s: '{ip}'}\n")
    assert error.problems == (
        "rule 'r' field 'annotations.s': placeholder {ip} is ambiguous: it is the last segment "
        "of a.ip, b.ip; use the full path",
    )


def test_whole_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_text(
        "- id: good\n"
        "- id: bad-threshold\n  threshold: 0\n"
        "- id: good-2\n"
        "- id: bad-regex\n  match: {field: body, regex: '('}\n"
    )
    with pytest.raises(RuleError) as caught:
        load_rules_file(path)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: rejected, no rule loaded: 2 errors"
    assert lines[1].startswith(f"{path}: rule 'bad-threshold' field 'threshold': threshold 0")
    assert lines[2].startswith(f"{path}: rule 'bad-regex' field 'match.regex': invalid regex")
    assert len(lines) == 3


def test_errors_collected_across_rules() -> None:
    error = rejected("- id: a\n  window: 10x\n  threshold: 0\n- id: b\n  bogus: 1\n")
    fields = [problem.split(":")[0] for problem in error.problems]
    assert fields == ["rule 'a' field 'threshold'", "rule 'a' field 'window'", "rule 'b' field 'bogus'"]


def test_duplicate_yaml_key_rejected() -> None:
    error = rejected("- id: a\n  threshold: 5\n  threshold: 50\n")
    assert error.problems == ("invalid YAML at line 3, column 3: key 'threshold' appears twice in one mapping; keep one",)


def test_yaml_syntax_error() -> None:
    error = rejected("- id: [a\n")
    assert error.problems[0].startswith("invalid YAML at line 2, column 1:")


def test_yaml_tags_not_constructed() -> None:
    error = rejected("- id: !!python/object/apply:os.system ['true']\n")
    assert error.problems[0].startswith("invalid YAML")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id: a\n", "expected a list of rules or a mapping with the single key 'rules', got {\"id\": \"a\"}"),
        ("rules: []\nextra: 1\n", "expected a list of rules or a mapping with the single key 'rules'"),
        ("rules: {id: a}\n", "key 'rules' must hold a list of rules, got {\"id\": \"a\"}"),
        ("42\n", "got 42"),
    ],
)
def test_bad_document_shape(text: str, message: str) -> None:
    error = rejected(text)
    assert message in error.problems[0]


def test_file_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"#" * (MAX_RULE_FILE_BYTES + 1))
    with pytest.raises(RuleFileError) as caught:
        load_rules_file(path)
    assert caught.value.problems == (
        "file is larger than 10 MiB; split the rules into several files and give each one with --rules",
    )


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"- id: caf\xe9\n")
    with pytest.raises(RuleFileError) as caught:
        load_rules_file(path)
    assert caught.value.problems == ("file is not valid UTF-8 at byte 9; save it as UTF-8",)


def test_file_missing(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError) as caught:
        load_rules_file(tmp_path / "absent.yaml")
    assert "cannot read the file: No such file or directory" in caught.value.problems[0]


def test_definition_round_trip() -> None:
    rule = load_one(SSH_RULES)
    dumped = rule.definition.model_dump(mode="json", by_alias=True)
    assert dumped["window"] == 600
    assert dumped["bucket"] == 60
    again = compile_rule(RuleDefinition.model_validate(dumped))
    assert again == rule


def test_render_annotations() -> None:
    rule = load_one(SSH_RULES)
    values = {"count": 7, "attributes.src_ip": "203.0.113.9", "user": "root", "at": 0}
    assert rule.render_annotations(values) == {"summary": "7 failed logins from 203.0.113.9 (root) in 10m"}


def test_render_missing_values_empty() -> None:
    rule = load_one(SSH_RULES)
    assert rule.render_annotations({"count": 5}) == {"summary": "5 failed logins from  () in 10m"}


def test_render_rule_placeholders() -> None:
    text = (
        "- id: r\n  name: Rule R\n  severity: high\n  group_by: [resource.attributes.host.name]\n"
        "  annotations:\n    s: '{rule}|{rule_name}|{severity}|{threshold}|{window_s}|{kind}|{at}|{name}|{resource.attributes.host.name}'\n"
    )
    rule = load_one(text)
    values = {"kind": "fired", "at": 1_700_000_000, "resource.attributes.host.name": "web-01"}
    assert rule.render_annotations(values) == {
        "s": "r|Rule R|high|5|600|fired|2023-11-14T22:13:20Z|web-01|web-01"
    }


def test_explain_rules() -> None:
    text = SSH_RULES + "  - id: quiet\n    enabled: false\n    window: 7s\n    renotify: 0\n    group_by: []\n    on_missing_key: skip\n"
    assert explain_rules(load_rules_text(text)) == "\n".join(
        [
            "rule ssh-brute (SSH brute force)",
            "  group: default",
            "  signal: logs",
            "  match:",
            "    all of:",
            '      - resource.attributes.service.name equals "sshd" (ignoring case)',
            '      - body matches regex "Failed password for (invalid user )?(?P<user>\\\\S+) from (?P<src_ip>[0-9.]+)" (ignoring case)',
            "  group_by: attributes.src_ip",
            "  threshold: 5 events within 10m (bucket 1m, 10 buckets)",
            "  cooldown: off",
            "  renotify: 1h",
            "  on_missing_key: group (events without a group_by field are counted in a group whose value is missing)",
            "  max_groups: 100000",
            "  severity: warning",
            "  label team: security",
            "  annotation summary: {count} failed logins from {src_ip} ({user}) in {window}",
            "",
            "rule quiet  [disabled]",
            "  group: default",
            "  signal: any",
            "  match: every event",
            "  group_by: (none: one group for the whole rule)",
            "  threshold: 5 events within 7s (bucket 1s, 7 buckets)",
            "  cooldown: 5m",
            "  renotify: off",
            "  on_missing_key: skip (events without a group_by field are ignored by this rule)",
            "  max_groups: 100000",
        ]
    )


def test_group_by_paths_are_field_paths() -> None:
    rule = load_one("- id: r\n  group_by: [resource.attributes.host.name, user]\n")
    fields = {"resource": {"attributes": {"host.name": "db-1"}}, "user": "ann"}
    assert all(isinstance(path, FieldPath) for path in rule.group_by_paths)
    assert [path.get(fields) for path in rule.group_by_paths] == ["db-1", "ann"]


def test_render_capture_beats_group_alias() -> None:
    rule = load_one(SSH_RULES)
    values = {"count": 5, "attributes.src_ip": "198.51.100.1", "src_ip": "203.0.113.9", "user": "ann"}
    assert rule.render_annotations(values) == {"summary": "5 failed logins from 203.0.113.9 (ann) in 10m"}


def test_docs_ssh_example_current() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "rules.md").read_text()
    rule_yaml = doc.split("## Example: SSH brute force", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    printed = doc.split("`alertwarden rules check` prints:\n\n```\n", 1)[1].split("```", 1)[0]
    assert explain_rules(load_rules_text(rule_yaml)) == printed.rstrip("\n")


# ------------------------------------------------------------ value previews

ALIAS_BOMB = """
- id: bomb
  a0: &a0 [x, x, x, x, x, x, x, x, x]
  a1: &a1 [*a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0]
  a2: &a2 [*a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1]
  a3: &a3 [*a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2]
  a4: &a4 [*a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3]
  a5: &a5 [*a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4]
  a6: &a6 [*a5, *a5, *a5, *a5, *a5, *a5, *a5, *a5, *a5]
  a7: &a7 [*a6, *a6, *a6, *a6, *a6, *a6, *a6, *a6, *a6]
  a8: &a8 [*a7, *a7, *a7, *a7, *a7, *a7, *a7, *a7, *a7]
  a9: &a9 [*a8, *a8, *a8, *a8, *a8, *a8, *a8, *a8, *a8]
  match: {field: body, equals: *a9}
"""


def test_alias_bomb_previews_cut() -> None:
    # a9 expands to 9**10 strings; previewing it in full would need many gigabytes.
    error = rejected(ALIAS_BOMB)
    unknown = [problem for problem in error.problems if "unknown field" in problem]
    assert len(unknown) == 10
    # The preview is the first 77 characters of the JSON text followed by "...".
    expected_value = "[" * 10 + ", ".join(['"x"'] * 9) + '], ["x", "x", "x", "x", ...'
    assert len(expected_value) == 80
    assert unknown[-1].startswith(f"rule 'bomb' field 'a9': unknown field (value {expected_value});")
    match_problem = next(problem for problem in error.problems if "match.equals" in problem)
    assert "got [[[[[[[[[[" in match_problem
    assert "..." in match_problem


# ------------------------------------------------------------ several files


def write_rules(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_files_loaded_in_order(tmp_path: Path) -> None:
    first = write_rules(tmp_path, "first.yaml", "- id: a\n- id: b\n")
    second = write_rules(tmp_path, "second.yaml", "rules:\n  - id: c\n")
    rules = load_rules_files([first, second])
    assert [rule.id for rule in rules] == ["a", "b", "c"]


def test_files_duplicate_id_names_both(tmp_path: Path) -> None:
    first = write_rules(tmp_path, "first.yaml", "- id: a\n- id: b\n")
    second = write_rules(tmp_path, "second.yaml", "- id: c\n- id: a\n")
    with pytest.raises(RuleFileError) as caught:
        load_rules_files([first, second])
    assert caught.value.source == str(second)
    assert caught.value.problems == (
        f"rule 'a' field 'id': duplicate id 'a', already used in {first}; "
        "give each rule a unique id across all rule files",
    )


def test_files_bad_file_loads_nothing(tmp_path: Path) -> None:
    good = write_rules(tmp_path, "good.yaml", "- id: a\n")
    bad = write_rules(tmp_path, "bad.yaml", "- id: b\n  threshold: 0\n")
    with pytest.raises(RuleFileError) as caught:
        load_rules_files([good, bad])
    assert caught.value.source == str(bad)
    assert "threshold 0" in caught.value.problems[0]


def test_files_every_error_reported(tmp_path: Path) -> None:
    bad_one = write_rules(tmp_path, "one.yaml", "- id: a\n  threshold: 0\n")
    bad_two = write_rules(tmp_path, "two.yaml", "- id: b\n  window: 10x\n")
    with pytest.raises(RuleError) as caught:
        load_rules_files([bad_one, bad_two])
    assert not isinstance(caught.value, RuleFileError)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{bad_one}: rejected, no rule loaded: 1 error"
    assert lines[2] == f"{bad_two}: rejected, no rule loaded: 1 error"
    assert len(lines) == 4


def test_files_same_file_twice(tmp_path: Path) -> None:
    path = write_rules(tmp_path, "rules.yaml", "- id: a\n")
    (tmp_path / "sub").mkdir()
    other_spelling = tmp_path / "sub" / ".." / "rules.yaml"
    with pytest.raises(RuleFileError) as caught:
        load_rules_files([path, other_spelling])
    assert caught.value.source == str(other_spelling)
    assert caught.value.problems == (f"file is given twice (also as {path}); give each file once",)
