"""The service's rule catalog against the real PostgreSQL: what it compiles and what it leaves out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from alertwarden.api import create_app
from alertwarden.rules import RuleDefaults
from alertwarden.service.catalog import RuleCatalog
from alertwarden.settings import RuleFile
from alertwarden.store.postgres import PostgresStore
from alertwarden.store.migrate import migrate

RULE = {"match": {"field": "kind", "equals": "login_failed"}, "threshold": 3, "window": "1m"}

ADMIN_TOKEN = "admin-token-0123456789abcdef"
PUT_DEFAULTS = RuleDefaults.model_validate(
    {"cooldown": "10m", "severity": "warning", "labels": {"team": "platform", "env": "prod"}}
)


@pytest.fixture
async def store(pg_database_factory: Callable[[], str]) -> AsyncIterator[PostgresStore]:
    url = pg_database_factory()
    await migrate(url, history_backend="partitioned")
    opened = PostgresStore(url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_catalog_skips_invalid_tenant_ids(store: PostgresStore) -> None:
    # Ids like these were accepted before tenant ids were restricted to [A-Za-z0-9_-].
    for tenant in ("acme", "café", "a:b"):
        await store.ensure_tenant(tenant, stateful_rules=True)
        assert await store.put_api_rule(tenant, "logins", "default", RULE, True) == 1
    catalog = RuleCatalog(store)

    specs = await catalog.load()
    assert list(specs) == [("acme", "default")]
    assert [rule.id for rule in specs[("acme", "default")].rules] == ["logins"]
    # Logged once per process, not at every poll.
    assert catalog._invalid_tenants == {"café", "a:b"}
    assert list(await catalog.load()) == [("acme", "default")]


async def test_catalog_api_rule_keeps_put_defaults(store: PostgresStore) -> None:
    await store.ensure_tenant("acme", stateful_rules=True)
    app = create_app(store, admin_token=ADMIN_TOKEN, rule_defaults=PUT_DEFAULTS)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for rule_id, body in [
            ("plain", RULE),
            ("own", {**RULE, "cooldown": "1m", "labels": {"env": "staging"}}),
        ]:
            response = await client.put(f"/v1/tenants/acme/rules/{rule_id}", headers=headers, json=body)
            assert response.status_code == 200, response.text
    # The service restarts with other defaults, but the stored rules keep those of their PUT.
    changed = RuleDefaults.model_validate({"cooldown": "20m", "severity": "critical"})
    catalog = RuleCatalog(store, rule_defaults=changed)

    specs = await catalog.load()

    own, plain = specs[("acme", "default")].rules
    assert plain.cooldown_s == 600
    assert plain.severity == "warning"
    assert plain.labels == {"team": "platform", "env": "prod"}
    assert own.cooldown_s == 60
    assert own.severity == "warning"
    assert own.labels == {"team": "platform", "env": "staging"}
    assert catalog.problems == {}


async def test_catalog_file_rules_get_defaults(store: PostgresStore, tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(
        "- id: plain\n  threshold: 3\n"
        "- id: own\n  threshold: 3\n  cooldown: 1m\n  labels: {env: staging}\n"
    )
    files = [RuleFile(tenant="acme", path=path)]
    await store.ensure_tenant("acme", stateful_rules=True)
    catalog = RuleCatalog(store, files, PUT_DEFAULTS)

    assert await catalog.sync_files()
    specs = await catalog.load()
    stored = {row[0]: row for row in await store.rule_definitions("acme")}

    own, plain = specs[("acme", "default")].rules
    assert plain.cooldown_s == 600
    assert plain.severity == "warning"
    assert plain.labels == {"team": "platform", "env": "prod"}
    assert own.cooldown_s == 60
    assert own.labels == {"team": "platform", "env": "staging"}
    assert stored["plain"][2]["cooldown"] == 600
    assert stored["plain"][2]["severity"] == "warning"
    assert stored["plain"][5] == "file"

    # A restart with other defaults loads the files again, and their rules take the new ones.
    changed = RuleDefaults.model_validate({"cooldown": "20m"})
    restarted = RuleCatalog(store, files, changed)
    assert await restarted.sync_files()
    specs = await restarted.load()
    stored = {row[0]: row for row in await store.rule_definitions("acme")}

    own, plain = specs[("acme", "default")].rules
    assert plain.cooldown_s == 1200
    assert plain.severity is None
    assert plain.labels == {}
    assert own.cooldown_s == 60
    assert stored["plain"][4] == 2
    assert stored["own"][4] == 2
