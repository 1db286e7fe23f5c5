"""Service settings of `alertwarden serve`, read from ALERTWARDEN_* environment variables.

A nested field is set with `__` between the names, such as ALERTWARDEN_INGEST__MAX_EVENTS=500.
A list field takes a JSON array or a comma-separated string. `load_settings` turns every
validation failure into one ConfigError that names the environment variables, never their values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from alertwarden.engine.evaluator import EngineSettings
from alertwarden.errors import ConfigError
from alertwarden.pipeline import DEFAULT_HISTORY_RETENTION_S
from alertwarden.sources.jetstream import JetStreamSettings

ENV_PREFIX = "ALERTWARDEN_"
NESTED_DELIMITER = "__"
MIN_ADMIN_TOKEN_CHARS = 16

_JETSTREAM_DEFAULTS = JetStreamSettings()


class IngestLimits(BaseModel):
    """Limits of POST /v1/tenants/{tenant}/events."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    max_body_bytes: int = Field(default=1_048_576, ge=1)
    """Largest request body; a larger one gets 413. NATS rejects a message over its max_payload
    (1 MiB by default), so a single event larger than that fails even below this limit."""
    max_events: int = Field(default=1000, ge=1)
    """Maximum number of events in one request; more get 413."""


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
    nats_url: SecretStr = SecretStr(_JETSTREAM_DEFAULTS.url)
    """NATS server URL; secret because it may contain credentials."""
    stream: str = _JETSTREAM_DEFAULTS.stream
    logs_subject: str = _JETSTREAM_DEFAULTS.logs_subject
    events_subject: str = _JETSTREAM_DEFAULTS.events_subject
    bind_host: str = "127.0.0.1"
    bind_port: int = Field(default=8080, ge=1, le=65535)
    admin_token: SecretStr
    """Bearer token that may call every API endpoint; at least MIN_ADMIN_TOKEN_CHARS characters."""
    rule_files: Annotated[tuple[Path, ...], NoDecode] = ()
    max_future_skew_s: float = Field(default=EngineSettings().max_future_skew_s, gt=0)
    ingest: IngestLimits = IngestLimits()
    history_retention_s: float = Field(default=DEFAULT_HISTORY_RETENTION_S, gt=0)

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, token: SecretStr) -> SecretStr:
        length = len(token.get_secret_value())
        if length < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"the token has {length} characters: use at least {MIN_ADMIN_TOKEN_CHARS} random characters"
            )
        return token

    @field_validator("rule_files", mode="before")
    @classmethod
    def _split_rule_files(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("stream", "logs_subject", "events_subject")
    @classmethod
    def _check_jetstream_name(cls, value: str, info: ValidationInfo) -> str:
        # JetStreamSettings owns the rules for stream names and subject patterns.
        try:
            JetStreamSettings(**{str(info.field_name): value})  # type: ignore[arg-type]
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return value

    def jetstream_settings(self) -> JetStreamSettings:
        """Return the JetStream settings with this URL, stream and subject patterns."""
        return JetStreamSettings(
            url=self.nats_url.get_secret_value(),
            stream=self.stream,
            logs_subject=self.logs_subject,
            events_subject=self.events_subject,
        )


def env_name(location: tuple[int | str, ...]) -> str:
    """Return the environment variable of a field location, such as ALERTWARDEN_INGEST__MAX_EVENTS."""
    names = [str(part) for part in location if isinstance(part, str)]
    if not names:
        return f"{ENV_PREFIX}* (settings as a whole)"
    return ENV_PREFIX + NESTED_DELIMITER.join(names).upper()


def load_settings() -> Settings:
    """Read the settings from the process environment.

    Raises ConfigError naming each invalid or missing variable. Values are never included,
    because some of them are secrets.
    """
    try:
        return Settings()  # type: ignore[call-arg]  # admin_token comes from the environment
    except ValidationError as error:
        raise ConfigError(describe_errors(error)) from None


def describe_errors(error: ValidationError) -> str:
    """Return one message naming the environment variable of each validation error."""
    problems = []
    for detail in error.errors(include_input=False, include_url=False):
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "missing":
            message = "missing: set it"
        problems.append(f"{env_name(detail['loc'])}: {message}")
    return "invalid settings: " + "; ".join(problems)
