"""The service's rule catalog against the real PostgreSQL: what it compiles and what it leaves out."""

from __future__ import annotations

from collections.abc import Callable

from alertwarden.service.catalog import RuleCatalog
from alertwarden.store.postgres import PostgresStore
from alertwarden.store.migrate import migrate

RULE = {"match": {"field": "kind", "equals": "login_failed"}, "threshold": 3, "window": "1m"}


async def test_catalog_skips_invalid_tenant_ids(
    pg_database_factory: Callable[[], str],
) -> None:
    url = pg_database_factory()
    await migrate(url, history_backend="partitioned")
    store = PostgresStore(url)
    await store.open()
    try:
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
    finally:
        await store.close()
