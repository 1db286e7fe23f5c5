"""Load rule files: read YAML safely, validate every rule, and reject the file on any error.

A file loads all of its rules or none. Every problem in the file is collected and raised as one
RuleFileError, one line per problem, each starting with the file name.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alertwarden.errors import RuleError
from alertwarden.rules.compiled import CompiledRule, compile_rule
from alertwarden.rules.defaults import RuleDefaults
from alertwarden.rules.model import ID_PATTERN, RuleDefinition, RuleFieldErrors
from alertwarden.rules.preview import preview

MAX_RULE_FILE_BYTES = 10 * 1024 * 1024
RULE_FIELDS = tuple(
    field.alias or name for name, field in RuleDefinition.model_fields.items()
)


class RuleFileError(RuleError):
    """A rule file is invalid. `problems` lists each problem without the file name prefix."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        count = len(problems)
        header = f"{source}: rejected, no rule loaded: {count} error{'s' if count != 1 else ''}"
        super().__init__("\n".join([header, *(f"{source}: {problem}" for problem in problems)]))
        self.source = source
        self.problems = tuple(problems)


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a key repeated in one mapping.

    Plain safe_load keeps the last of two equal keys, so `threshold: 5` followed by a stray
    `threshold: 50` would pass silently. The loader builds only plain YAML types, like safe_load.
    """


def _construct_unique_mapping(loader: _UniqueKeySafeLoader, node: yaml.MappingNode) -> dict[Hashable, Any]:
    loader.flatten_mapping(node)
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=False)
        if isinstance(key, Hashable) and key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping; keep one", mark
            )
        if isinstance(key, Hashable):
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeySafeLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def load_rules_file(path: str | Path, defaults: RuleDefaults | None = None) -> list[CompiledRule]:
    """Load and compile every rule of a YAML file. Raises RuleFileError naming the file.

    `defaults` fills the fields a rule leaves out. Without it, they take the built-in defaults.
    """
    source = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_RULE_FILE_BYTES + 1)
    except OSError as error:
        raise RuleFileError(source, [f"cannot read the file: {error.strerror or error}"]) from error
    if len(data) > MAX_RULE_FILE_BYTES:
        raise RuleFileError(source, [_too_large_message()])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RuleFileError(
            source, [f"file is not valid UTF-8 at byte {error.start}; save it as UTF-8"]
        ) from None
    return load_rules_text(text, source, defaults)


def load_rules_files(paths: Sequence[str | Path]) -> list[CompiledRule]:
    """Load every rule of several YAML files, in order; rule ids must be unique across them.

    The set loads all of its rules or none. Every file is read, and each file with a problem
    contributes a RuleFileError. Raises that error when one file is at fault, else RuleError
    with the messages of all of them. A rule whose id an earlier file already uses is a problem
    of the later file, and its message names both files.
    """
    errors: list[RuleFileError] = []
    loaded: list[tuple[str, list[CompiledRule]]] = []
    for source in _distinct_sources(paths, errors):
        try:
            loaded.append((source, load_rules_file(source)))
        except RuleFileError as error:
            errors.append(error)
    errors.extend(_duplicate_ids_across_files(loaded))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise RuleError("\n".join(str(error) for error in errors))
    return [rule for _, rules in loaded for rule in rules]


def _distinct_sources(paths: Sequence[str | Path], errors: list[RuleFileError]) -> list[str]:
    """Drop a file named twice, which would otherwise repeat every id, and record it as a problem."""
    sources: list[str] = []
    first_of_file: dict[Path, str] = {}
    for path in paths:
        source = str(path)
        resolved = Path(path).resolve()
        if resolved in first_of_file:
            first = first_of_file[resolved]
            also = "" if first == source else f" (also as {first})"
            errors.append(RuleFileError(source, [f"file is given twice{also}; give each file once"]))
            continue
        first_of_file[resolved] = source
        sources.append(source)
    return sources


def _duplicate_ids_across_files(loaded: list[tuple[str, list[CompiledRule]]]) -> list[RuleFileError]:
    first_file_of_id: dict[str, str] = {}
    errors: list[RuleFileError] = []
    for source, rules in loaded:
        problems: list[str] = []
        for rule in rules:
            if rule.id in first_file_of_id:
                problems.append(
                    f"rule {rule.id!r} field 'id': duplicate id {rule.id!r}, already used in "
                    f"{first_file_of_id[rule.id]}; give each rule a unique id across all rule files"
                )
        for rule in rules:
            first_file_of_id.setdefault(rule.id, source)
        if problems:
            errors.append(RuleFileError(source, problems))
    return errors


def load_rules_text(
    text: str, source: str = "<string>", defaults: RuleDefaults | None = None
) -> list[CompiledRule]:
    """Load and compile every rule of a YAML document. Raises RuleFileError naming `source`.

    `defaults` fills the fields a rule leaves out. Without it, they take the built-in defaults.
    """
    if len(text) > MAX_RULE_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_RULE_FILE_BYTES:
        raise RuleFileError(source, [_too_large_message()])
    entries = _parse_rule_list(text, source)
    definitions, problems = validate_rule_entries(entries, defaults)
    if problems:
        raise RuleFileError(source, problems)
    return [compile_rule(definition) for definition in definitions]


def validate_rule_entries(
    entries: Sequence[object], defaults: RuleDefaults | None = None
) -> tuple[list[RuleDefinition], list[str]]:
    """Validate raw rule mappings; return the valid definitions and one message per problem.

    `defaults` fills the fields a rule leaves out before it is validated.

    A caller must treat any problem as a failure of the whole set: the definitions returned
    next to problems are only the subset that passed on their own.
    """
    definitions: list[RuleDefinition] = []
    problems: list[str] = []
    first_index_of_id: dict[str, int] = {}
    for index, entry in enumerate(entries):
        label = _rule_label(entry, index)
        if not isinstance(entry, dict):
            problems.append(f"{label}: expected a mapping of rule fields, got {_show(entry)}")
            continue
        problems.extend(_duplicate_id_problems(entry, index, label, first_index_of_id))
        if defaults is not None:
            entry = defaults.apply(entry)
        try:
            definitions.append(RuleDefinition.model_validate(entry))
        except ValidationError as error:
            problems.extend(f"{label} field '{field}': {message}" for field, message in _field_problems(error))
    return definitions, problems


def _too_large_message() -> str:
    return f"file is larger than {MAX_RULE_FILE_BYTES // (1024 * 1024)} MiB; split the rules into several files and give each one with --rules"


def _parse_rule_list(text: str, source: str) -> list[object]:
    try:
        document = yaml.load(text, Loader=_UniqueKeySafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        raise RuleFileError(source, [_yaml_problem(error)]) from None
    except yaml.YAMLError as error:
        raise RuleFileError(source, [f"invalid YAML: {' '.join(str(error).split())}"]) from None
    if document is None:
        return []
    if isinstance(document, list):
        return document
    if isinstance(document, dict) and set(document) == {"rules"}:
        rules = document["rules"]
        if rules is None:
            return []
        if isinstance(rules, list):
            return rules
        raise RuleFileError(source, [f"key 'rules' must hold a list of rules, got {_show(rules)}"])
    raise RuleFileError(
        source,
        [f"expected a list of rules or a mapping with the single key 'rules', got {_show(document)}"],
    )


def _yaml_problem(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = " ".join(str(error.problem or error.context or "syntax error").split())
    return f"invalid YAML{where}: {problem}"


def _rule_label(entry: object, index: int) -> str:
    """Name a rule by its id, or by its position counting from 1 when the id is missing or invalid."""
    rule_id = entry.get("id") if isinstance(entry, dict) else None
    if isinstance(rule_id, str) and ID_PATTERN.fullmatch(rule_id):
        return f"rule {rule_id!r}"
    return f"rule #{index + 1}"


def _duplicate_id_problems(
    entry: dict[Any, Any], index: int, label: str, first_index_of_id: dict[str, int]
) -> list[str]:
    rule_id = entry.get("id")
    if not isinstance(rule_id, str) or not ID_PATTERN.fullmatch(rule_id):
        return []
    if rule_id not in first_index_of_id:
        first_index_of_id[rule_id] = index
        return []
    first = first_index_of_id[rule_id] + 1
    return [
        f"{label} field 'id': duplicate id {rule_id!r}, already used by rule #{first}; "
        "give each rule a unique id"
    ]


def _field_problems(error: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for item in error.errors():
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, RuleFieldErrors):
            problems.extend(cause.problems)
            continue
        field = _format_location(item["loc"])
        if isinstance(cause, ValueError):
            problems.append((field, str(cause)))
        elif item["type"] == "extra_forbidden":
            problems.append(
                (field, f"unknown field (value {_show(item['input'])}); the fields of a rule are: {', '.join(RULE_FIELDS)}")
            )
        elif item["type"] == "missing":
            problems.append((field, "required field is missing"))
        else:
            message = item["msg"][:1].lower() + item["msg"][1:]
            problems.append((field, f"{message}, got {_show(item['input'])}"))
    return problems


def _format_location(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "rule"


def _show(value: object) -> str:
    return preview(value)
