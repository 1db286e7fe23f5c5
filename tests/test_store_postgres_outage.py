"""PostgresStore across a server outage, staged with a TCP proxy that refuses and resets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from alertwarden.errors import StoreError
from alertwarden.store.postgres import (
    CONNECTION_DEFAULTS,
    PostgresStore,
    _RepeatFilter,
    connection_defaults,
)
from tcp_proxy import CuttableProxy


@pytest.fixture
async def proxy(pg_store_url: str) -> AsyncIterator[CuttableProxy]:
    params = conninfo_to_dict(pg_store_url)
    tcp_proxy = CuttableProxy(str(params["host"]), int(params["port"]))
    await tcp_proxy.restore()
    yield tcp_proxy
    await tcp_proxy.close()


def proxied_url(pg_store_url: str, proxy: CuttableProxy) -> str:
    return make_conninfo(pg_store_url, port=str(proxy.port))


async def wait_for_idle_connection(store: PostgresStore, timeout_s: float) -> bool:
    """Return True once the pool contains an idle connection, without requesting one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if store._pool is not None and store._pool.get_stats()["pool_available"] > 0:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_pool_reconnects_after_giving_up(pg_store_url: str, proxy: CuttableProxy) -> None:
    store = PostgresStore(proxied_url(pg_store_url, proxy), reconnect_cycle_s=1.0)
    await store.open()
    try:
        await proxy.cut()
        # The failed ping makes the pool replace its connection. Attempts fail until the series
        # of one cycle gives up, after about 1 s.
        with pytest.raises(StoreError):
            await store.ping(timeout_s=0.5)
        await asyncio.sleep(3.0)
        await proxy.restore()

        # No client asks for a connection here: psycopg_pool alone would wait for one.
        reconnected = await wait_for_idle_connection(store, timeout_s=20.0)

        assert reconnected
        await store.ping()
    finally:
        await store.close()


async def test_dead_idle_connection_replaced(pg_store_url: str, proxy: CuttableProxy) -> None:
    store = PostgresStore(proxied_url(pg_store_url, proxy), pool_max=1)
    await store.open()
    try:
        await store.ping()
        # The server side of the idle connection goes away and the server comes back before
        # the next statement, as in a quick restart.
        await proxy.cut()
        await proxy.restore()

        await store.ping()
        tenants = await store.tenant_ids()

        assert isinstance(tenants, set)
    finally:
        await store.close()


async def test_ping_on_silent_server_returns_at_timeout(
    pg_store_url: str, proxy: CuttableProxy
) -> None:
    store = PostgresStore(proxied_url(pg_store_url, proxy), pool_max=1)
    await store.open()
    try:
        await store.ping()
        proxy.silent = True

        with pytest.raises(StoreError, match=r"did not respond within 0\.5 s"):
            await store.ping(timeout_s=0.5)

        # psycopg is still trying to cancel the statement on the silent server; the ping did
        # not wait for it.
        assert len(store._cancelled_pings) == 1
        proxy.silent = False
        await proxy.cut()
    finally:
        await store.close()


def test_connection_defaults_url_wins() -> None:
    url = "postgresql://postgres@127.0.0.1:5432/db?keepalives_idle=7&connect_timeout=3"

    defaults = connection_defaults(url)

    assert "keepalives_idle" not in defaults
    assert "connect_timeout" not in defaults
    assert defaults["keepalives"] == "1"
    assert defaults["tcp_user_timeout"] == CONNECTION_DEFAULTS["tcp_user_timeout"]


async def test_pool_connection_has_tcp_timeouts(pg_store_url: str) -> None:
    store = PostgresStore(pg_store_url)
    await store.open()
    try:
        assert store._pool is not None
        async with store._pool.connection() as conn:
            parameters = conn.info.get_parameters()
    finally:
        await store.close()

    for name, value in CONNECTION_DEFAULTS.items():
        assert parameters[name] == value, name


def test_repeat_filter_one_per_interval() -> None:
    repeat_filter = _RepeatFilter(interval_s=60.0)

    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("psycopg.pool", level, __file__, 1, message, None, None)

    assert repeat_filter.filter(record(logging.WARNING, "error connecting in %r: %s"))
    assert not repeat_filter.filter(record(logging.WARNING, "error connecting in %r: %s"))
    assert repeat_filter.filter(record(logging.WARNING, "discarding closed connection: %s"))
    assert repeat_filter.filter(record(logging.ERROR, "error connecting in %r: %s"))
