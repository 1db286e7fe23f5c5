"""Settings read from ALERTWARDEN_* environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from alertwarden.errors import ConfigError
from alertwarden.events import Signal
from alertwarden.rules import MissingKeyPolicy, RuleDefaults
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
        "invalid settings: ALERTWARDEN_RULE_FILES: entry #1, field tenant:"
        f" invalid tenant id {tenant!r}: use 1-64 ASCII letters, digits, '_' or '-',"
        " starting with a letter or digit"
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


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"ALERTWARDEN_RULE_DEFAULTS": "{bad"}, "ALERTWARDEN_RULE_DEFAULTS is"),
        ({"ALERTWARDEN_INGEST": "x"}, "ALERTWARDEN_INGEST is"),
        (
            # The same invalid text in two variables of the setting: both are named.
            {"ALERTWARDEN_RULE_DEFAULTS__LABELS": "x=1", "ALERTWARDEN_RULE_DEFAULTS": "x=1"},
            "ALERTWARDEN_RULE_DEFAULTS and ALERTWARDEN_RULE_DEFAULTS__LABELS are",
        ),
    ],
)
def test_settings_invalid_json_names_variable(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert str(caught.value).startswith(f"invalid settings: {named} not valid JSON: Expecting")


def test_settings_webhook_url_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTWARDEN_WEBHOOK_URLS", "http://127.0.0.1:9/hook,ftp://user:hook-secret@host/x")
    monkeypatch.setenv("ALERTWARDEN_BIND_PORT", "70000")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    message = str(caught.value)
    assert "ALERTWARDEN_BIND_PORT" in message
    assert (
        "ALERTWARDEN_WEBHOOK_URLS: entry #2: invalid webhook URL scheme 'ftp': use an http:// or"
        " https:// URL"
    ) in message
    assert "hook-secret" not in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (
            "ALERTWARDEN_WEBHOOK_URLS",
            '["http://127.0.0.1:9/hook", 5]',
            "ALERTWARDEN_WEBHOOK_URLS: entry #2: Input should be a valid string",
        ),
        (
            # The variable is set, but its second entry has no tenant.
            "ALERTWARDEN_RULE_FILES",
            '[{"tenant": "acme", "path": "a.yaml"}, {"path": "b.yaml"}]',
            "ALERTWARDEN_RULE_FILES: entry #2, field tenant: missing",
        ),
        (
            "ALERTWARDEN_RULE_FILES",
            "acme=a.yaml,b.yaml",
            "ALERTWARDEN_RULE_FILES: entry #2: invalid rule file entry 'b.yaml': write tenant=path",
        ),
    ],
)
def test_settings_list_entry_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert expected in str(caught.value)


def test_settings_subject_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTWARDEN_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("ALERTWARDEN_LOGS_SUBJECT", "logs.>")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "ALERTWARDEN_LOGS_SUBJECT" in str(caught.value)
    assert "{tenant}" in str(caught.value)


@pytest.mark.parametrize(
    ("logs_subject", "events_subject", "example"),
    [
        ("logs.{tenant}.>", "logs.{tenant}.>", "logs.x.x"),
        ("app.{tenant}.>", "app.{tenant}.events", "app.x.events"),
        # Tenant "x" reads events on the subjects where tenant "logs" reads logs.
        ("{tenant}.logs.>", "x.{tenant}.>", "x.logs.x"),
    ],
)
def test_settings_subjects_overlap(
    monkeypatch: pytest.MonkeyPatch, logs_subject: str, events_subject: str, example: str
) -> None:
    monkeypatch.setenv("ALERTWARDEN_LOGS_SUBJECT", logs_subject)
    monkeypatch.setenv("ALERTWARDEN_EVENTS_SUBJECT", events_subject)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    message = str(caught.value)
    assert f"ALERTWARDEN_EVENTS_SUBJECT: {events_subject!r} overlaps ALERTWARDEN_LOGS_SUBJECT {logs_subject!r}" in message
    assert f"A subject such as {example!r} matches both" in message


@pytest.mark.parametrize(
    ("logs_subject", "events_subject"),
    [
        ("logs.{tenant}.>", "events.{tenant}.>"),
        ("app.{tenant}.logs", "app.{tenant}.events"),
        # A pattern that ends cannot match the longer subjects of the other.
        ("app.{tenant}", "app.{tenant}.>"),
    ],
)
def test_settings_subjects_disjoint(monkeypatch: pytest.MonkeyPatch, logs_subject: str, events_subject: str) -> None:
    monkeypatch.setenv("ALERTWARDEN_LOGS_SUBJECT", logs_subject)
    monkeypatch.setenv("ALERTWARDEN_EVENTS_SUBJECT", events_subject)

    settings = load_settings()

    assert settings.logs_subject == logs_subject
    assert settings.events_subject == events_subject


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "http://aw:nats-secret@127.0.0.1:4222",
            "ALERTWARDEN_NATS_URL: unsupported scheme 'http': use nats://, tls://, ws:// or wss://",
        ),
        (
            "NATS://127.0.0.1:4222",
            "ALERTWARDEN_NATS_URL: unsupported scheme 'NATS': use nats://, tls://, ws:// or wss://",
        ),
        (
            # Text before :// that is no scheme could be credentials, so it is not shown.
            "aw:nats-secret@host://127.0.0.1",
            "ALERTWARDEN_NATS_URL: the URL does not start with a valid scheme: use nats://",
        ),
    ],
)
def test_settings_nats_url_scheme_invalid(monkeypatch: pytest.MonkeyPatch, url: str, expected: str) -> None:
    monkeypatch.setenv("ALERTWARDEN_NATS_URL", url)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    message = str(caught.value)
    assert expected in message
    assert "nats-secret" not in message


@pytest.mark.parametrize(
    "url",
    ["nats://127.0.0.1:4222", "tls://127.0.0.1:4222", "ws://127.0.0.1:8080", "wss://127.0.0.1:443", "127.0.0.1:4222"],
)
def test_settings_nats_url_scheme_valid(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("ALERTWARDEN_NATS_URL", url)

    assert load_settings().nats_url.get_secret_value() == url


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


# ------------------------------------------------------------ rule defaults


def test_settings_rule_defaults_unset() -> None:
    defaults = load_settings().rule_defaults
    assert defaults == RuleDefaults()
    assert defaults.rule_fields() == {}


def test_settings_rule_defaults_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "GROUP": "platform",
        "SIGNAL": "logs",
        "GROUP_BY": '["host", "service.name"]',
        "THRESHOLD": "20",
        "WINDOW": "1h",
        "BUCKET": "5m",
        "COOLDOWN": "10m",
        "RENOTIFY": "0",
        "SEVERITY": "warning",
        "LABELS": '{"team": "platform"}',
        "ON_MISSING_KEY": "skip",
        "MAX_GROUPS": "5000",
    }
    for name, value in values.items():
        monkeypatch.setenv(f"ALERTWARDEN_RULE_DEFAULTS__{name}", value)

    defaults = load_settings().rule_defaults

    assert defaults.group == "platform"
    assert defaults.signal is Signal.LOGS
    assert defaults.group_by == ["host", "service.name"]
    assert defaults.threshold == 20
    assert defaults.window_s == 3600
    assert defaults.bucket_s == 300
    assert defaults.cooldown_s == 600
    assert defaults.renotify_s == 0
    assert defaults.severity == "warning"
    assert defaults.labels == {"team": "platform"}
    assert defaults.on_missing_key is MissingKeyPolicy.SKIP
    assert defaults.max_groups == 5000
    assert defaults.rule_fields() == {
        "group": "platform",
        "signal": "logs",
        "group_by": ["host", "service.name"],
        "threshold": 20,
        "window": "1h",
        "bucket": "5m",
        "cooldown": "10m",
        "renotify": "0s",
        "severity": "warning",
        "labels": {"team": "platform"},
        "on_missing_key": "skip",
        "max_groups": 5000,
    }


def test_settings_rule_defaults_json_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ALERTWARDEN_RULE_DEFAULTS", '{"cooldown": "10m", "threshold": 7, "labels": {"a": "b"}}'
    )
    # A nested variable overrides the same key of the JSON object.
    monkeypatch.setenv("ALERTWARDEN_RULE_DEFAULTS__THRESHOLD", "9")

    defaults = load_settings().rule_defaults

    assert defaults.cooldown_s == 600
    assert defaults.threshold == 9
    assert defaults.labels == {"a": "b"}


def test_settings_rule_defaults_group_by_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTWARDEN_RULE_DEFAULTS__GROUP_BY", "host, service.name")
    assert load_settings().rule_defaults.group_by == ["host", "service.name"]


def test_settings_rule_defaults_bucket_divides_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTWARDEN_RULE_DEFAULTS__WINDOW", "14m")
    monkeypatch.setenv("ALERTWARDEN_RULE_DEFAULTS__BUCKET", "7m")
    defaults = load_settings().rule_defaults
    assert (defaults.window_s, defaults.bucket_s) == (840, 420)


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"COOLDOWN": "10x"},
            "ALERTWARDEN_RULE_DEFAULTS__COOLDOWN: invalid duration '10x': use whole seconds or"
            " units d, h, m, s in that order, such as '90s', '10m', '6h', '1d' or '1h30m'",
        ),
        (
            # The bucket is checked against the built-in window 10m.
            {"BUCKET": "7m"},
            "ALERTWARDEN_RULE_DEFAULTS__BUCKET: 7m does not divide the window 10m; use a divisor"
            " of the window, such as 1m, or leave bucket out for that default",
        ),
        (
            {"WINDOW": "15m", "BUCKET": "10m"},
            "ALERTWARDEN_RULE_DEFAULTS__BUCKET: 10m does not divide the window 15m; use a divisor"
            " of the window, such as 1m, or leave bucket out for that default",
        ),
        (
            {"WINDOW": "31d"},
            "ALERTWARDEN_RULE_DEFAULTS__WINDOW: window 31d is out of range: use from 1s to 30d",
        ),
        (
            {"THRESHOLD": "0"},
            "ALERTWARDEN_RULE_DEFAULTS__THRESHOLD: threshold 0 is out of range: use a whole number"
            " from 1 to 1000000000",
        ),
        (
            {"GROUP": "bad id"},
            "ALERTWARDEN_RULE_DEFAULTS__GROUP: invalid value 'bad id': use 1-128 characters of"
            " letters, digits and _ . : -",
        ),
        (
            {"GROUP_BY": '["host", "host"]'},
            "ALERTWARDEN_RULE_DEFAULTS__GROUP_BY: duplicate path 'host': list each field once",
        ),
        (
            {"GROUP_BY": '["host"'},
            "ALERTWARDEN_RULE_DEFAULTS__GROUP_BY: invalid JSON array: Expecting ',' delimiter:"
            " line 1 column 8 (char 7)",
        ),
        (
            {"SIGNAL": "metrics"},
            "ALERTWARDEN_RULE_DEFAULTS__SIGNAL: Input should be 'logs', 'events' or 'any'",
        ),
        (
            {"LABELS": '{"team": "a\\u0000b"}'},
            "ALERTWARDEN_RULE_DEFAULTS__LABELS: invalid labels.team 'a\\x00b': contains a NUL"
            " byte, which database text cannot hold. Remove it from the input or the rule",
        ),
        (
            {"LABELS": "team=platform"},
            "ALERTWARDEN_RULE_DEFAULTS__LABELS is not valid JSON: Expecting value: line 1 column 1"
            " (char 0); write objects and arrays as JSON",
        ),
        (
            {"ANNOTATIONS": '{"summary": "x"}'},
            "ALERTWARDEN_RULE_DEFAULTS__ANNOTATIONS: unknown setting: remove it or correct its name",
        ),
    ],
)
def test_settings_rule_defaults_invalid(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    monkeypatch.setenv("ALERTWARDEN_DATABASE_URL", "postgresql://aw:pg-password@127.0.0.1/aw")
    for name, value in variables.items():
        monkeypatch.setenv(f"ALERTWARDEN_RULE_DEFAULTS__{name}", value)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert str(caught.value) == f"invalid settings: {expected}"
    assert "pg-password" not in str(caught.value)


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"COOLDOWN": "abc", "THRESHOLD": "0"},
            ["COOLDOWN: invalid duration 'abc'", "THRESHOLD: threshold 0 is out of range"],
        ),
        (
            {"SIGNAL": "metrics", "WINDOW": "1m", "BUCKET": "7s"},
            ["SIGNAL: Input should be 'logs', 'events' or 'any'", "BUCKET: 7s does not divide the window 1m"],
        ),
    ],
)
def test_settings_rule_defaults_every_error(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: list[str]
) -> None:
    # A default that fails to parse must not hide one that parses but fails the rule checks.
    for name, value in variables.items():
        monkeypatch.setenv(f"ALERTWARDEN_RULE_DEFAULTS__{name}", value)
    monkeypatch.setenv("ALERTWARDEN_FETCH_BATCH", "0")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    message = str(caught.value)
    assert "ALERTWARDEN_FETCH_BATCH: Input should be greater than or equal to 1" in message
    for part in expected:
        assert f"ALERTWARDEN_RULE_DEFAULTS__{part}" in message
