"""Service settings of `alertwarden serve`, read from ALERTWARDEN_* environment variables.

A nested field is set with `__` between the names, such as ALERTWARDEN_INGEST__MAX_EVENTS=500.
A list field takes a JSON array or a comma-separated string. `load_settings` turns every
validation failure into one ConfigError that names the environment variables and never shows
the value of a secret setting.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from alertwarden.engine.evaluator import EngineSettings
from alertwarden.errors import ConfigError, InvalidValueError
from alertwarden.pipeline import DEFAULT_HISTORY_RETENTION_S
from alertwarden.rules.defaults import RuleDefaults
from alertwarden.rules.model import RuleFieldErrors
from alertwarden.sinks.webhook import parse_webhook_url
from alertwarden.sources.jetstream import TENANT_PLACEHOLDER, JetStreamSettings, validate_tenant
from alertwarden.store.checks import check_json_document

ENV_PREFIX = "ALERTWARDEN_"
NESTED_DELIMITER = "__"
MIN_ADMIN_TOKEN_CHARS = 16
NATS_URL_SCHEMES = ("nats", "tls", "ws", "wss")
"""URL schemes that nats-py 2.16 connects with. It takes a URL without a scheme as nats://."""

_JETSTREAM_DEFAULTS = JetStreamSettings()


class IngestLimits(BaseModel):
    """Limits of POST /v1/tenants/{tenant}/events."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    max_body_bytes: int = Field(default=1_048_576, ge=1)
    """Largest request body; a larger one gets 413. NATS rejects a message over its max_payload
    (1 MiB by default), so a single event larger than that fails even below this limit."""
    max_events: int = Field(default=1000, ge=1)
    """Maximum number of events in one request; more get 413."""


class RuleFile(BaseModel):
    """A rule file and the tenant its rules belong to, written `tenant=path`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str
    path: Path

    @model_validator(mode="before")
    @classmethod
    def _split_entry(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        tenant, separator, path = value.partition("=")
        if not separator or not tenant.strip() or not path.strip():
            raise ValueError(
                f"invalid rule file entry {value!r}: write tenant=path, such as acme=/etc/alertwarden/acme.yaml"
            )
        return {"tenant": tenant.strip(), "path": path.strip()}

    @field_validator("tenant")
    @classmethod
    def _check_tenant(cls, tenant: str) -> str:
        try:
            return validate_tenant(tenant)
        except ConfigError as error:
            raise ValueError(str(error)) from None


class Settings(BaseSettings):
    """Settings of the service: store, NATS JetStream, HTTP listener, admin token and limits."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        frozen=True,
        extra="ignore",
        hide_input_in_errors=True,
    )

    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/alertwarden")
    """PostgreSQL connection URL; secret because it may contain a password."""
    database_pool_max: int = Field(default=10, ge=1, le=1000)
    """Connections the service keeps to PostgreSQL at most; evaluators and the API share them."""
    database_pool_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """Maximum wait in seconds for a pooled connection before a request fails with 503 or a flush fails."""
    nats_url: SecretStr = SecretStr(_JETSTREAM_DEFAULTS.url)
    """NATS server URL; secret because it may contain credentials."""
    stream: str = _JETSTREAM_DEFAULTS.stream
    logs_subject: str = _JETSTREAM_DEFAULTS.logs_subject
    events_subject: str = _JETSTREAM_DEFAULTS.events_subject
    bind_host: str = "127.0.0.1"
    bind_port: int = Field(default=8080, ge=1, le=65535)
    admin_token: SecretStr | None = None
    """Bearer token that may call every API endpoint; at least MIN_ADMIN_TOKEN_CHARS characters.
    Unset, `serve` reads it from admin_token_file, creating that file with a random token."""
    admin_token_file: Path = Path("alertwarden-admin-token")
    rule_files: Annotated[tuple[RuleFile, ...], NoDecode] = ()
    """Rule files loaded at start and reloaded when they change, as `tenant=path` entries."""
    rules_poll_s: float = Field(default=5.0, gt=0)
    """Interval at which rule definitions, tenant flags and rule files are checked for changes."""
    tick_delay_s: float = Field(default=2.0, ge=0)
    """How far behind the wall clock an idle evaluator's clock stays, to absorb the difference
    between this host's clock and the NATS server's."""
    fetch_batch: int = Field(default=_JETSTREAM_DEFAULTS.fetch_batch, ge=1, le=10_000)
    fetch_timeout_s: float = Field(default=_JETSTREAM_DEFAULTS.fetch_timeout_s, gt=0)
    queue_batches: int = Field(default=4, ge=1, le=1000)
    """Fetched batches an evaluator may have waiting; its fetcher waits beyond it."""
    max_message_bytes: int = Field(default=1_048_576, ge=1)
    stream_max_age_s: float = Field(default=_JETSTREAM_DEFAULTS.max_age_s, gt=0)
    stream_max_bytes: int = Field(default=_JETSTREAM_DEFAULTS.max_bytes, ge=1)
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    """Time a graceful stop may take before the process exits at once."""
    webhook_urls: Annotated[tuple[str, ...], NoDecode] = ()
    """Webhooks that receive every transition of every tenant, as JSON."""
    stdout_alerts: bool = False
    """Also print every transition as one JSON line on standard output."""
    max_future_skew_s: float = Field(default=EngineSettings().max_future_skew_s, gt=0)
    ingest: IngestLimits = IngestLimits()
    history_retention_s: float = Field(default=DEFAULT_HISTORY_RETENTION_S, ge=3600)
    """Age after which transition history is dropped. The first migration of a database
    records it; later changes are reported at start but not applied."""
    rule_defaults: RuleDefaults = RuleDefaults()
    """Values that API and rule file rules take for the fields they leave out."""

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None:
            return None
        length = len(token.get_secret_value())
        if length < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"the token has {length} characters: use at least {MIN_ADMIN_TOKEN_CHARS} random characters"
            )
        return token

    @field_validator("rule_files", "webhook_urls", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("webhook_urls")
    @classmethod
    def _check_webhook_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        problems = []
        for number, url in enumerate(urls, start=1):
            try:
                parse_webhook_url(url)
            except ConfigError as error:
                problems.append(f"entry #{number}: {error}")
        if problems:
            raise ValueError("; ".join(problems))
        return urls

    @field_validator("stream", "logs_subject", "events_subject")
    @classmethod
    def _check_jetstream_name(cls, value: str, info: ValidationInfo) -> str:
        # JetStreamSettings owns the rules for stream names and subject patterns.
        try:
            JetStreamSettings(**{str(info.field_name): value})  # type: ignore[arg-type]
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return value

    @field_validator("nats_url")
    @classmethod
    def _check_nats_url_scheme(cls, url: SecretStr) -> SecretStr:
        # nats-py reads any other scheme as a host name, so http://host:4222 fails later with
        # "Name or service not known". The URL may contain credentials, so only its scheme is shown.
        scheme, separator, _ = url.get_secret_value().partition("://")
        if not separator or scheme in NATS_URL_SCHEMES:
            return url
        names = [f"{name}://" for name in NATS_URL_SCHEMES]
        hint = f"use {', '.join(names[:-1])} or {names[-1]}, such as nats://127.0.0.1:4222"
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) is None:
            raise ValueError(f"the URL does not start with a valid scheme: {hint}")
        raise ValueError(f"unsupported scheme {scheme!r}: {hint}")

    @field_validator("events_subject")
    @classmethod
    def _check_subjects_disjoint(cls, events_subject: str, info: ValidationInfo) -> str:
        logs_subject = info.data.get("logs_subject")
        if logs_subject is None:
            # ALERTWARDEN_LOGS_SUBJECT is invalid, and its own error reports it.
            return events_subject
        example = _common_subject(logs_subject, events_subject)
        if example is not None:
            raise ValueError(
                f"{events_subject!r} overlaps {ENV_PREFIX}LOGS_SUBJECT {logs_subject!r}. A subject such as"
                f" {example!r} matches both, so the signal and tenant of its messages would be ambiguous."
                " Use patterns that no subject matches both, such as logs.{tenant}.> and events.{tenant}.>"
            )
        return events_subject

    @field_validator("rule_defaults")
    @classmethod
    def _check_storable(cls, defaults: RuleDefaults) -> RuleDefaults:
        # Every rule stores the default labels, so a value the store cannot hold, such as a NUL
        # character written as \u0000 in JSON, would reject every API and rule file rule.
        try:
            check_json_document(defaults.rule_fields())
        except InvalidValueError as error:
            raise RuleFieldErrors([(error.field, str(error))]) from None
        return defaults

    def jetstream_settings(self) -> JetStreamSettings:
        """Return the JetStream settings with this URL, stream and subject patterns."""
        return JetStreamSettings(
            url=self.nats_url.get_secret_value(),
            stream=self.stream,
            logs_subject=self.logs_subject,
            events_subject=self.events_subject,
            max_age_s=self.stream_max_age_s,
            max_bytes=self.stream_max_bytes,
            fetch_batch=self.fetch_batch,
            fetch_timeout_s=self.fetch_timeout_s,
        )


def env_name(location: tuple[int | str, ...]) -> str:
    """Return the environment variable of a field location, such as ALERTWARDEN_INGEST__MAX_EVENTS."""
    # A list item's location continues with its index and the item's own fields, as in
    # ("rule_files", 0, "tenant"), but the whole list is one variable.
    names: list[str] = []
    for part in location:
        if not isinstance(part, str):
            break
        names.append(part)
    if not names:
        return f"{ENV_PREFIX}* (settings as a whole)"
    return ENV_PREFIX + NESTED_DELIMITER.join(names).upper()


def load_settings() -> Settings:
    """Read the settings from the process environment.

    Raises ConfigError naming each invalid or missing variable. The message never includes the
    value of a secret setting (database_url, nats_url, admin_token).
    """
    try:
        return Settings()
    except ValidationError as error:
        raise ConfigError(describe_errors(error)) from None
    except SettingsError as error:
        raise ConfigError(describe_settings_error(error)) from None


def describe_errors(error: ValidationError) -> str:
    """Return one message naming the environment variable of each validation error."""
    problems = []
    for detail in error.errors(include_input=False, include_url=False):
        cause = detail.get("ctx", {}).get("error")
        if isinstance(cause, RuleFieldErrors):
            # The rule defaults are checked as a whole rule, and each problem names its field.
            for field, message in cause.problems:
                problems.append(f"{env_name((*detail['loc'], _top_field(field)))}: {message}")
            continue
        message = detail["msg"].removeprefix("Value error, ")
        entry = _list_entry(detail["loc"])
        if detail["type"] == "missing":
            message = "missing" if entry else "missing: set it"
        elif detail["type"] == "extra_forbidden":
            message = "unknown setting: remove it or correct its name"
        problems.append(f"{env_name(detail['loc'])}: {entry}{message}")
    return "invalid settings: " + "; ".join(problems)


def _list_entry(location: tuple[int | str, ...]) -> str:
    """Return `entry #N: ` or `entry #N, field F: ` for a location inside a list setting.

    One variable contains the whole list, so without this a message could not tell which entry
    is wrong, and "missing" would read as if the variable itself were unset.
    """
    for position, part in enumerate(location):
        if isinstance(part, int):
            fields = ".".join(str(name) for name in location[position + 1 :])
            where = f"entry #{part + 1}"
            return f"{where}, field {fields}: " if fields else f"{where}: "
    return ""


def describe_settings_error(error: SettingsError) -> str:
    """Return a message naming the variables of a value that pydantic-settings could not decode.

    pydantic-settings raises SettingsError when a nested setting's value is not valid JSON,
    such as ALERTWARDEN_INGEST='x'. Its message names the top-level field, which may have been
    set whole or through any of its `__` variables.
    """
    found = re.search(r'field "([^"]+)"', str(error))
    if found is None:
        return f"invalid settings: {error}"
    name = env_name((found.group(1),))
    cause = error.__cause__
    if not isinstance(cause, json.JSONDecodeError):
        return (
            f"invalid settings: {name} or one of the {name}{NESTED_DELIMITER}* variables is not"
            " valid JSON; write objects and arrays as JSON"
        )
    # The decoder keeps the text it failed on, so the variable with that value is the invalid
    # one. Two variables that contain the same text are both named.
    invalid = sorted(
        variable.upper()
        for variable, value in os.environ.items()
        if value == cause.doc and _belongs_to(variable.upper(), name)
    )
    where = (
        " and ".join(invalid)
        if invalid
        else f"{name} or one of the {name}{NESTED_DELIMITER}* variables"
    )
    verb = "are" if len(invalid) > 1 else "is"
    return f"invalid settings: {where} {verb} not valid JSON: {cause}; write objects and arrays as JSON"


def _belongs_to(variable: str, name: str) -> bool:
    """Return True when `variable` sets the setting `name` whole or one of its fields."""
    return variable == name or variable.startswith(name + NESTED_DELIMITER)


def _top_field(field: str) -> str:
    """Return the first name of a field path such as `group_by[1]` or `labels.team`."""
    return field.split(".", 1)[0].split("[", 1)[0]


def _common_subject(first: str, second: str) -> str | None:
    """Return a subject that both patterns match for some tenants, or None when there is none.

    The tenant placeholder matches any one token, because the patterns of two different tenants
    must not overlap either. In the example, `x` stands for a token that a wildcard matches.
    """
    first_tokens = first.replace(TENANT_PLACEHOLDER, "*").split(".")
    second_tokens = second.replace(TENANT_PLACEHOLDER, "*").split(".")
    subject: list[str] = []
    for index in range(max(len(first_tokens), len(second_tokens))):
        if index >= len(first_tokens) or index >= len(second_tokens):
            # One pattern ended while the other requires more tokens, and `>` matches at least one.
            return None
        first_token, second_token = first_tokens[index], second_tokens[index]
        if first_token == ">" or second_token == ">":
            rest = second_tokens[index:] if first_token == ">" else first_tokens[index:]
            subject.extend("x" if token in ("*", ">") else token for token in rest)
            return ".".join(subject)
        if first_token == "*" and second_token == "*":
            subject.append("x")
        elif first_token == "*" or second_token == "*" or first_token == second_token:
            subject.append(second_token if first_token == "*" else first_token)
        else:
            return None
    return ".".join(subject)
