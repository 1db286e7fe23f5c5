"""Settings read from ALERTWARDEN_* environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from alertwarden.errors import ConfigError
from alertwarden.settings import Settings, load_settings

TOKEN = "admin-token-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ALERTWARDEN_"):
            monkeypatch.delenv(name)


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTWARDEN_ADMIN_TOKEN", TOKEN)
    settings = load_settings()
    assert settings.database_url.get_secret_value() == "postgresql://postgres@127.0.0.1:5432/alertwarden"
    assert settings.nats_url.get_secret_value() == "nats://127.0.0.1:4222"
    assert settings.stream == "ALERTWARDEN"
    assert settings.logs_subject == "logs.{tenant}.>"
    assert settings.events_subject == "events.{tenant}.>"
    assert (settings.bind_host, settings.bind_port) == ("127.0.0.1", 8080)
    assert settings.rule_files == ()
    assert settings.max_future_skew_s == 60.0
    assert settings.ingest.max_body_bytes == 1_048_576
    assert settings.ingest.max_events == 1000
    assert settings.history_retention_s == 7 * 86400


def test_settings_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTWARDEN_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("ALERTWARDEN_NATS_URL", "nats://127.0.0.1:4333")
    monkeypatch.setenv("ALERTWARDEN_STREAM", "AW_TEST")
    monkeypatch.setenv("ALERTWARDEN_BIND_PORT", "9090")
    monkeypatch.setenv("ALERTWARDEN_INGEST__MAX_EVENTS", "50")
    monkeypatch.setenv("ALERTWARDEN_INGEST__MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("ALERTWARDEN_HISTORY_RETENTION_S", "3600")
    settings = load_settings()
    assert settings.bind_port == 9090
    assert settings.ingest.max_events == 50
    assert settings.ingest.max_body_bytes == 2048
    assert settings.history_retention_s == 3600
    jetstream = settings.jetstream_settings()
    assert jetstream.url == "nats://127.0.0.1:4333"
    assert jetstream.stream == "AW_TEST"
    assert jetstream.logs_subject == "logs.{tenant}.>"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("acme=a.yaml, globex=rules/b.yaml", (("acme", Path("a.yaml")), ("globex", Path("rules/b.yaml")))),
        ('["acme=a.yaml", "acme=with,comma.yaml"]', (("acme", Path("a.yaml")), ("acme", Path("with,comma.yaml")))),
        ("acme = x=y.yaml", (("acme", Path("x=y.yaml")),)),
    ],
)
def test_settings_rule_files(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: tuple[tuple[str, Path], ...]
) -> None:
    monkeypatch.setenv("ALERTWARDEN_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("ALERTWARDEN_RULE_FILES", value)
    entries = load_settings().rule_files
    assert [(entry.tenant, entry.path) for entry in entries] == list(expected)


@pytest.mark.parametrize("value", ["a.yaml", "=a.yaml", "acme=", "a.b=x.yaml"])
def test_settings_rule_files_invalid(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("ALERTWARDEN_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("ALERTWARDEN_RULE_FILES", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "ALERTWARDEN_RULE_FILES" in str(caught.value)


@pytest.mark.parametrize("tenant", ["café", "-acme", "a:b"])
def test_settings_rule_files_invalid_tenant(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    monkeypatch.setenv("ALERTWARDEN_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("ALERTWARDEN_RULE_FILES", f"{tenant}=rules.yaml")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        f"invalid settings: ALERTWARDEN_RULE_FILES: invalid tenant id {tenant!r}: use 1-64"
        " ASCII letters, digits, '_' or '-', starting with a letter or digit"
    )


def test_settings_token_optional() -> None:
    settings = load_settings()
    assert settings.admin_token is None
    assert settings.admin_token_file == Path("alertwarden-admin-token")


def test_settings_token_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTWARDEN_ADMIN_TOKEN", "secret-15-chars")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "ALERTWARDEN_ADMIN_TOKEN" in message
    assert "at least 16" in message
    assert "secret-15-chars" not in message


def test_settings_nested_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTWARDEN_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("ALERTWARDEN_INGEST__MAX_EVENTS", "0")
    monkeypatch.setenv("ALERTWARDEN_BIND_PORT", "70000")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "ALERTWARDEN_INGEST__MAX_EVENTS" in message
    assert "ALERTWARDEN_BIND_PORT" in message


def test_settings_subject_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTWARDEN_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("ALERTWARDEN_LOGS_SUBJECT", "logs.>")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "ALERTWARDEN_LOGS_SUBJECT" in str(caught.value)
    assert "{tenant}" in str(caught.value)


def test_settings_secrets_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTWARDEN_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("ALERTWARDEN_DATABASE_URL", "postgresql://aw:pg-password@127.0.0.1/aw")
    settings = load_settings()
    text = repr(settings) + str(settings)
    assert TOKEN not in text
    assert "pg-password" not in text
    assert settings.admin_token.get_secret_value() == TOKEN


def test_settings_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTWARDEN_ADMIN_TOKEN", TOKEN)
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.bind_port = 1  # type: ignore[misc]
    assert isinstance(settings, Settings)
