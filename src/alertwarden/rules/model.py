"""The validated form of one rule: the `RuleDefinition` pydantic model.

The rule file loader and the REST API both validate rules with this model. Cross-field checks
(bucket against window, template placeholders against group_by and regex groups) raise
RuleFieldErrors, which names the field of each problem so the loader can report it.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from alertwarden.events import FieldPath, Signal
from alertwarden.rules.durations import MAX_BUCKETS, default_bucket_s, format_duration, parse_duration
from alertwarden.rules.match import CompiledFilter, FilterError, compile_filter
from alertwarden.rules.templates import Template, TemplateError, parse_template, placeholder_names

ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
MAX_WINDOW_S = 30 * 86400
MAX_THRESHOLD = 10**9
MAX_TEXT_CHARS = 4_096
# At the 250 + 4.2 * buckets bytes per group measured in engine/table.py, a 60-bucket rule at
# this cap takes about 5 GB. A larger cap would not protect a node from running out of memory.
MAX_GROUPS = 10_000_000


class MissingKeyPolicy(enum.StrEnum):
    """What to do with an event that lacks a group_by field."""

    GROUP = "group"
    """Count it in the group whose value for that field is the missing value (None)."""
    SKIP = "skip"
    """Ignore the event for this rule."""


class RuleFieldErrors(ValueError):
    """One or more fields of a rule are invalid; `problems` pairs each field path with its message."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"field '{field}': {message}" for field, message in problems))
        self.problems = tuple(problems)


class InvalidEntryError(ValueError):
    """An invalid entry of a labels or annotations mapping; `key` is the entry's name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# An optional duration (`DurationSeconds | None`, such as bucket) takes None before this
# validator runs, so a None that reaches it is a required duration set to null.
DurationSeconds = Annotated[int, BeforeValidator(parse_duration)]


class RuleDefinition(BaseModel):
    """One rule as written in a rule file, validated. Durations are stored in whole seconds.

    In Python the duration fields carry a unit suffix (`window_s`); in YAML and JSON they are
    named without it (`window`), which is the alias pydantic validates and dumps by.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str | None = Field(None, max_length=256)
    description: str = Field("", max_length=MAX_TEXT_CHARS)
    enabled: bool = Field(True, strict=True)
    group: str = "default"
    signal: Signal = Signal.ANY
    match: dict[str, Any] | None = None
    group_by: list[str] = Field(default_factory=lambda: ["source_id"])
    threshold: int = Field(5, strict=True)
    window_s: DurationSeconds = Field(600, alias="window")
    bucket_s: DurationSeconds | None = Field(None, alias="bucket")
    cooldown_s: DurationSeconds = Field(300, alias="cooldown")
    renotify_s: DurationSeconds = Field(21600, alias="renotify")
    severity: str | None = Field(None, min_length=1, max_length=128)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    on_missing_key: MissingKeyPolicy = MissingKeyPolicy.GROUP
    max_groups: int = Field(100_000, strict=True)

    _compiled_filter: CompiledFilter | None = PrivateAttr(None)
    _templates: dict[str, Template] = PrivateAttr(default_factory=dict)

    @field_validator("id", "group")
    @classmethod
    def _check_identifier(cls, value: str) -> str:
        if not ID_PATTERN.fullmatch(value):
            raise ValueError(
                f"invalid value {value!r}: use 1-128 characters of letters, digits and _ . : -"
            )
        return value

    @field_validator("threshold")
    @classmethod
    def _check_threshold(cls, value: int) -> int:
        if not 1 <= value <= MAX_THRESHOLD:
            raise ValueError(f"threshold {value} is out of range: use a whole number from 1 to {MAX_THRESHOLD}")
        return value

    @field_validator("max_groups")
    @classmethod
    def _check_max_groups(cls, value: int) -> int:
        if not 1 <= value <= MAX_GROUPS:
            raise ValueError(f"max_groups {value} is out of range: use a whole number from 1 to {MAX_GROUPS}")
        return value

    @field_validator("window_s")
    @classmethod
    def _check_window(cls, value: int) -> int:
        if not 1 <= value <= MAX_WINDOW_S:
            raise ValueError(
                f"window {format_duration(value)} is out of range: use from 1s to {format_duration(MAX_WINDOW_S)}"
            )
        return value

    @field_validator("bucket_s")
    @classmethod
    def _check_bucket(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("bucket 0s is out of range: use at least 1s, or leave bucket out for the default")
        return value

    @field_validator("group_by")
    @classmethod
    def _check_group_by(cls, paths: list[str]) -> list[str]:
        problems: list[tuple[str, str]] = []
        for index, path in enumerate(paths):
            try:
                FieldPath(path)
            except ValueError as error:
                problems.append((f"group_by[{index}]", str(error)))
            if path in paths[:index]:
                problems.append((f"group_by[{index}]", f"duplicate path {path!r}: list each field once"))
        if problems:
            raise RuleFieldErrors(problems)
        return paths

    @field_validator("match")
    @classmethod
    def _check_match(cls, tree: dict[str, Any] | None) -> dict[str, Any] | None:
        _compile_match(tree)
        return tree

    @field_validator("labels", "annotations")
    @classmethod
    def _check_names(cls, mapping: dict[str, str]) -> dict[str, str]:
        for key, text in mapping.items():
            if not key:
                raise InvalidEntryError(key, "a label or annotation name must not be empty")
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidEntryError(
                    key, f"value of {key!r} is {len(text)} characters long, the maximum is {MAX_TEXT_CHARS}"
                )
        return mapping

    @model_validator(mode="after")
    def _check_rule(self) -> RuleDefinition:
        if self.name is None:
            self.name = self.id
        problems = self._fill_bucket()
        self._compiled_filter = _compile_match(self.match)
        problems.extend(self._parse_annotations(self._compiled_filter.capture_names))
        if problems:
            raise RuleFieldErrors(problems)
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _report_cross_field_problems(
        cls, data: Any, handler: ModelWrapValidatorHandler[RuleDefinition]
    ) -> RuleDefinition:
        """Add the cross-field problems of the valid fields to the errors of the invalid ones.

        pydantic runs the cross-field checks only when every field is valid, so without this an
        author who fixes a threshold would then learn that the bucket is wrong too. Defined after
        `_check_rule`, so that the handler runs that check.
        """
        try:
            return handler(data)
        except ValidationError as error:
            problems = _cross_field_problems(data, error, handler)
            if not problems:
                raise
            details = [init_error_details(item) for item in error.errors()]
            cross_field: InitErrorDetails = {
                "type": "value_error",
                "loc": (),
                "input": data,
                "ctx": {"error": RuleFieldErrors(problems)},
            }
            details.append(cross_field)
            raise ValidationError.from_exception_data(error.title, details) from None

    def _fill_bucket(self) -> list[tuple[str, str]]:
        window_s = self.window_s
        if self.bucket_s is None:
            self.bucket_s = default_bucket_s(window_s)
            return []
        bucket_s = self.bucket_s
        window, bucket = format_duration(window_s), format_duration(bucket_s)
        suggestion = f"such as {format_duration(default_bucket_s(window_s))}, or leave bucket out for that default"
        if window_s % bucket_s:
            return [("bucket", f"{bucket} does not divide the window {window}; use a divisor of the window, {suggestion}")]
        if window_s // bucket_s > MAX_BUCKETS:
            return [
                (
                    "bucket",
                    f"{bucket} splits the window {window} into {window_s // bucket_s} buckets, "
                    f"the maximum is {MAX_BUCKETS}; use a larger bucket, {suggestion}",
                )
            ]
        return []

    def _parse_annotations(self, capture_names: frozenset[str]) -> list[tuple[str, str]]:
        known, ambiguous = placeholder_names(self.group_by, capture_names)
        problems: list[tuple[str, str]] = []
        templates: dict[str, Template] = {}
        for key, source in self.annotations.items():
            field = f"annotations.{key}"
            try:
                template = parse_template(source)
            except TemplateError as error:
                problems.append((field, f"invalid template {source!r}: {error}"))
                continue
            for name in template.placeholders:
                if name in ambiguous:
                    problems.append((field, f"placeholder {{{name}}} is ambiguous: {ambiguous[name]}"))
                elif name not in known:
                    problems.append(
                        (field, f"unknown placeholder {{{name}}} in {source!r}; known placeholders: {', '.join(sorted(known))}")
                    )
            templates[key] = template
        self._templates = templates
        return problems

    @property
    def compiled_filter(self) -> CompiledFilter:
        """The match filter compiled during validation."""
        if self._compiled_filter is None:
            self._compiled_filter = _compile_match(self.match)
        return self._compiled_filter

    @property
    def templates(self) -> dict[str, Template]:
        """The annotation templates parsed during validation, by annotation name."""
        return self._templates


# The input fields that each cross-field check reads, by the first name of the field it reports.
_CHECK_INPUTS = {
    "bucket": {"window", "bucket"},
    "annotations": {"annotations", "group_by", "match"},
}


def _cross_field_problems(
    data: Any, error: ValidationError, handler: ModelWrapValidatorHandler[RuleDefinition]
) -> list[tuple[str, str]]:
    """Return the cross-field problems of `data` that involve none of the fields in `error`.

    The invalid fields are left out, so their defaults stand in, and each problem that reads one
    of them is dropped: a bucket checked against the default window would mislead.
    """
    if not isinstance(data, dict):
        return []
    invalid = {str(item["loc"][0]) for item in error.errors() if item["loc"]}
    if not invalid:
        return []
    valid = {key: value for key, value in data.items() if key not in invalid}
    # A stand-in, so that an invalid or missing id does not stop the checks of the other fields.
    valid.setdefault("id", "rule")
    try:
        handler(valid)
    except ValidationError as second:
        problems: list[tuple[str, str]] = []
        for item in second.errors():
            cause = item.get("ctx", {}).get("error")
            if not isinstance(cause, RuleFieldErrors):
                continue
            for field, message in cause.problems:
                top = field.split(".", 1)[0].split("[", 1)[0]
                if not _CHECK_INPUTS.get(top, {top}) & invalid:
                    problems.append((field, message))
        return problems
    return []


def init_error_details(detail: Any) -> InitErrorDetails:
    """Return an error of ValidationError.errors() in the form from_exception_data takes."""
    init: InitErrorDetails = {"type": detail["type"], "loc": detail["loc"], "input": detail["input"]}
    if "ctx" in detail:
        init["ctx"] = detail["ctx"]
    return init


def _compile_match(tree: dict[str, Any] | None) -> CompiledFilter:
    try:
        return compile_filter(tree)
    except FilterError as error:
        field = f"match.{error.location}" if error.location else "match"
        raise RuleFieldErrors([(field, error.message)]) from None
