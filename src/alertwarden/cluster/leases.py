"""Leases that give each tenant + rule group to one node: PostgreSQL session advisory locks.

A node holds its leases on one dedicated connection. PostgreSQL releases a session's advisory
locks when the session ends, so a node that dies (kill -9, a lost network, a PostgreSQL
restart) frees its rule groups for the other nodes without any expiry to wait for.

A node that loses the connection has lost its leases, but its evaluators may not know it yet.
Every flush therefore checks, in its own transaction, that the lease session still holds the
lock (see `Fence`), so a node that lost a lease never moves the rule group's checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from psycopg import sql

from alertwarden.errors import StoreError
from alertwarden.logs import get_logger

log = get_logger(__name__)

LEASE_CONNECT_TIMEOUT_S = 5
LEASE_CHECK_TIMEOUT_S = 5.0
# Server-side TCP keepalive of the lease session: PostgreSQL ends the session of a node it can no
# longer reach after about 10 + 3 * 5 = 25 s, which frees that node's leases. Without it the
# operating system's default (often 2 hours) applies. Ignored on Unix-domain sockets.
SERVER_KEEPALIVE = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}

GroupId = tuple[str, str]

NODE_LOCK_CLASS = 0x4157_4E44
"""First key of every node's presence lock, `pg_advisory_lock(NODE_LOCK_CLASS, backend pid)`.

pg_locks lists a lock of two integer keys with objsubid 2 and a bigint lease with objsubid 1,
so the presence locks can be counted apart from the leases."""

NODE_LOADS = """WITH locks AS (
    SELECT pid, classid, objsubid FROM pg_locks
    WHERE locktype = 'advisory' AND granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
)
SELECT node.pid, count(lease.pid) FROM locks AS node
LEFT JOIN locks AS lease ON lease.pid = node.pid AND lease.objsubid = 1
WHERE node.objsubid = 2 AND node.classid::bigint = %s
GROUP BY node.pid"""


@dataclass(frozen=True, slots=True)
class Share:
    """How many rule groups a node keeps and takes, from the loads of every live node."""

    keep: int
    """Rule groups the node runs at most; it hands any above this over."""
    take: int
    """Rule groups the node takes leases up to."""


def fair_share(rule_groups: int, loads: Mapping[int, int], node: int) -> Share:
    """Return the share of `node` in `rule_groups`, given the lease count of every live node.

    `loads` maps each live node, `node` included, to the rule groups it runs. Each node should
    run between the mean rounded down (`low`) and rounded up (`high`). While some node runs
    fewer than `low`, no other node takes any, and the most loaded nodes (ties by node key) hand
    over just enough for the starved nodes to reach `low`, beyond the rule groups no node runs.
    Otherwise every node keeps and takes up to `high`. So the nodes end within one rule group of
    each other, every rule group has a node, and a joining node moves few rule groups.
    """
    count = max(len(loads), 1)
    low = rule_groups // count
    high = -(-rule_groups // count)
    mine = loads.get(node, 0)
    deficit = sum(low - load for load in loads.values() if load < low)
    if deficit == 0:
        return Share(keep=high, take=high)
    if mine < low:
        return Share(keep=low, take=low)
    deficit -= max(0, rule_groups - sum(loads.values()))
    keep = mine
    for donor, load in sorted(loads.items(), key=lambda item: (-item[1], item[0])):
        if deficit <= 0:
            break
        handed_over = min(load - low, deficit)
        if handed_over <= 0:
            break
        deficit -= handed_over
        if donor == node:
            keep = load - handed_over
    return Share(keep=keep, take=min(keep, low))


class LeaseLostError(StoreError):
    """A write rejected because this node no longer holds the rule group's lease."""


def lease_key(tenant: str, rule_group: str) -> int:
    """Return the advisory lock key of a tenant + rule group: a signed 64-bit hash.

    Two groups with the same key (odds about 2**-64 per pair) are only held together by one node.
    """
    digest = hashlib.blake2b(f"alertwarden\0{tenant}\0{rule_group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease of one rule group: the key, the server process of the session holding it, and
    the epoch of rule_group_leases that taking it set."""

    key: int
    backend_pid: int
    tenant: str = ""
    rule_group: str = ""
    epoch: int = 0

    @property
    def lock_ids(self) -> tuple[int, int]:
        """Return (classid, objid) under which pg_locks lists the lock of a bigint key."""
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        return unsigned >> 32, unsigned & 0xFFFF_FFFF


# pg_locks shows a bigint advisory lock as classid = high 32 bits, objid = low 32 bits and
# objsubid = 1. The database is compared too, because advisory locks are per database.
FENCE_HELD = """(EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND pid = %(fence_pid)s
      AND classid::bigint = %(fence_classid)s AND objid::bigint = %(fence_objid)s AND objsubid = 1
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
) AND EXISTS (
    SELECT 1 FROM rule_group_leases
    WHERE tenant_id = %(fence_tenant)s AND rule_group = %(fence_rule_group)s
      AND epoch = %(fence_epoch)s
    FOR SHARE
))"""
"""SQL condition, true while the fence's session holds its lock and no node took the lease since.

The second part locks the lease row until the transaction ends. A node that takes the lease
meanwhile updates that row to a new epoch, so it waits for this transaction to commit before
it loads the state, or this check waits for it and then finds the epoch moved on. Either way
no write of an earlier holder lands after the new holder loaded the state. Parameters come
from fence_params()."""

BUMP_EPOCH = """INSERT INTO rule_group_leases (tenant_id, rule_group, epoch) VALUES (%s, %s, 1)
ON CONFLICT (tenant_id, rule_group) DO UPDATE
SET epoch = rule_group_leases.epoch + 1, acquired_at = now()
RETURNING epoch"""


def fence_params(fence: Fence | None) -> dict[str, int | str | None]:
    """Return the parameters of FENCE_HELD; all None without a fence."""
    if fence is None:
        return {
            "fence_pid": None,
            "fence_classid": None,
            "fence_objid": None,
            "fence_tenant": None,
            "fence_rule_group": None,
            "fence_epoch": None,
        }
    classid, objid = fence.lock_ids
    return {
        "fence_pid": fence.backend_pid,
        "fence_classid": classid,
        "fence_objid": objid,
        "fence_tenant": fence.tenant,
        "fence_rule_group": fence.rule_group,
        "fence_epoch": fence.epoch,
    }


class LeaseHolder:
    """The leases of this node, held as session advisory locks on one connection."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.AsyncConnection | None = None
        self.held: dict[GroupId, Fence] = {}

    @property
    def node_key(self) -> int | None:
        """This node's key in node_loads(): its lease session's server process, or None."""
        if self._conn is None or self._conn.closed:
            return None
        return self._conn.info.backend_pid

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def open(self) -> None:
        """Connect the lease session; raises StoreError when PostgreSQL cannot be reached."""
        await self.close()
        try:
            self._conn = await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=LEASE_CONNECT_TIMEOUT_S
            )
            for name, value in SERVER_KEEPALIVE.items():
                await self._conn.execute(
                    sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
                )
            # Ends with the session, like the leases, so the other nodes count this one only
            # while it can hold leases.
            await self._conn.execute(
                "SELECT pg_advisory_lock(%s, %s)", (NODE_LOCK_CLASS, self._conn.info.backend_pid)
            )
        except psycopg.Error as error:
            await self.close()
            raise StoreError(f"PostgreSQL lease connection failed: {type(error).__name__}: {error}") from None
        log.info("lease_session_opened", backend_pid=self._conn.info.backend_pid)

    async def try_acquire(self, group: GroupId) -> Fence | None:
        """Take the lease of `group` unless another node holds it; return it, or None."""
        held = self.held.get(group)
        if held is not None:
            return held
        if not self.connected:
            # The session was lost earlier in this round; the next alive() opens a new one.
            return None
        conn = self._require()
        key = lease_key(*group)
        try:
            cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))
            row = await cursor.fetchone()
        except psycopg.Error as error:
            await self._lost(error)
            return None
        if row is None or not row[0]:
            return None
        try:
            # Waits for a write of the previous holder that is still in flight (see FENCE_HELD).
            cursor = await conn.execute(BUMP_EPOCH, group)
            epoch_row = await cursor.fetchone()
        except psycopg.Error as error:
            await self._lost(error)
            return None
        assert epoch_row is not None
        fence = Fence(key, conn.info.backend_pid, group[0], group[1], int(epoch_row[0]))
        self.held[group] = fence
        return fence

    def forget(self, group: GroupId) -> None:
        """Drop a lease that a flush found lost, without unlocking: this session may not hold it."""
        self.held.pop(group, None)

    async def release(self, group: GroupId) -> None:
        """Give up the lease of `group`, so another node may take it."""
        fence = self.held.pop(group, None)
        if fence is None or not self.connected:
            return
        assert self._conn is not None
        try:
            await self._conn.execute("SELECT pg_advisory_unlock(%s)", (fence.key,))
        except psycopg.Error as error:
            await self._lost(error)

    async def alive(self) -> bool:
        """Return True while the lease session works; on failure all leases count as lost."""
        if not self.connected:
            self.held.clear()
            return False
        assert self._conn is not None
        try:
            # A server that no longer responds (a network cut) would otherwise block this call
            # until TCP gives up, and with it every rule change of this node.
            async with asyncio.timeout(LEASE_CHECK_TIMEOUT_S):
                await self._conn.execute("SELECT 1")
        except (psycopg.Error, TimeoutError) as error:
            await self._lost(error)
            return False
        return True

    async def node_loads(self) -> dict[int, int] | None:
        """Return the live nodes on this database, this one included, with their lease counts.

        Nodes are keyed by the server process of their lease session. Returns None when the
        lease session is lost.
        """
        if not self.connected:
            return None
        assert self._conn is not None
        try:
            async with asyncio.timeout(LEASE_CHECK_TIMEOUT_S):
                cursor = await self._conn.execute(NODE_LOADS, (NODE_LOCK_CLASS,))
                rows = await cursor.fetchall()
        except (psycopg.Error, TimeoutError) as error:
            await self._lost(error)
            return None
        return {int(pid): int(count) for pid, count in rows}

    async def close(self) -> None:
        """End the lease session, which releases every lease of this node."""
        conn, self._conn = self._conn, None
        self.held.clear()
        if conn is not None and not conn.closed:
            await conn.close()

    def _require(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            raise StoreError("the lease connection is closed: call open() first")
        return self._conn

    async def _lost(self, error: Exception) -> None:
        log.error("lease_session_lost", error=f"{type(error).__name__}: {error}", leases=len(self.held))
        self.held.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
