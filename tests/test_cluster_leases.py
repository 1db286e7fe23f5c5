"""Leases on the real PostgreSQL: one holder per rule group, release on session end, fenced flush."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest

from alertwarden.cluster.leases import (
    BUMP_EPOCH,
    FENCE_HELD,
    Fence,
    LeaseHolder,
    LeaseLostError,
    Share,
    fair_share,
    fence_params,
    lease_key,
)
from alertwarden.engine.records import Checkpoint, FlushBatch
from alertwarden.store.migrate import migrate
from alertwarden.store.postgres import PostgresStore
from test_store_postgres import transition


Holders = tuple[LeaseHolder, LeaseHolder]


@pytest.fixture
async def store(pg_store_url: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(pg_store_url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def holder(pg_store_url: str) -> AsyncIterator[LeaseHolder]:
    opened = LeaseHolder(pg_store_url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def holders(pg_store_url: str) -> AsyncIterator[Holders]:
    """Two nodes' lease sessions on one database."""
    first, second = LeaseHolder(pg_store_url), LeaseHolder(pg_store_url)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


def group() -> tuple[str, str]:
    return f"t{uuid.uuid4().hex[:10]}", "default"


def checkpoint(offset: int) -> Checkpoint:
    return Checkpoint(source="test", offset=offset, position=2 * offset, now=None, ticked={})


def terminate(url: str, backend_pid: int) -> None:
    """End a server process and wait until it is gone, which is when its locks are released."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
        deadline = time.monotonic() + 10
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend_pid,)).fetchone():
            assert time.monotonic() < deadline, f"server process {backend_pid} did not end"
            time.sleep(0.01)


def test_lease_key_is_stable_and_signed() -> None:
    assert lease_key("acme", "default") == lease_key("acme", "default")
    assert lease_key("acme", "default") != lease_key("acme", "other")
    assert lease_key("acme", "a.b") != lease_key("acme.a", "b")
    assert -(2**63) <= lease_key("acme", "default") < 2**63


def test_fence_lock_ids_split_the_key() -> None:
    fence = Fence(key=-1, backend_pid=1)
    assert fence.lock_ids == (0xFFFF_FFFF, 0xFFFF_FFFF)
    assert Fence(key=(5 << 32) | 7, backend_pid=1).lock_ids == (5, 7)


@pytest.mark.parametrize(
    ("rule_groups", "loads", "node", "keep", "take"),
    [
        # One node alone runs everything.
        (10, {1: 10}, 1, 10, 10),
        (10, {1: 0}, 1, 10, 10),
        # A second node starts: the first hands half over, and the new one takes half.
        (4, {1: 4, 2: 0}, 1, 2, 2),
        (4, {1: 4, 2: 0}, 2, 2, 2),
        (4, {1: 2, 2: 2}, 2, 2, 2),
        # Balanced within one: every node may run the mean rounded up.
        (4, {1: 2, 2: 1, 3: 1}, 1, 2, 2),
        (10, {1: 4, 2: 3, 3: 3}, 3, 4, 4),
        # A third node next to 2 + 2: only the first of the two hands one over.
        (4, {1: 2, 2: 2, 3: 0}, 1, 1, 1),
        (4, {1: 2, 2: 2, 3: 0}, 2, 2, 1),
        # A rule group that no node runs fills the deficit before any hand-over.
        (5, {1: 2, 2: 2, 3: 0}, 1, 2, 1),
        # Fewer rule groups than nodes: no node can be starved.
        (1, {1: 1, 2: 0, 3: 0}, 2, 1, 1),
        (0, {1: 0, 2: 0}, 1, 0, 0),
    ],
)
def test_fair_share(rule_groups: int, loads: dict[int, int], node: int, keep: int, take: int) -> None:
    assert fair_share(rule_groups, loads, node) == Share(keep=keep, take=take)


def test_fair_share_converges_with_few_moves() -> None:
    """Simulate polls of nodes that hand over and take by fair_share, until nothing changes."""
    cases = [
        (4, [4, 0, 0], 2),
        (4, [2, 2, 0], 1),
        (6, [2, 2, 2, 0], 1),
        (7, [7, 0, 0, 0], 5),
        (10, [0, 9, 1], 5),
    ]
    for rule_groups, start, max_moves in cases:
        loads = dict(enumerate(start))
        moves = 0
        for _ in range(20):
            before = dict(loads)
            for node in loads:
                share = fair_share(rule_groups, loads, node)
                if loads[node] > share.keep:
                    moves += loads[node] - share.keep
                    loads[node] = share.keep
                free = rule_groups - sum(loads.values())
                loads[node] += max(0, min(free, share.take - loads[node]))
            if loads == before:
                break
        assert sum(loads.values()) == rule_groups, (start, loads)
        assert max(loads.values()) - min(loads.values()) <= 1, (start, loads)
        assert moves <= max_moves, (start, moves)


async def test_node_loads_counts_leases_per_session(pg_database_factory: Callable[[], str]) -> None:
    url = pg_database_factory()
    await migrate(url, history_backend="partitioned")
    first, second = LeaseHolder(url), LeaseHolder(url)
    await first.open()
    try:
        assert list((await first.node_loads() or {}).values()) == [0]
        await second.open()
        for _ in range(2):
            assert await first.try_acquire(group()) is not None
        assert await second.try_acquire(group()) is not None
        # Both sessions see the same map, keyed by each session's server process.
        loads = await first.node_loads()
        assert loads is not None
        assert sorted(loads.values()) == [1, 2]
        assert await second.node_loads() == loads

        await second.close()
        deadline = time.monotonic() + 10
        while len(await first.node_loads() or {}) != 1:
            assert time.monotonic() < deadline, "the closed session still counts as a node"
            await asyncio.sleep(0.01)
    finally:
        await first.close()
        await second.close()
    assert await first.node_loads() is None


async def test_lease_one_holder(holders: Holders) -> None:
    first, second = holders
    target = group()
    fence = await first.try_acquire(target)
    assert fence is not None
    assert await first.try_acquire(target) == fence
    assert await second.try_acquire(target) is None

    await first.release(target)
    assert await second.try_acquire(target) is not None
    assert await first.try_acquire(target) is None


async def test_lease_freed_when_session_ends(pg_store_url: str, holders: Holders) -> None:
    first, second = holders
    target = group()
    fence = await first.try_acquire(target)
    assert fence is not None
    # What a node's death or a network cut looks like to PostgreSQL.
    terminate(pg_store_url, fence.backend_pid)

    assert await second.try_acquire(target) is not None
    assert not await first.alive()
    assert first.held == {}


async def test_flush_fenced_by_lease(pg_store_url: str, store: PostgresStore, holders: Holders) -> None:
    first, second = holders
    tenant, rule_group = group()
    old = await first.try_acquire((tenant, rule_group))
    assert old is not None
    await store.flush(tenant, rule_group, FlushBatch([], [], checkpoint(10)), fence=old)

    terminate(pg_store_url, old.backend_pid)
    new = await second.try_acquire((tenant, rule_group))
    assert new is not None

    # The node that lost the lease cannot move the checkpoint; the new holder can.
    with pytest.raises(LeaseLostError, match="nothing was written"):
        await store.flush(tenant, rule_group, FlushBatch([], [], checkpoint(20)), fence=old)
    stored = await store.load(tenant, rule_group)
    assert stored.checkpoint is not None
    assert stored.checkpoint.offset == 10

    await store.flush(tenant, rule_group, FlushBatch([], [], checkpoint(30)), fence=new)
    stored = await store.load(tenant, rule_group)
    assert stored.checkpoint is not None
    assert stored.checkpoint.offset == 30


async def test_transitions_fenced_by_lease(pg_store_url: str, store: PostgresStore, holders: Holders) -> None:
    first, second = holders
    tenant, rule_group = group()
    old = await first.try_acquire((tenant, rule_group))
    assert old is not None
    ids = await store.record_transitions(tenant, rule_group, [transition(at=1_700_000_000.0)], fence=old)
    assert len(ids) == 1

    terminate(pg_store_url, old.backend_pid)
    new = await second.try_acquire((tenant, rule_group))
    assert new is not None

    late = transition(at=1_700_000_060.0, position=9)
    with pytest.raises(LeaseLostError, match="nothing was written"):
        await store.record_transitions(tenant, rule_group, [late], fence=old)
    assert [record.id for record in await store.history(tenant)] == ids
    assert (await store.load(tenant, rule_group)).groups["r1"][0].position == 7

    # The holder writes; a store used without leases is not fenced at all.
    assert len(await store.record_transitions(tenant, rule_group, [late], fence=new)) == 1
    unfenced = transition(at=1_700_000_120.0, position=11)
    assert len(await store.record_transitions(tenant, rule_group, [unfenced])) == 1
    assert len(await store.history(tenant)) == 3


def bump_epoch(url: str, tenant: str, rule_group: str) -> None:
    """Take the lease row over as another node's acquisition does, without its advisory lock."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(BUMP_EPOCH, (tenant, rule_group))


async def test_writes_fenced_by_epoch(pg_store_url: str, store: PostgresStore, holder: LeaseHolder) -> None:
    tenant, rule_group = group()
    fence = await holder.try_acquire((tenant, rule_group))
    assert fence is not None
    assert fence.epoch == 1
    await store.flush(tenant, rule_group, FlushBatch([], [], checkpoint(10)), fence=fence)

    # The session still holds its advisory lock, but the epoch in the row belongs to another node.
    bump_epoch(pg_store_url, tenant, rule_group)
    with pytest.raises(LeaseLostError):
        await store.flush(tenant, rule_group, FlushBatch([], [], checkpoint(20)), fence=fence)
    with pytest.raises(LeaseLostError):
        await store.record_transitions(tenant, rule_group, [transition(at=1_700_000_000.0)], fence=fence)
    stored = await store.load(tenant, rule_group)
    assert stored.checkpoint is not None
    assert stored.checkpoint.offset == 10
    assert await store.history(tenant) == []


async def test_takeover_waits_for_write_in_flight(pg_store_url: str, holders: Holders) -> None:
    first, second = holders
    target = group()
    old = await first.try_acquire(target)
    assert old is not None
    async with await psycopg.AsyncConnection.connect(pg_store_url) as writer:
        # A flush of the old holder that passed its fence check and has not committed yet.
        cursor = await writer.execute("SELECT " + FENCE_HELD, fence_params(old))
        assert await cursor.fetchone() == (True,)
        await first.release(target)

        takeover = asyncio.create_task(second.try_acquire(target))
        deadline = time.monotonic() + 10
        while not await lock_waits(pg_store_url):
            assert time.monotonic() < deadline, "the takeover did not wait for the write"
            await asyncio.sleep(0.01)
        assert not takeover.done()

        await writer.commit()
    new = await asyncio.wait_for(takeover, 10)
    assert new is not None
    assert new.epoch == old.epoch + 1


async def lock_waits(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE 'INSERT INTO rule_group_leases%%'"
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0


async def test_acquire_after_lost_session_returns_none(pg_store_url: str) -> None:
    holder = LeaseHolder(pg_store_url)
    await holder.open()
    try:
        assert await holder.try_acquire(group()) is not None
        backend_pid = next(iter(holder.held.values())).backend_pid
        terminate(pg_store_url, backend_pid)
        # The first call finds the session gone; later calls in the same round must not raise.
        assert await holder.try_acquire(group()) is None
        assert await holder.try_acquire(group()) is None
        assert not holder.connected

        await holder.open()
        assert await holder.try_acquire(group()) is not None
    finally:
        await holder.close()
