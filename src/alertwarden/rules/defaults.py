"""Operator-set rule defaults: values a rule takes for the fields its definition leaves out.

`alertwarden serve` reads them from ALERTWARDEN_RULE_DEFAULTS__* (see alertwarden.settings) and
applies them to every rule it builds from a definition, that is to a rule of an API PUT and to
the rules of a rule file. A default left unset keeps the built-in default of RuleDefinition.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)

from alertwarden.events import Signal
from alertwarden.rules.durations import format_duration
from alertwarden.rules.model import (
    DurationSeconds,
    MissingKeyPolicy,
    RuleDefinition,
    RuleFieldErrors,
    init_error_details,
)

_CHECK_ID = "rule-defaults"
"""Id of the rule that the defaults are validated as, because a rule needs one."""


class RuleDefaults(BaseModel):
    """Defaults for the fields a rule definition leaves out. None keeps the built-in default.

    The defaults are validated as one rule made of them, with the same checks as a rule. A
    `bucket` default is therefore checked against the `window` default, or against the built-in
    window 10m when `window` is unset.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str | None = None
    signal: Signal | None = None
    group_by: list[str] | None = None
    threshold: int | None = None
    window_s: DurationSeconds | None = Field(default=None, alias="window")
    bucket_s: DurationSeconds | None = Field(default=None, alias="bucket")
    """Bucket of a rule that sets neither bucket nor window, because a bucket must divide the
    window. A rule that sets its own window gets the bucket derived from that window."""
    cooldown_s: DurationSeconds | None = Field(default=None, alias="cooldown")
    renotify_s: DurationSeconds | None = Field(default=None, alias="renotify")
    severity: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels every rule gets. A rule's own label of the same name overrides one of these."""
    on_missing_key: MissingKeyPolicy | None = None
    max_groups: int | None = None

    @field_validator("group_by", mode="before")
    @classmethod
    def _split_group_by(cls, value: Any) -> Any:
        return _split_list(value)

    @model_validator(mode="after")
    def _check_as_rule(self) -> RuleDefaults:
        try:
            RuleDefinition.model_validate({"id": _CHECK_ID, **self.rule_fields()})
        except ValidationError as error:
            raise RuleFieldErrors(_field_problems(error)) from None
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _report_every_default(cls, data: Any, handler: ModelWrapValidatorHandler[RuleDefaults]) -> RuleDefaults:
        # A field error stops pydantic before _check_as_rule runs, so the defaults whose fields
        # parsed are checked again on their own, and both sets of errors are raised together.
        try:
            return handler(data)
        except ValidationError as error:
            if not isinstance(data, Mapping):
                raise
            failed = {detail["loc"][0] for detail in error.errors() if detail["loc"]}
            parsed = {key: value for key, value in data.items() if key not in failed}
            if not failed or len(parsed) == len(data):
                # The rule check itself failed, or the errors name no key of `data`.
                raise
            try:
                cls.model_validate(parsed)
            except ValidationError as parsed_error:
                details = [*error.errors(include_url=False), *parsed_error.errors(include_url=False)]
                raise ValidationError.from_exception_data(
                    cls.__name__, [init_error_details(detail) for detail in details]
                ) from None
            raise

    def rule_fields(self) -> dict[str, Any]:
        """Return the defaults that are set, by rule field name, as a rule file or a PUT writes them.

        Durations are formatted as in `10m`, and enums are their string values.
        """
        fields: dict[str, Any] = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if value is None or (name == "labels" and not value):
                continue
            if name.endswith("_s"):
                value = format_duration(value)
            elif isinstance(value, Signal | MissingKeyPolicy):
                value = value.value
            elif isinstance(value, list | dict):
                value = value.copy()
            fields[info.alias or name] = value
        return fields

    def apply(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Return a copy of a rule's raw fields with each field it leaves out taken from the defaults.

        A field present in `entry` is kept even when its value is null, so `severity: null`
        opts a rule out of a severity default. Labels merge, with the rule's own labels
        overriding default labels of the same name. A `labels` value that is not a mapping is
        kept as it is, so that validation reports it.
        """
        filled = dict(entry)
        for field, value in self.rule_fields().items():
            if field == "labels":
                own = entry.get("labels", {})
                if isinstance(own, Mapping):
                    filled["labels"] = {**value, **own}
            elif field == "bucket" and "window" in entry:
                continue
            else:
                filled.setdefault(field, value)
        return filled


def _split_list(value: Any) -> Any:
    """Split the text of a list default: a JSON array or a comma-separated string.

    An environment variable contains one of the two, as the list settings of alertwarden.settings
    do. pydantic-settings passes on the text of an array that is not valid JSON, so it is decoded
    here again to report the JSON error.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"invalid JSON array: {error}") from None
    return [part.strip() for part in text.split(",") if part.strip()]


def _field_problems(error: ValidationError) -> list[tuple[str, str]]:
    """Return (field, message) pairs of a RuleDefinition validation error."""
    problems: list[tuple[str, str]] = []
    for detail in error.errors(include_url=False, include_input=False):
        cause = detail.get("ctx", {}).get("error")
        if isinstance(cause, RuleFieldErrors):
            problems.extend(cause.problems)
            continue
        field = ".".join(str(part) for part in detail["loc"]) or "rule"
        problems.append((field, detail["msg"].removeprefix("Value error, ")))
    return problems
